package kubeindex

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/quell-ir/quell/internal/enrich/asset"
	kubeenv "github.com/quell-ir/quell/internal/testenv/kube"
)

// Every index watches the whole cluster, so each test uses its own
// namespace and its own addresses.

func admin(t *testing.T) kubernetes.Interface {
	t.Helper()
	kubeenv.Require(t, env)
	return clientFor(t, env.AdminConfig())
}

func clientFor(t *testing.T, rc *rest.Config) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// namespace creates the test's namespace; at the end its pods and
// services are deleted (there is no namespace controller to do it), so a
// rerun (-count) may reuse the same addresses.
func namespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	prefix := "ki-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if len(prefix) > 50 {
		prefix = prefix[:50]
	}
	ns, err := cs.CoreV1().Namespaces().Create(ctxT(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		zero := int64(0)
		_ = cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		svcs, _ := cs.CoreV1().Services(ns.Name).List(ctx, metav1.ListOptions{})
		if svcs != nil {
			for _, s := range svcs.Items {
				_ = cs.CoreV1().Services(ns.Name).Delete(ctx, s.Name, metav1.DeleteOptions{})
			}
		}
	})
	return ns.Name
}

func startIndex(t *testing.T, cs kubernetes.Interface, opts Options) *Index {
	t.Helper()
	if opts.SyncTimeout == 0 {
		opts.SyncTimeout = 10 * time.Second
	}
	ix := New(cs, opts)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ix.Stop() })
	if err := ix.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return ix
}

// podSpec is a minimal valid pod; there is no scheduler, so the node is set.
func podSpec(ns, name string, labels map[string]string, owner *metav1.OwnerReference) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "runner",
			Containers: []corev1.Container{{Name: "c", Image: "registry.example/app:1"}}},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

// runPod creates the pod and sets its status as a kubelet would.
func runPod(t *testing.T, cs kubernetes.Interface, p *corev1.Pod, ips ...string) *corev1.Pod {
	t.Helper()
	ctx := ctxT(t)
	p, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return setPodIPs(t, cs, p, ips...)
}

func setPodIPs(t *testing.T, cs kubernetes.Interface, p *corev1.Pod, ips ...string) *corev1.Pod {
	t.Helper()
	p = p.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP, p.Status.HostIPs = "10.1.0.10", []corev1.HostIP{{IP: "10.1.0.10"}}
	p.Status.PodIP, p.Status.PodIPs = "", nil
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	p, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctxT(t), p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// await polls the index until cond holds for addr's answer, or fails the
// test after a deadline.
func await(t *testing.T, ix *Index, addr string, what string, cond func(asset.Info, bool) bool) asset.Info {
	t.Helper()
	a := netip.MustParseAddr(addr)
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		info, ok := ix.Lookup(context.Background(), a)
		if cond(info, ok) {
			return info
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s: %s: last answer %v %+v", addr, what, ok, info)
		case <-tick.C:
		}
	}
}

func isObject(kind, ns, name string) func(asset.Info, bool) bool {
	return func(i asset.Info, ok bool) bool {
		return ok && i.Labels["kind"] == kind && i.Labels["namespace"] == ns && i.Labels["name"] == name
	}
}

func missing(_ asset.Info, ok bool) bool { return !ok }

func TestKubePodByIP(t *testing.T) {
	cs := admin(t)
	ns := namespace(t, cs)
	reg := prometheus.NewRegistry()
	ix := startIndex(t, cs, Options{Registerer: reg})
	runPod(t, cs, podSpec(ns, "web-0", map[string]string{"app": "web", "quell.io/environment": "production"}, nil),
		"10.244.1.5", "fd00:10:244:1::5")

	for _, ip := range []string{"10.244.1.5", "fd00:10:244:1::5", "::ffff:10.244.1.5"} {
		info := await(t, ix, ip, "pod web-0", isObject("pod", ns, "web-0"))
		want := map[string]string{"node": "node-a", "service_account": "runner", "label:app": "web"}
		for k, v := range want {
			if info.Labels[k] != v {
				t.Errorf("%s: %s = %q, want %q", ip, k, info.Labels[k], v)
			}
		}
		if info.Environment != "production" || info.Service != "web-0" {
			t.Errorf("%s: %+v", ip, info)
		}
	}
	if _, ok := ix.Lookup(context.Background(), netip.MustParseAddr("10.244.1.6")); ok {
		t.Error("10.244.1.6 found")
	}
	if e, ok := ix.Get(KindPod, ns+"/web-0"); !ok || len(e.IPs) != 2 {
		t.Errorf("by name: %v %+v", ok, e)
	}
	if h, m := testutil.ToFloat64(ix.lookups.WithLabelValues("hit")), testutil.ToFloat64(ix.lookups.WithLabelValues("miss")); h < 3 || m < 1 {
		t.Errorf("lookups hit=%v miss=%v", h, m)
	}
}

