package kubeindex

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

// These tests use client-go's fake clientset: they run everywhere and cover
// the ranking and naming rules; the apiserver tests (kube_test.go) cover
// the real watch path.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func fakePod(ns, name string, age time.Duration, host bool, phase corev1.PodPhase, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-pod-" + name),
			CreationTimestamp: metav1.NewTime(t0.Add(-age)), Labels: map[string]string{"app": name}},
		Spec:   corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa-" + name, HostNetwork: host},
		Status: corev1.PodStatus{Phase: phase},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func startFake(t *testing.T, opts Options, objs ...runtime.Object) *Index {
	t.Helper()
	ix := New(fake.NewClientset(objs...), opts)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ix.Stop() })
	if err := ix.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return ix
}

func mustResolve(t *testing.T, ix *Index, ip string) Entry {
	t.Helper()
	e, ok := ix.Resolve(netip.MustParseAddr(ip))
	if !ok {
		t.Fatalf("%s: not found", ip)
	}
	return e
}

func TestRanking(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "10.1.0.1"}, {Type: corev1.NodeHostName, Address: "10.1.0.99"},
		{Type: corev1.NodeExternalIP, Address: "2001:db8::1"}}}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "svc"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.10", ClusterIPs: []string{"10.0.0.10"}}}
	headless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "headless"},
		Spec: corev1.ServiceSpec{ClusterIP: "None", ClusterIPs: []string{"None"}}}
	ix := startFake(t, Options{}, node, svc, headless,
		fakePod("kube-system", "hostnet", time.Hour, true, corev1.PodRunning, "10.1.0.1"),
		fakePod("kube-system", "hostnet-orphan", time.Hour, true, corev1.PodRunning, "10.1.0.2"),
		fakePod("a", "old", 2*time.Hour, false, corev1.PodRunning, "10.2.0.5"),
		fakePod("a", "new", time.Hour, false, corev1.PodRunning, "10.2.0.5"),
		fakePod("a", "done", time.Minute, false, corev1.PodSucceeded, "10.2.0.5", "fd00::5"),
		fakePod("a", "onlydone", time.Minute, false, corev1.PodFailed, "10.2.0.6"),
		fakePod("a", "bad", time.Minute, false, corev1.PodRunning, "not-an-ip"),
		fakePod("a", "stale-svc", time.Minute, false, corev1.PodSucceeded, "10.0.0.10"),
	)
	cases := []struct {
		ip   string
		kind Kind
		name string
	}{
		{"10.1.0.1", KindNode, "n1"},            // node beats its host-network pods
		{"2001:db8::1", KindNode, "n1"},         // ExternalIP, IPv6
		{"10.1.0.2", KindPod, "hostnet-orphan"}, // host-network pod when no node holds the address
		{"10.2.0.5", KindPod, "new"},            // live pods before finished ones, newest first
		{"::ffff:10.2.0.5", KindPod, "new"},     // IPv4-mapped
		{"fd00::5", KindPod, "done"},            // a finished pod when nothing else holds it
		{"fd00:0:0:0:0:0:0:5", KindPod, "done"}, // any spelling of the address
		{"10.2.0.6", KindPod, "onlydone"},       //
		{"10.0.0.10", KindService, "svc"},       // a service beats a finished pod
	}
	for _, c := range cases {
		e := mustResolve(t, ix, c.ip)
		if e.Kind != c.kind || e.Name != c.name {
			t.Errorf("%s: got %s %s/%s, want %s %s", c.ip, e.Kind, e.Namespace, e.Name, c.kind, c.name)
		}
	}
	for _, ip := range []string{"10.1.0.99", "10.9.9.9", "::1"} {
		if e, ok := ix.Resolve(netip.MustParseAddr(ip)); ok {
			t.Errorf("%s: unexpected %+v", ip, e)
		}
	}
	if _, ok := ix.Lookup(context.Background(), netip.Addr{}); ok {
		t.Error("zero address found")
	}
	info, ok := ix.Lookup(context.Background(), netip.MustParseAddr("10.1.0.2"))
	if !ok || info.Labels["host_network"] != "true" || info.Labels["node"] != "n1" {
		t.Errorf("host-network pod info: %+v", info)
	}
}

func TestWorkloadResolution(t *testing.T) {
	ctrl := true
	owned := func(p *corev1.Pod, kind, name, hash string) *corev1.Pod {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: "u", Controller: &ctrl}}
		if kind == "Job" {
			p.OwnerReferences[0].APIVersion = "batch/v1"
		}
		if hash != "" {
			p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
		}
		return p
	}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "odd-name",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "argoproj.io/v1alpha1", Kind: "Rollout", Name: "canary", UID: "r", Controller: &ctrl}}}}
	objs := []runtime.Object{rs,
		owned(fakePod("a", "web-5d4f8-x", 0, false, corev1.PodRunning, "10.3.0.1"), "ReplicaSet", "web-5d4f8", "5d4f8"),
		owned(fakePod("a", "odd-name-y", 0, false, corev1.PodRunning, "10.3.0.2"), "ReplicaSet", "odd-name", "abc"),
		owned(fakePod("a", "db-0", 0, false, corev1.PodRunning, "10.3.0.3"), "StatefulSet", "db", ""),
		owned(fakePod("a", "agent-z", 0, false, corev1.PodRunning, "10.3.0.4"), "DaemonSet", "agent", ""),
		owned(fakePod("a", "batch-q", 0, false, corev1.PodRunning, "10.3.0.5"), "Job", "batch", ""),
		fakePod("a", "bare", 0, false, corev1.PodRunning, "10.3.0.6"),
	}
	for _, withRS := range []bool{false, true} {
		ix := startFake(t, Options{ReplicaSets: withRS}, objs...)
		want := map[string][2]string{
			"10.3.0.1": {"Deployment", "web"},
			"10.3.0.2": {"ReplicaSet", "odd-name"}, // hash label does not match the name
			"10.3.0.3": {"StatefulSet", "db"},
			"10.3.0.4": {"DaemonSet", "agent"},
			"10.3.0.5": {"Job", "batch"},
			"10.3.0.6": {"", ""},
		}
		if withRS {
			want["10.3.0.2"] = [2]string{"Rollout", "canary"} // the ReplicaSet's own owner
		}
		for ip, w := range want {
			e := mustResolve(t, ix, ip)
			if e.WorkloadKind != w[0] || e.Workload != w[1] {
				t.Errorf("replicasets=%v %s (%s): got %s/%s, want %s/%s", withRS, ip, e.Name, e.WorkloadKind, e.Workload, w[0], w[1])
			}
		}
	}
}

