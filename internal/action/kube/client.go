package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersnetv1 "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/quell-ir/quell/internal/action"
)

// Options are the injected dependencies of a Client.
type Options struct {
	Logger         *slog.Logger
	Registerer     prometheus.Registerer // nil: metrics are not registered
	TracerProvider trace.TracerProvider  // nil: no spans
}

// Client is the shared Kubernetes connection of all kube actions.
type Client struct {
	cfg       Config
	protected []labels.Selector
	minHealth minHealthy
	cs        kubernetes.Interface
	dyn       dynamic.Interface
	log       *slog.Logger
	tracer    trace.Tracer
	m         *metrics
	throttled atomic.Int64 // 429 answers seen (client-go retries them itself first)

	mu       sync.Mutex
	started  bool
	pods     listerscorev1.PodLister
	netpols  listersnetv1.NetworkPolicyLister
	synced   []cache.InformerSynced
	ensureSF singleflight.Group
}

type metrics struct {
	requests  *prometheus.CounterVec
	throttled prometheus.Counter
	duration  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_kube_requests_total",
			Help: "Kubernetes API requests by method and status code class.",
		}, []string{"method", "code"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quell_kube_throttled_total",
			Help: "Kubernetes API answers 429 Too Many Requests.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "quell_kube_action_duration_seconds",
			Help:    "Duration of kube action phases by action, phase and outcome.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"action", "phase", "outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.throttled, m.duration)
	}
	return m
}

// RESTConfig builds the client configuration: kubeconfig when given, else
// in-cluster, else the default kubeconfig loading rules.
func RESTConfig(cfg Config) (*rest.Config, error) {
	if cfg.Kubeconfig == "" {
		if rc, err := rest.InClusterConfig(); err == nil {
			return rc, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if cfg.Kubeconfig != "" {
		rules.ExplicitPath = cfg.Kubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: cfg.Context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return rc, nil
}

// New connects with the configured kubeconfig or in-cluster identity.
func New(cfg Config, opts Options) (*Client, error) {
	rc, err := RESTConfig(cfg)
	if err != nil {
		return nil, err
	}
	return NewForConfig(rc, cfg, opts)
}

// NewForConfig builds a Client on an explicit REST config; cfg's QPS, Burst
// and Timeout override the REST config's.
func NewForConfig(rc *rest.Config, cfg Config, opts Options) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: opts.Logger, m: newMetrics(opts.Registerer)}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	tp := opts.TracerProvider
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	c.tracer = tp.Tracer("github.com/quell-ir/quell/internal/action/kube")
	for _, s := range cfg.ProtectedLabels {
		sel, _ := labels.Parse(s) // validated above
		c.protected = append(c.protected, sel)
	}
	c.minHealth, _ = parseMinHealthy(cfg.MinHealthyReplicas)

	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst, rc.Timeout = cfg.QPS, cfg.Burst, cfg.Timeout
	rc.RateLimiter = nil
	rc.UserAgent = "quell"
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &countingRT{next: rt, c: c} })
	var err error
	if c.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("kubernetes clientset: %w", err)
	}
	if c.dyn, err = dynamic.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return c, nil
}

// countingRT counts answers by code and 429s, which client-go retries by
// itself (honouring Retry-After) before an action sees them.
type countingRT struct {
	next http.RoundTripper
	c    *Client
}

func (r *countingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode/100) + "xx"
		if resp.StatusCode == http.StatusTooManyRequests {
			r.c.throttled.Add(1)
			r.c.m.throttled.Inc()
		}
	}
	r.c.m.requests.WithLabelValues(req.Method, code).Inc()
	return resp, err
}

// Throttled returns how many 429 answers this client has seen.
func (c *Client) Throttled() int64 { return c.throttled.Load() }

// Clientset exposes the typed client (the asset index shares it).
func (c *Client) Clientset() kubernetes.Interface { return c.cs }