func TestKubeWorkloads(t *testing.T) {
	cs := admin(t)
	ns := namespace(t, cs)
	ctx := ctxT(t)
	ctrl := true
	labels := map[string]string{"app": "api"}
	dep, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/api:1"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// There is no controller manager: create the ReplicaSets a Deployment
	// controller would, one by its naming convention and one not.
	mkRS := func(name, hash string) *appsv1.ReplicaSet {
		l := map[string]string{"app": "api", appsv1.DefaultDeploymentUniqueLabelKey: hash}
		rs, err := cs.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l, OwnerReferences: []metav1.OwnerReference{
				{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID, Controller: &ctrl}}},
			Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: l},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: l}, Spec: dep.Spec.Template.Spec}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	rsConv, rsOdd := mkRS("api-6b7c9d8f4", "6b7c9d8f4"), mkRS("api-renamed", "5f5f5f5f5")
	ownedBy := func(kind, name string, uid string) *metav1.OwnerReference {
		return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: name, UID: typesUID(uid), Controller: &ctrl}
	}
	runPod(t, cs, podSpec(ns, "api-6b7c9d8f4-abcde", map[string]string{"app": "api", appsv1.DefaultDeploymentUniqueLabelKey: "6b7c9d8f4"},
		ownedBy("ReplicaSet", rsConv.Name, string(rsConv.UID))), "10.244.2.1")
	runPod(t, cs, podSpec(ns, "api-renamed-fghij", map[string]string{"app": "api", appsv1.DefaultDeploymentUniqueLabelKey: "5f5f5f5f5"},
		ownedBy("ReplicaSet", rsOdd.Name, string(rsOdd.UID))), "10.244.2.2")
	runPod(t, cs, podSpec(ns, "db-0", map[string]string{"app": "db"}, ownedBy("StatefulSet", "db", "11111111-1111-1111-1111-111111111111")), "10.244.2.3")
	runPod(t, cs, podSpec(ns, "agent-xyz", map[string]string{"app": "agent"}, ownedBy("DaemonSet", "agent", "22222222-2222-2222-2222-222222222222")), "10.244.2.4")
	job := ownedBy("Job", "nightly", "33333333-3333-3333-3333-333333333333")
	job.APIVersion = "batch/v1"
	runPod(t, cs, podSpec(ns, "nightly-q", map[string]string{"app": "nightly"}, job), "10.244.2.5")

	workload := func(kind, name string) func(asset.Info, bool) bool {
		return func(i asset.Info, ok bool) bool {
			return ok && i.Labels["namespace"] == ns && i.Labels["workload_kind"] == kind && i.Labels["workload"] == name
		}
	}
	withRS := startIndex(t, cs, Options{ReplicaSets: true})
	await(t, withRS, "10.244.2.1", "deployment by ReplicaSet owner", workload("Deployment", "api"))
	info := await(t, withRS, "10.244.2.2", "deployment by ReplicaSet owner (unconventional name)", workload("Deployment", "api"))
	if info.Service != "api" || info.Labels["label:app"] != "api" {
		t.Errorf("info %+v", info)
	}
	await(t, withRS, "10.244.2.3", "statefulset", workload("StatefulSet", "db"))
	await(t, withRS, "10.244.2.4", "daemonset", workload("DaemonSet", "agent"))
	await(t, withRS, "10.244.2.5", "job", workload("Job", "nightly"))

	// Without the ReplicaSet watch, the naming convention answers.
	noRS := startIndex(t, cs, Options{})
	await(t, noRS, "10.244.2.1", "deployment by name convention", workload("Deployment", "api"))
	await(t, noRS, "10.244.2.2", "replicaset when the name does not follow the convention", workload("ReplicaSet", "api-renamed"))
}

