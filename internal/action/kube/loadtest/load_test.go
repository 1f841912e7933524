// Package loadtest runs the 500-pod mass isolation against an apiserver
// started with low in-flight limits (and APF off, so the limits answer 429
// with Retry-After), with a competing writer provoking throttling.
package loadtest

import (
	"context"
	"fmt"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/action/kube"
	kubeenv "github.com/quell-ir/quell/internal/testenv/kube"
)

var env *kubeenv.Env

const (
	saToken     = "quell-sa-load-token-0123456789"
	writerToken = "competing-writer-token-0123456"
)

func TestMain(m *testing.M) {
	opts := kubeenv.Options{MaxRequestsInflight: 8, MaxMutatingRequestsInflight: 4, DisableAPF: true,
		Users: []kubeenv.User{kubeenv.ServiceAccountUser("quell-system", "quell", saToken),
			{Token: writerToken, Name: "writer", UID: "writer", Groups: []string{"system:authenticated"}}}}
	os.Exit(kubeenv.Main(m, opts, func(ctx context.Context, e *kubeenv.Env) error {
		rbac, err := os.ReadFile("../../../../deploy/kubernetes/rbac.yaml")
		if err != nil {
			return err
		}
		if err := kubeenv.Apply(ctx, e.AdminConfig(), "quell-test", rbac); err != nil {
			return err
		}
		env = e
		return nil
	}))
}

func TestMassIsolation500(t *testing.T) { massIsolation(t, "mass", 500) }

// TestMassIsolation100 is the smaller burst the performance figures name.
func TestMassIsolation100(t *testing.T) { massIsolation(t, "mass100", 100) }

func massIsolation(t *testing.T, ns string, n int) {
	kubeenv.Require(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adminCS, err := kubernetes.NewForConfig(env.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adminCS.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Fixtures as system:masters (exempt from the in-flight limits).
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 20)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := adminCS.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
				Name: fmt.Sprintf("victim-%03d", i), Labels: map[string]string{"app": "victim"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/x:1"}}}}, metav1.CreateOptions{})
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	cfg := kube.DefaultConfig()
	cfg.EvidenceDir = t.TempDir()
	c, err := kube.NewForConfig(env.Config(saToken), cfg, kube.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reg := action.NewRegistry()
	if err := kube.Register(reg, c); err != nil {
		t.Fatal(err)
	}

	// The competing writer: a non-privileged client hammering ConfigMaps
	// until the isolations are done, to fill the mutating in-flight slots.
	writerCtx, stopWriter := context.WithCancel(ctx)
	var writerWrites atomic.Int64
	var writers sync.WaitGroup
	wcfg := env.Config(writerToken)
	wcfg.QPS, wcfg.Burst = -1, 0
	writerCS, _ := kubernetes.NewForConfig(wcfg)
	if _, err := adminCS.RbacV1().ClusterRoleBindings().Create(ctx, writerBinding(), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for w := 0; w < 16; w++ {
		writers.Add(1)
		go func(w int) {
			defer writers.Done()
			for i := 0; i < 100000 && writerCtx.Err() == nil; i++ {
				_, err := writerCS.CoreV1().ConfigMaps(ns).Create(writerCtx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
					Name: fmt.Sprintf("noise-%d-%d", w, i)}}, metav1.CreateOptions{})
				if err == nil {
					writerWrites.Add(1)
				}
			}
		}(w)
	}

	start := time.Now()
	var engineRetries, done atomic.Int64
	jobs := make(chan int)
	failures := make(chan error, n)
	var pool sync.WaitGroup
	for w := 0; w < 50; w++ { // the engine's worker pool
		pool.Add(1)
		go func() {
			defer pool.Done()
			for i := range jobs {
				params := map[string]string{"namespace": ns, "pod": fmt.Sprintf("victim-%03d", i)}
				if err := runWithRetry(ctx, reg, params, &engineRetries); err != nil {
					failures <- fmt.Errorf("%s: %w", params["pod"], err)
					continue
				}
				done.Add(1)
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	pool.Wait()
	elapsed := time.Since(start)
	stopWriter()
	writers.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}

	// Every pod isolated exactly once: labelled, and exactly one policy.
	pods, err := adminCS.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	isolated := 0
	for _, p := range pods.Items {
		if p.Labels[kube.LabelQuarantine] == "deny-all" && p.Labels["app"] == "victim" {
			isolated++
		}
	}
	pols, err := adminCS.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if isolated != n || len(pods.Items) != n || len(pols.Items) != 1 || done.Load() != int64(n) {
		t.Fatalf("isolated %d of %d pods (%d listed, %d policies, %d done)", isolated, n, len(pods.Items), len(pols.Items), done.Load())
	}
	t.Logf("%d isolations in %s (QPS %v, burst %d, 50 workers); 429s seen by quell: %d; engine-level retries: %d; competing writes: %d",
		n, elapsed.Round(time.Millisecond), cfg.QPS, cfg.Burst, c.Throttled(), engineRetries.Load(), writerWrites.Load())
}

// runWithRetry is the engine's loop for one transaction: check, apply,
// verify; a Retryable error waits (Retry-After or backoff) and retries.
func runWithRetry(ctx context.Context, reg *action.Registry, params map[string]string, retries *atomic.Int64) error {
	backoff := 50 * time.Millisecond
	for attempt := 0; attempt < 20; attempt++ {
		a, _, err := reg.Build("kube.isolate_pod", params)
		if err != nil {
			return err
		}
		eff := action.Effect{TxnID: "t-" + params["pod"], IncidentID: "mass"}
		_, err = a.Check(ctx)
		if err == nil {
			err = a.Apply(ctx, eff)
		}
		if err == nil {
			err = a.Verify(ctx, eff)
		}
		if err == nil {
			return nil
		}
		after, ok := action.IsRetryable(err)
		if !ok {
			return err
		}
		retries.Add(1)
		if after <= 0 {
			after = backoff
			backoff *= 2
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(after):
		}
	}
	return fmt.Errorf("gave up after 20 attempts")
}