// Start starts the watch caches (when Config.Informers) and waits for them
// to sync. Actions work without it, reading from the API server.
func (c *Client) Start(ctx context.Context) error {
	if !c.cfg.Informers {
		return nil
	}
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return nil
	}
	f := informers.NewSharedInformerFactory(c.cs, 0)
	pods := f.Core().V1().Pods()
	np := f.Networking().V1().NetworkPolicies()
	c.synced = []cache.InformerSynced{pods.Informer().HasSynced, np.Informer().HasSynced}
	f.Start(ctx.Done())
	c.mu.Unlock()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("kubernetes watch caches did not sync")
	}
	c.mu.Lock()
	c.pods, c.netpols, c.started = pods.Lister(), np.Lister(), true
	c.mu.Unlock()
	return nil
}

func (c *Client) listers() (listerscorev1.PodLister, listersnetv1.NetworkPolicyLister) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pods, c.netpols
}

// getPod reads a pod from the watch cache, or from the API server when the
// cache has none (not started, or not yet caught up).
func (c *Client) getPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if pl, _ := c.listers(); pl != nil {
		if p, err := pl.Pods(ns).Get(name); err == nil {
			return p, nil
		}
	}
	p, err := c.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, classify("get pod "+ns+"/"+name, err)
	}
	return p, nil
}

func (c *Client) listPods(ctx context.Context, ns string, sel labels.Selector) ([]*corev1.Pod, error) {
	if pl, _ := c.listers(); pl != nil {
		return pl.Pods(ns).List(sel)
	}
	l, err := c.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, classify("list pods in "+ns, err)
	}
	out := make([]*corev1.Pod, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

func (c *Client) listNetworkPolicies(ctx context.Context, ns string) ([]*networkingv1.NetworkPolicy, error) {
	if _, nl := c.listers(); nl != nil {
		return nl.NetworkPolicies(ns).List(labels.Everything())
	}
	l, err := c.cs.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, classify("list networkpolicies in "+ns, err)
	}
	out := make([]*networkingv1.NetworkPolicy, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

// phase runs one action phase in a span and records its duration.
func (c *Client) phase(ctx context.Context, act, phase string, key string, fn func(context.Context) error) error {
	ctx, span := c.tracer.Start(ctx, act+"."+phase, trace.WithAttributes(
		attribute.String("quell.action", act), attribute.String("quell.key", key)))
	defer span.End()
	start := time.Now()
	err := fn(ctx)
	outcome := "ok"
	if err != nil {
		outcome = "error"
		if _, ok := action.IsDenied(err); ok {
			outcome = "denied"
		} else if _, ok := action.IsRetryable(err); ok {
			outcome = "retryable"
		}
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		c.log.LogAttrs(ctx, slog.LevelWarn, "kube action phase failed", slog.String("action", act),
			slog.String("phase", phase), slog.String("key", key), slog.String("error", err.Error()))
	}
	c.m.duration.WithLabelValues(act, phase, outcome).Observe(time.Since(start).Seconds())
	return err
}

// classify wraps an API error with what was being done and marks the
// transient ones (throttling, 5xx, timeouts, optimistic-concurrency
// conflicts) retryable with the delay the server asked for.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	wrapped := fmt.Errorf("%s: %w", op, err)
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s: forbidden: quell's Kubernetes identity lacks this permission "+
			"(see deploy/kubernetes/rbac.yaml): %w", op, err)
	case apierrors.IsTooManyRequests(err), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err),
		apierrors.IsUnexpectedServerError(err), apierrors.IsConflict(err):
		d, _ := apierrors.SuggestsClientDelay(err)
		return action.Retryable(wrapped, time.Duration(d)*time.Second)
	case errors.Is(err, context.DeadlineExceeded):
		return action.Retryable(wrapped, 0)
	}
	var se apierrors.APIStatus
	if errors.As(err, &se) && se.Status().Code >= 500 {
		return action.Retryable(wrapped, 0)
	}
	if !errors.As(err, &se) && !errors.Is(err, context.Canceled) {
		// Transport errors (connection refused/reset) are worth a retry.
		return action.Retryable(wrapped, 0)
	}
	return wrapped
}