func TestInfoAndMetrics(t *testing.T) {
	p := fakePod("pay", "checkout-1", 0, false, corev1.PodRunning, "10.4.0.1")
	p.Labels["quell.io/owner"] = "payments"
	p.Labels["quell.io/environment"] = "production"
	p.Labels["team"] = "pay"
	reg := prometheus.NewPedanticRegistry()
	ix := startFake(t, Options{Registerer: reg, CriticalityLabel: "team"}, p)
	info, ok := ix.Lookup(context.Background(), netip.MustParseAddr("10.4.0.1"))
	if !ok {
		t.Fatal("miss")
	}
	if info.Owner != "payments" || info.Environment != "production" || info.Criticality != "pay" || info.Service != "checkout-1" {
		t.Errorf("info: %+v", info)
	}
	for k, v := range map[string]string{"kind": "pod", "namespace": "pay", "name": "checkout-1", "node": "n1",
		"service_account": "sa-checkout-1", "label:app": "checkout-1", "label:team": "pay"} {
		if info.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, info.Labels[k], v)
		}
	}
	if _, ok := info.Labels["workload"]; ok {
		t.Error("bare pod has a workload")
	}
	ix.Lookup(context.Background(), netip.MustParseAddr("10.4.0.2"))
	byName, ok := ix.LookupName(context.Background(), KindPod, "pay/checkout-1")
	if !ok || byName.Labels["name"] != "checkout-1" {
		t.Errorf("by name: %v %+v", ok, byName)
	}
	if _, ok := ix.LookupName(context.Background(), KindPod, "pay/nope"); ok {
		t.Error("missing pod found by name")
	}
	if h, m := testutil.ToFloat64(ix.lookups.WithLabelValues("hit")), testutil.ToFloat64(ix.lookups.WithLabelValues("miss")); h != 1 || m != 1 {
		t.Errorf("lookups hit=%v miss=%v", h, m)
	}
	if n, err := testutil.GatherAndCount(reg, "quell_kubeindex_objects"); err != nil || n != 3 {
		t.Errorf("objects series: %d %v", n, err)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "quell_kubeindex_objects" {
			continue
		}
		for _, m := range mf.Metric {
			if m.Label[0].GetValue() == "pod" && m.Gauge.GetValue() != 1 {
				t.Errorf("pods gauge %v", m.Gauge.GetValue())
			}
		}
	}
}

func TestSlimPodKeepsWhatLookupReads(t *testing.T) {
	p := fakePod("a", "x", 0, true, corev1.PodRunning, "10.5.0.1")
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	p.Spec.Containers = []corev1.Container{{Name: "c", Image: "busybox"}}
	o, _ := slimPod(p)
	s := o.(*corev1.Pod)
	if s.ManagedFields != nil || s.Spec.Containers != nil {
		t.Error("not slimmed")
	}
	if s.Spec.NodeName != "n1" || !s.Spec.HostNetwork || s.Spec.ServiceAccountName != "sa-x" || s.Status.PodIP != "10.5.0.1" || s.Labels["app"] != "x" {
		t.Errorf("slimmed too much: %+v", s)
	}
}

// BenchmarkLookup: 10,000 pods; a hit (pod with a ReplicaSet owner) and a miss.
func BenchmarkLookup(b *testing.B) {
	ctrl := true
	var objs []runtime.Object
	for i := range 10000 {
		p := fakePod("a", fmt.Sprintf("web-5d4f8-%d", i), 0, false, corev1.PodRunning, fmt.Sprintf("10.%d.%d.%d", 100+i>>16, i>>8&255, i&255))
		p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = "5d4f8"
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d4f8", UID: "u", Controller: &ctrl}}
		objs = append(objs, p)
	}
	ix := New(fake.NewClientset(objs...), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); ix.Stop() }()
	if err := ix.Start(ctx); err != nil {
		b.Fatal(err)
	}
	hit, miss := netip.MustParseAddr("10.100.20.30"), netip.MustParseAddr("10.200.0.1")
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if info, ok := ix.Lookup(ctx, hit); !ok || info.Labels["workload"] != "web" {
				b.Fatal(info, ok)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := ix.Lookup(ctx, miss); ok {
				b.Fatal("hit")
			}
		}
	})
}
