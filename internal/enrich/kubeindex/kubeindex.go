// Package kubeindex is the live Kubernetes asset index: pods, services and
// nodes by IP address and by name, kept current by shared informers, so an
// event that names only an address learns its namespace, workload, labels,
// node and service account.
//
// It implements asset.Source. Lookups are in memory: one informer index
// read (an address → objects map maintained by cache.Indexers) and, for a
// pod owned by a ReplicaSet, one lister read; never a scan of every object.
//
// When several objects hold an address, the answer is, in order:
//  1. a pod that is not host-network and not finished (newest first);
//  2. a service (cluster IP or load-balancer ingress IP);
//  3. a node (InternalIP or ExternalIP);
//  4. a host-network pod (its IP is its node's; only when the node is unknown);
//  5. a finished pod (Succeeded or Failed: its IP may already be reused).
//
// A host-network pod shares its node's address with every other
// host-network pod on that node, so an address never names one of them
// while the node is known: the node is the honest answer.
package kubeindex

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersappsv1 "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/quell-ir/quell/internal/enrich/asset"
)

// Kind is the kind of an indexed object.
type Kind string

// Indexed kinds.
const (
	KindPod     Kind = "Pod"
	KindService Kind = "Service"
	KindNode    Kind = "Node"
)

// ipIndex is the name of the informer index from address to objects.
const ipIndex = "ip"

// Options configure an Index.
type Options struct {
	Logger     *slog.Logger          // default: discard
	Registerer prometheus.Registerer // nil: metrics are not registered
	// SyncTimeout bounds how long Start waits for the caches (default 30s).
	SyncTimeout time.Duration
	// Resync is the informers' resync period (default 0: none; the watch
	// keeps the caches current).
	Resync time.Duration
	// ReplicaSets watches ReplicaSets to resolve a pod's Deployment (or
	// other owner, e.g. an Argo Rollout) exactly. It needs list and watch
	// on apps/replicasets. Without it, a ReplicaSet named
	// <deployment>-<pod-template-hash> is taken to belong to Deployment
	// <deployment> (the Deployment controller's naming convention).
	ReplicaSets bool
	// OwnerLabel, EnvironmentLabel and CriticalityLabel name the object
	// labels copied into asset.Info's Owner, Environment and Criticality
	// (defaults quell.io/owner, quell.io/environment, quell.io/criticality).
	OwnerLabel       string
	EnvironmentLabel string
	CriticalityLabel string
}

// Entry is what the index knows about one object.
type Entry struct {
	Kind      Kind
	Namespace string // empty for nodes
	Name      string
	UID       string
	// WorkloadKind and Workload are the pod's owning workload: Deployment
	// (through its ReplicaSet), StatefulSet, DaemonSet, Job, ReplicaSet,
	// or whatever kind controls it. Empty for a bare pod and for services
	// and nodes.
	WorkloadKind   string
	Workload       string
	Labels         map[string]string // the object's labels; do not modify
	Node           string            // the pod's node; the node's own name for a node
	ServiceAccount string
	HostNetwork    bool
	Phase          string // pods only
	IPs            []netip.Addr
}

// info converts the entry to an asset.Info. Labels holds namespace, kind,
// name, workload, workload_kind, node, service_account, host_network
// (when true), and every object label as "label:<key>".
func (e Entry) info(o *Options) asset.Info {
	m := make(map[string]string, 8+len(e.Labels))
	put := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	put("kind", strings.ToLower(string(e.Kind)))
	put("namespace", e.Namespace)
	put("name", e.Name)
	put("workload_kind", e.WorkloadKind)
	put("workload", e.Workload)
	put("node", e.Node)
	put("service_account", e.ServiceAccount)
	if e.HostNetwork {
		m["host_network"] = "true"
	}
	for k, v := range e.Labels {
		m["label:"+k] = v
	}
	svc := e.Workload
	if svc == "" && e.Kind != KindNode {
		svc = e.Name
	}
	return asset.Info{
		Owner:       e.Labels[o.OwnerLabel],
		Service:     svc,
		Environment: e.Labels[o.EnvironmentLabel],
		Criticality: e.Labels[o.CriticalityLabel],
		Labels:      m,
	}
}

