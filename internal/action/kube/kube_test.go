package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/quell-ir/quell/internal/action"
	kubeenv "github.com/quell-ir/quell/internal/testenv/kube"
)

var nsSeq atomic.Int64

func admin(t testing.TB) (kubernetes.Interface, dynamic.Interface) {
	cs, err := kubernetes.NewForConfig(env.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(env.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	return cs, dyn
}

// testClient runs as quell's ServiceAccount, so every action also proves
// the RBAC in deploy/kubernetes covers it.
func testClient(t testing.TB, mod func(*Config)) *Client {
	t.Helper()
	kubeenv.Require(t, env)
	cfg := DefaultConfig()
	cfg.EvidenceDir = t.TempDir()
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewForConfig(env.Config(saToken), cfg, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func newNS(t testing.TB, cs kubernetes.Interface) string {
	t.Helper()
	name := fmt.Sprintf("t%d-%d", time.Now().UnixNano()%100000, nsSeq.Add(1))
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

func mkPod(t testing.TB, cs kubernetes.Interface, ns, name string, labels map[string]string, owner *metav1.OwnerReference) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	out, err := cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func setReady(t testing.TB, cs kubernetes.Interface, p *corev1.Pod) {
	t.Helper()
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func build(t testing.TB, c *Client, name string, params map[string]string) action.Action {
	t.Helper()
	reg := action.NewRegistry()
	if err := Register(reg, c); err != nil {
		t.Fatal(err)
	}
	a, _, err := reg.Build(name, params)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// lifecycle runs check, apply, verify, an idempotent re-apply, then a
// "crash" (a fresh action from the same params runs Check, Verify and
// Revert, as recovery would), and a second revert.
func lifecycle(t *testing.T, c *Client, name string, params map[string]string, applied, reverted func(t *testing.T)) {
	t.Helper()
	ctx := context.Background()
	eff := actionEffect()
	a := build(t, c, name, params)
	before, err := a.Check(ctx)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatalf("verify: %v", err)
	}
	applied(t)
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatalf("idempotent re-apply: %v", err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatalf("verify after re-apply: %v", err)
	}
	applied(t)

	fresh := build(t, c, name, params)
	if fresh.Key() != a.Key() {
		t.Fatalf("key not stable: %q vs %q", fresh.Key(), a.Key())
	}
	before2, err := fresh.Check(ctx)
	if err != nil {
		t.Fatalf("recovery check: %v", err)
	}
	// An irreversible action (no reverted check) has nothing to restore.
	if reverted != nil && !jsonEqual(before, before2) {
		t.Fatalf("recovery check lost the before state:\n first: %s\n again: %s", before, before2)
	}
	if err := fresh.Verify(ctx, eff); err != nil {
		t.Fatalf("recovery verify: %v", err)
	}
	if reverted == nil {
		return
	}
	if err := fresh.Revert(ctx, before2); err != nil {
		t.Fatalf("revert: %v", err)
	}
	reverted(t)
	if err := fresh.Revert(ctx, before2); err != nil {
		t.Fatalf("second revert: %v", err)
	}
	reverted(t)
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

func wantDenied(t *testing.T, err error, contains string) {
	t.Helper()
	reason, ok := action.IsDenied(err)
	if !ok {
		t.Fatalf("want a denial containing %q, got %v", contains, err)
	}
	if !strings.Contains(reason, contains) {
		t.Fatalf("denial %q does not mention %q", reason, contains)
	}
}

func TestIsolatePod(t *testing.T) {
	kubeenv.Require(t, env)
	cs, _ := admin(t)
	ctx := context.Background()
	ns := newNS(t, cs)
	mkPod(t, cs, ns, "web-1", map[string]string{"app": "web", "tier": "fe"}, nil)
	mkPod(t, cs, ns, "web-2", map[string]string{"app": "web", "tier": "fe"}, nil)
	// An allow-policy selecting app=web would punch holes in the quarantine.
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-web"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := testClient(t, nil) // after the fixtures: its watch cache starts with them
	pod := func() *corev1.Pod {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	lifecycle(t, c, "kube.isolate_pod", map[string]string{"namespace": ns, "pod": "web-1"},
		func(t *testing.T) {
			p := pod()
			if p.Labels[LabelQuarantine] != "deny-all" || p.Labels["app"] != "" || p.Labels["tier"] != "fe" {
				t.Fatalf("labels after isolation: %v", p.Labels)
			}
			np, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "quell-quarantine-deny-all", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(np.Spec.Ingress) != 0 || len(np.Spec.Egress) != 0 || len(np.Spec.PolicyTypes) != 2 ||
				np.Labels[LabelManagedBy] != "quell" {
				t.Fatalf("quarantine policy: %+v", np)
			}
			if mf := np.ManagedFields; len(mf) == 0 || mf[0].Manager != FieldManager {
				t.Fatalf("policy not applied by field manager quell: %+v", mf)
			}
			if other, _ := cs.CoreV1().Pods(ns).Get(ctx, "web-2", metav1.GetOptions{}); other.Labels["app"] != "web" {
				t.Fatalf("isolation touched another pod: %v", other.Labels)
			}
		},
		func(t *testing.T) {
			p := pod()
			if _, q := p.Labels[LabelQuarantine]; q || p.Labels["app"] != "web" || p.Labels["tier"] != "fe" {
				t.Fatalf("labels after revert: %v", p.Labels)
			}
			for k := range p.Annotations {
				if strings.HasPrefix(k, "quell.io/") {
					t.Fatalf("annotation %s left behind", k)
				}
			}
			if _, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "quell-quarantine-deny-all", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("shared quarantine policy should be gone once unused: %v", err)
			}
		})
}

func TestIsolateDenied(t *testing.T) {
	kubeenv.Require(t, env)
	cs, _ := admin(t)
	ctx := context.Background()
	ns := newNS(t, cs)
	mkPod(t, cs, ns, "ingress", map[string]string{"app.kubernetes.io/name": "ingress-nginx"}, nil)
	mkPod(t, cs, ns, "db", map[string]string{"app": "db"}, nil)
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-all-in-ns"},
		Spec:       networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mkDeployment(t, cs, ns, "big", 3, map[string]string{"app": "big"})
	for i := 0; i < 3; i++ {
		mkPod(t, cs, ns, fmt.Sprintf("big-%d", i), map[string]string{"app": "big"}, nil)
	}
	c := testClient(t, func(c *Config) { c.MaxPodsPerSelector = 2 })
	_, err := build(t, c, "kube.isolate_pod", map[string]string{"namespace": ns, "pod": "ingress"}).Check(ctx)
	wantDenied(t, err, "protected")
	_, err = build(t, c, "kube.isolate_pod", map[string]string{"namespace": ns, "pod": "db"}).Check(ctx)
	wantDenied(t, err, "allow-all-in-ns")
	_, err = build(t, c, "kube.isolate_pod", map[string]string{"namespace": "kube-system", "pod": "x"}).Check(ctx)
	wantDenied(t, err, "kube-system")
	_, err = build(t, c, "kube.isolate_workload", map[string]string{"namespace": ns, "name": "big"}).Check(ctx)
	wantDenied(t, err, "max_pods_per_selector")
}

func mkDeployment(t testing.TB, cs kubernetes.Interface, ns, name string, replicas int32, l map[string]string) *appsv1.Deployment {
	t.Helper()
	d, err := cs.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: l},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: l},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestIsolateWorkload(t *testing.T) {
	kubeenv.Require(t, env)
	cs, _ := admin(t)
	ctx := context.Background()
	ns := newNS(t, cs)
	mkDeployment(t, cs, ns, "api", 3, map[string]string{"app": "api"})
	for i := 0; i < 3; i++ {
		mkPod(t, cs, ns, fmt.Sprintf("api-%d", i), map[string]string{"app": "api"}, nil)
	}
	mkPod(t, cs, ns, "other", map[string]string{"app": "other"}, nil)
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-api"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"api"}}}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := testClient(t, func(c *Config) { c.ForensicsNamespace = "forensics" })
	params := map[string]string{"namespace": ns, "kind": "deployment", "name": "api"}
	key := "kube.isolate_workload/" + ns + "/deployment/api"
	lifecycle(t, c, "kube.isolate_workload", params,
		func(t *testing.T) {
			for i := 0; i < 3; i++ {
				p, _ := cs.CoreV1().Pods(ns).Get(ctx, fmt.Sprintf("api-%d", i), metav1.GetOptions{})
				if p.Labels[LabelQuarantine] == "" || p.Labels["app"] != "" {
					t.Fatalf("pod %s labels %v", p.Name, p.Labels)
				}
			}
			np, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, objectName("quell-quarantine", key), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(np.Spec.Ingress) != 1 || np.Spec.Ingress[0].From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "forensics" ||
				np.Labels[LabelIncident] != "inc-42" {
				t.Fatalf("workload policy: %+v", np.Spec)
			}
		},
		func(t *testing.T) {
			for i := 0; i < 3; i++ {
				p, _ := cs.CoreV1().Pods(ns).Get(ctx, fmt.Sprintf("api-%d", i), metav1.GetOptions{})
				if _, q := p.Labels[LabelQuarantine]; q || p.Labels["app"] != "api" {
					t.Fatalf("pod %s labels after revert %v", p.Name, p.Labels)
				}
			}
			if _, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, objectName("quell-quarantine", key), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("workload policy not deleted: %v", err)
			}
			d, _ := cs.AppsV1().Deployments(ns).Get(ctx, "api", metav1.GetOptions{})
			for k := range d.Annotations {
				if strings.HasPrefix(k, "quell.io/") {
					t.Fatalf("annotation %s left on deployment", k)
				}
			}
		})
}

func actionEffect() action.Effect { return action.Effect{TxnID: "txn-1", IncidentID: "inc-42"} }