func TestKubeServicesAndNodes(t *testing.T) {
	cs := admin(t)
	ns := namespace(t, cs)
	ctx := ctxT(t)
	ix := startIndex(t, cs, Options{})

	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "frontend", Labels: map[string]string{"tier": "edge"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "frontend"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info := await(t, ix, svc.Spec.ClusterIP, "service cluster IP", isObject("service", ns, "frontend"))
	if info.Labels["label:tier"] != "edge" || info.Service != "frontend" {
		t.Errorf("service info %+v", info)
	}

	lb, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "public"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "frontend"},
			Ports: []corev1.ServicePort{{Port: 443, TargetPort: intstr.FromInt32(8443)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}, {IP: "2001:db8:7::7"}, {Hostname: "lb.example"}}
	if _, err := cs.CoreV1().Services(ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, ix, "203.0.113.7", "load-balancer ingress IPv4", isObject("service", ns, "public"))
	await(t, ix, "2001:db8:7::7", "load-balancer ingress IPv6", isObject("service", ns, "public"))
	await(t, ix, lb.Spec.ClusterIP, "load-balancer cluster IP", isObject("service", ns, "public"))

	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "ki-node-1",
		Labels: map[string]string{"topology.kubernetes.io/zone": "z1"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.1.7.1"},
		{Type: corev1.NodeInternalIP, Address: "fd00:1:7::1"}, {Type: corev1.NodeHostName, Address: "ki-node-1"}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	info = await(t, ix, "10.1.7.1", "node InternalIP", isObject("node", "", "ki-node-1"))
	if info.Labels["label:topology.kubernetes.io/zone"] != "z1" || info.Labels["node"] != "ki-node-1" {
		t.Errorf("node info %+v", info)
	}
	await(t, ix, "fd00:1:7::1", "node InternalIP (IPv6)", isObject("node", "", "ki-node-1"))

	// A host-network pod holds its node's address: the node answers.
	hp := podSpec(ns, "node-exporter-1", map[string]string{"app": "node-exporter"}, nil)
	hp.Spec.HostNetwork, hp.Spec.NodeName = true, "ki-node-1"
	runPod(t, cs, hp, "10.1.7.1")
	await(t, ix, "10.1.7.1", "host-network pod in the index", func(asset.Info, bool) bool {
		e, ok := ix.Get(KindPod, ns+"/node-exporter-1")
		return ok && len(e.IPs) == 1
	})
	await(t, ix, "10.1.7.1", "node still answers over its host-network pod", isObject("node", "", "ki-node-1"))
}

func TestKubeUpdatesAndDeletes(t *testing.T) {
	cs := admin(t)
	ns := namespace(t, cs)
	ix := startIndex(t, cs, Options{})
	p := runPod(t, cs, podSpec(ns, "mover", map[string]string{"app": "mover"}, nil), "10.244.3.1")
	await(t, ix, "10.244.3.1", "initial IP", isObject("pod", ns, "mover"))

	p = setPodIPs(t, cs, p, "10.244.3.2", "fd00:10:244:3::2")
	await(t, ix, "10.244.3.2", "new IP", isObject("pod", ns, "mover"))
	await(t, ix, "fd00:10:244:3::2", "new IPv6", isObject("pod", ns, "mover"))
	await(t, ix, "10.244.3.1", "old IP gone", missing)

	// Labels changes show too.
	p.Labels["quell.io/owner"] = "team-x"
	if _, err := cs.CoreV1().Pods(ns).Update(ctxT(t), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, ix, "10.244.3.2", "owner label", func(i asset.Info, ok bool) bool { return ok && i.Owner == "team-x" })

	zero := int64(0)
	if err := cs.CoreV1().Pods(ns).Delete(ctxT(t), "mover", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	await(t, ix, "10.244.3.2", "deleted pod gone", missing)
	await(t, ix, "fd00:10:244:3::2", "deleted pod gone (IPv6)", missing)
	if _, ok := ix.Get(KindPod, ns+"/mover"); ok {
		t.Error("deleted pod found by name")
	}
}

// TestKubeAsServiceAccount runs the index as quell's ServiceAccount with
// deploy/kubernetes/rbac.yaml: pods, services and nodes are allowed; the
// ReplicaSet watch is not (the role grants get and patch only), and Start
// says which cache did not sync.
func TestKubeAsServiceAccount(t *testing.T) {
	cs := admin(t)
	ns := namespace(t, cs)
	sa := clientFor(t, env.Config(saToken))
	ix := startIndex(t, sa, Options{})
	runPod(t, cs, podSpec(ns, "p", map[string]string{"app": "p"}, nil), "10.244.4.1")
	await(t, ix, "10.244.4.1", "pod as the ServiceAccount", isObject("pod", ns, "p"))

	rs := New(sa, Options{ReplicaSets: true, SyncTimeout: 1500 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); rs.Stop() }()
	err := rs.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "replicasets") {
		t.Fatalf("start with the ReplicaSet watch as the ServiceAccount: %v", err)
	}
	if rs.Synced() {
		t.Error("Synced after a failed start")
	}
	t.Logf("expected: %v", err)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func typesUID(s string) types.UID { return types.UID(s) }