// Index is the live asset index. It is safe for concurrent use.
type Index struct {
	opts    Options
	log     *slog.Logger
	factory informers.SharedInformerFactory
	pods    cache.SharedIndexInformer
	svcs    cache.SharedIndexInformer
	nodes   cache.SharedIndexInformer
	rs      listersappsv1.ReplicaSetLister // nil without Options.ReplicaSets
	synced  []namedSynced
	lookups *prometheus.CounterVec

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	ready   atomic.Bool
}

type namedSynced struct {
	name string
	fn   cache.InformerSynced
}

var _ asset.Source = (*Index)(nil)

// New builds an index on cs. Nothing is watched until Start.
func New(cs kubernetes.Interface, opts Options) *Index {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.SyncTimeout <= 0 {
		opts.SyncTimeout = 30 * time.Second
	}
	if opts.OwnerLabel == "" {
		opts.OwnerLabel = "quell.io/owner"
	}
	if opts.EnvironmentLabel == "" {
		opts.EnvironmentLabel = "quell.io/environment"
	}
	if opts.CriticalityLabel == "" {
		opts.CriticalityLabel = "quell.io/criticality"
	}
	ix := &Index{opts: opts, log: opts.Logger.With("component", "kubeindex")}
	ix.factory = informers.NewSharedInformerFactory(cs, opts.Resync)
	ix.pods = ix.factory.Core().V1().Pods().Informer()
	ix.svcs = ix.factory.Core().V1().Services().Informer()
	ix.nodes = ix.factory.Core().V1().Nodes().Informer()
	ix.setup("pods", ix.pods, slimPod, podIPs)
	ix.setup("services", ix.svcs, slimService, serviceIPs)
	ix.setup("nodes", ix.nodes, slimNode, nodeIPs)
	if opts.ReplicaSets {
		rsi := ix.factory.Apps().V1().ReplicaSets()
		ix.setup("replicasets", rsi.Informer(), slimReplicaSet, nil)
		ix.rs = rsi.Lister()
	}

	ix.lookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quell_kubeindex_lookups_total",
		Help: "Kubernetes asset index lookups by address, by result (hit or miss).",
	}, []string{"result"})
	if r := opts.Registerer; r != nil {
		r.MustRegister(ix.lookups)
		for kind, inf := range map[Kind]cache.SharedIndexInformer{KindPod: ix.pods, KindService: ix.svcs, KindNode: ix.nodes} {
			store := inf.GetStore()
			r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "quell_kubeindex_objects",
				Help:        "Objects held by the Kubernetes asset index, by kind.",
				ConstLabels: prometheus.Labels{"kind": strings.ToLower(string(kind))},
			}, func() float64 { return float64(len(store.ListKeys())) }))
		}
	}
	return ix
}

func (ix *Index) setup(name string, inf cache.SharedIndexInformer, slim cache.TransformFunc, ips func(any) []netip.Addr) {
	// Errors here only happen after the informer started, which it has not.
	_ = inf.SetTransform(slim)
	_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		lvl := slog.LevelWarn
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			lvl = slog.LevelDebug // a watch that ended or expired; the reflector resumes
		}
		ix.log.Log(context.Background(), lvl, "kubernetes asset index watch failed", "resource", name, "err", err)
	})
	if ips != nil {
		_ = inf.AddIndexers(cache.Indexers{ipIndex: func(obj any) ([]string, error) {
			addrs := ips(obj)
			keys := make([]string, len(addrs))
			for i, a := range addrs {
				keys[i] = a.String()
			}
			return keys, nil
		}})
	}
	ix.synced = append(ix.synced, namedSynced{name, inf.HasSynced})
}

// Start starts the informers and waits up to Options.SyncTimeout for their
// caches to fill. The informers run until ctx ends or Stop is called. An
// index that failed to sync keeps trying in the background; lookups answer
// from whatever it holds.
func (ix *Index) Start(ctx context.Context) error {
	ix.mu.Lock()
	if ix.started {
		ix.mu.Unlock()
		return errors.New("kubeindex: already started")
	}
	ix.started = true
	runCtx, cancel := context.WithCancel(ctx)
	ix.cancel = cancel
	ix.factory.Start(runCtx.Done())
	ix.mu.Unlock()

	t0 := time.Now()
	waitCtx, done := context.WithTimeout(runCtx, ix.opts.SyncTimeout)
	defer done()
	fns := make([]cache.InformerSynced, len(ix.synced))
	for i, s := range ix.synced {
		fns[i] = s.fn
	}
	if !cache.WaitForCacheSync(waitCtx.Done(), fns...) {
		var missing []string
		for _, s := range ix.synced {
			if !s.fn() {
				missing = append(missing, s.name)
			}
		}
		err := fmt.Errorf("kubeindex: caches not synced after %s: %s (check list/watch RBAC)",
			time.Since(t0).Round(time.Millisecond), strings.Join(missing, ", "))
		if ctx.Err() != nil {
			err = fmt.Errorf("kubeindex: %w", ctx.Err())
		}
		ix.log.Error("kubernetes asset index not synced", "err", err)
		return err
	}
	ix.ready.Store(true)
	ix.log.Info("kubernetes asset index synced", "took", time.Since(t0).Round(time.Millisecond),
		"pods", len(ix.pods.GetStore().ListKeys()), "services", len(ix.svcs.GetStore().ListKeys()),
		"nodes", len(ix.nodes.GetStore().ListKeys()))
	return nil
}

// Synced reports whether Start's initial sync completed.
func (ix *Index) Synced() bool { return ix.ready.Load() }

// Stop stops the informers and waits for them to end.
func (ix *Index) Stop() {
	ix.mu.Lock()
	cancel := ix.cancel
	ix.mu.Unlock()
	if cancel != nil {
		cancel()
		ix.factory.Shutdown()
	}
}

// Lookup implements asset.Source.
func (ix *Index) Lookup(_ context.Context, addr netip.Addr) (asset.Info, bool) {
	e, ok := ix.Resolve(addr)
	if !ok {
		ix.lookups.WithLabelValues("miss").Inc()
		return asset.Info{}, false
	}
	ix.lookups.WithLabelValues("hit").Inc()
	return e.info(&ix.opts), true
}

// LookupName returns the asset.Info of an object by name: kind Pod or
// Service with "namespace/name", or Node with "name".
func (ix *Index) LookupName(_ context.Context, kind Kind, key string) (asset.Info, bool) {
	e, ok := ix.Get(kind, key)
	if !ok {
		return asset.Info{}, false
	}
	return e.info(&ix.opts), true
}

// Info converts an entry the way Lookup does.
func (ix *Index) Info(e Entry) asset.Info { return e.info(&ix.opts) }

// Get returns an object's entry by kind and key ("namespace/name" for pods
// and services, "name" for nodes).
func (ix *Index) Get(kind Kind, key string) (Entry, bool) {
	var inf cache.SharedIndexInformer
	switch kind {
	case KindPod:
		inf = ix.pods
	case KindService:
		inf = ix.svcs
	case KindNode:
		inf = ix.nodes
	default:
		return Entry{}, false
	}
	obj, ok, err := inf.GetStore().GetByKey(key)
	if err != nil || !ok {
		return Entry{}, false
	}
	return ix.entry(obj)
}

// Resolve returns the entry that holds addr (see the package comment for
// which one wins when several do).
func (ix *Index) Resolve(addr netip.Addr) (Entry, bool) {
	if !addr.IsValid() {
		return Entry{}, false
	}
	key := addr.Unmap().WithZone("").String()
	var (
		best     any
		bestRank = 1 << 30
		bestTime time.Time
	)
	consider := func(obj any, rank int, created time.Time) {
		if rank < bestRank || (rank == bestRank && created.After(bestTime)) {
			best, bestRank, bestTime = obj, rank, created
		}
	}
	pods, _ := ix.pods.GetIndexer().ByIndex(ipIndex, key)
	for _, o := range pods {
		p, ok := o.(*corev1.Pod)
		if !ok {
			continue
		}
		rank := 0
		switch {
		case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
			rank = 4
		case p.Spec.HostNetwork:
			rank = 3
		}
		consider(p, rank, p.CreationTimestamp.Time)
	}
	if bestRank > 0 {
		svcs, _ := ix.svcs.GetIndexer().ByIndex(ipIndex, key)
		for _, o := range svcs {
			if s, ok := o.(*corev1.Service); ok {
				consider(s, 1, s.CreationTimestamp.Time)
			}
		}
	}
	if bestRank > 1 {
		nodes, _ := ix.nodes.GetIndexer().ByIndex(ipIndex, key)
		for _, o := range nodes {
			if n, ok := o.(*corev1.Node); ok {
				consider(n, 2, n.CreationTimestamp.Time)
			}
		}
	}
	if best == nil {
		return Entry{}, false
	}
	return ix.entry(best)
}

func (ix *Index) entry(obj any) (Entry, bool) {
	switch o := obj.(type) {
	case *corev1.Pod:
		e := Entry{Kind: KindPod, Namespace: o.Namespace, Name: o.Name, UID: string(o.UID),
			Labels: o.Labels, Node: o.Spec.NodeName, ServiceAccount: o.Spec.ServiceAccountName,
			HostNetwork: o.Spec.HostNetwork, Phase: string(o.Status.Phase), IPs: podIPs(o)}
		e.WorkloadKind, e.Workload = ix.workload(o)
		return e, true
	case *corev1.Service:
		return Entry{Kind: KindService, Namespace: o.Namespace, Name: o.Name, UID: string(o.UID),
			Labels: o.Labels, IPs: serviceIPs(o)}, true
	case *corev1.Node:
		return Entry{Kind: KindNode, Name: o.Name, UID: string(o.UID), Labels: o.Labels,
			Node: o.Name, IPs: nodeIPs(o)}, true
	}
	return Entry{}, false
}

// workload resolves a pod's controlling owner: a ReplicaSet's own
// controller (a Deployment) through the ReplicaSet cache when watched,
// else by the <deployment>-<pod-template-hash> naming convention; any
// other controller (StatefulSet, DaemonSet, Job, ...) as it is.
func (ix *Index) workload(p *corev1.Pod) (kind, name string) {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return "", ""
	}
	if ref.Kind != "ReplicaSet" || !strings.HasPrefix(ref.APIVersion, "apps/") {
		return ref.Kind, ref.Name
	}
	if ix.rs != nil {
		if rs, err := ix.rs.ReplicaSets(p.Namespace).Get(ref.Name); err == nil {
			if o := metav1.GetControllerOf(rs); o != nil {
				return o.Kind, o.Name
			}
			return "ReplicaSet", ref.Name
		}
	}
	if h := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; h != "" {
		if d, ok := strings.CutSuffix(ref.Name, "-"+h); ok && d != "" {
			return "Deployment", d
		}
	}
	return "ReplicaSet", ref.Name
}

// parseIPs parses Kubernetes address strings into canonical addresses,
// dropping what does not parse.
func parseIPs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if s == "" || s == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.Unmap().WithZone("")
		dup := false
		for _, b := range out {
			dup = dup || a == b
		}
		if !dup {
			out = append(out, a)
		}
	}
	return out
}

func podIPs(obj any) []netip.Addr {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return nil
	}
	ss := make([]string, 0, len(p.Status.PodIPs)+1)
	for _, ip := range p.Status.PodIPs {
		ss = append(ss, ip.IP)
	}
	ss = append(ss, p.Status.PodIP)
	return parseIPs(ss...)
}

func serviceIPs(obj any) []netip.Addr {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return nil
	}
	ss := append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...)
	for _, in := range s.Status.LoadBalancer.Ingress {
		ss = append(ss, in.IP)
	}
	return parseIPs(ss...)
}

func nodeIPs(obj any) []netip.Addr {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil
	}
	var ss []string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			ss = append(ss, a.Address)
		}
	}
	return parseIPs(ss...)
}

// The transforms keep only what the index reads: in a large cluster, full
// pod objects (managed fields, specs, container statuses) would dominate
// the engine's memory.

func slimMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID,
		ResourceVersion: m.ResourceVersion, CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp, Labels: m.Labels, OwnerReferences: m.OwnerReferences}
}

func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{ObjectMeta: slimMeta(&p.ObjectMeta),
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName, ServiceAccountName: p.Spec.ServiceAccountName,
			HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs,
			HostIP: p.Status.HostIP, HostIPs: p.Status.HostIPs}}, nil
}

func slimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	return &corev1.Service{ObjectMeta: slimMeta(&s.ObjectMeta),
		Spec:   corev1.ServiceSpec{Type: s.Spec.Type, ClusterIP: s.Spec.ClusterIP, ClusterIPs: s.Spec.ClusterIPs},
		Status: corev1.ServiceStatus{LoadBalancer: s.Status.LoadBalancer}}, nil
}

func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{ObjectMeta: slimMeta(&n.ObjectMeta),
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses}}, nil
}

func slimReplicaSet(obj any) (any, error) {
	rs, ok := obj.(*appsv1.ReplicaSet)
	if !ok {
		return obj, nil
	}
	return &appsv1.ReplicaSet{ObjectMeta: slimMeta(&rs.ObjectMeta)}, nil
}
