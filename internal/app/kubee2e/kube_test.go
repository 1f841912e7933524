// Package kubee2e runs the whole quell engine against a real kube-apiserver
// (internal/testenv/kube), as quell's own ServiceAccount with the RBAC of
// deploy/kubernetes: an event naming a pod ends with the pod quarantined.
package kubee2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/quell-ir/quell/internal/action/kube"
	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/event"
	kubeenv "github.com/quell-ir/quell/internal/testenv/kube"
	"github.com/quell-ir/quell/internal/txn"
)

var env *kubeenv.Env

const saToken = "quell-sa-e2e-token-0123456789"

func TestMain(m *testing.M) {
	os.Exit(kubeenv.MainAsQuell(m, saToken, "../../../deploy/kubernetes/rbac.yaml", &env))
}

// kubeconfig writes a kubeconfig for rc, as an operator would give quell.
func kubeconfig(t testing.TB, rc *rest.Config) string {
	t.Helper()
	c := clientcmdapi.NewConfig()
	c.Clusters["test"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: rc.CAData, CertificateAuthority: rc.CAFile}
	c.AuthInfos["quell"] = &clientcmdapi.AuthInfo{Token: rc.BearerToken}
	c.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "quell"}
	c.CurrentContext = "test"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*c, p); err != nil {
		t.Fatal(err)
	}
	return p
}

const playbook = `apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: quarantine-shell}
spec:
  match: 'event.type == "execution" && has(event.kubernetes.pod)'
  mode: enforce
  steps:
    - action: kube.isolate_pod
      params: {namespace: '{{ .event.kubernetes.namespace }}', pod: '{{ .event.kubernetes.pod }}'}
      ttl: 1h
`

func startQuell(t testing.TB) *app.App {
	t.Helper()
	kubeenv.Require(t, env)
	dir := t.TempDir()
	pb := filepath.Join(dir, "pb.yaml")
	os.WriteFile(pb, []byte(playbook), 0o644)
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Server.Addr = "127.0.0.1:0"
	cfg.Mode, cfg.Engine.Mode = txn.ModeEnforce, txn.ModeEnforce
	cfg.Playbooks = []string{pb}
	cfg.Kubernetes.Enabled = true
	cfg.Kubernetes.Kubeconfig = kubeconfig(t, env.Config(saToken))
	a, err := app.New(context.Background(), cfg, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop(context.Background()) })
	return a
}

func makePods(t testing.TB, cs kubernetes.Interface, ns string, n int) {
	t.Helper()
	ctx := context.Background()
	cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	for i := 0; i < n; i++ {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: ns, Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}},
		}
		created, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// No kubelet here: give the pod the address one would have.
		ip := fmt.Sprintf("10.44.%d.%d", i/250, 1+i%250)
		created.Status.PodIP, created.Status.PodIPs, created.Status.Phase = ip, []corev1.PodIP{{IP: ip}}, corev1.PodRunning
		if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func post(t testing.TB, a *app.App, ns, pod string) string {
	t.Helper()
	ev := &event.Event{Source: "falco", Type: "execution", SeverityID: 5, Rule: "Terminal shell in container",
		Time: time.Now(), Kubernetes: &event.Kubernetes{Namespace: ns, Pod: pod}}
	if err := a.Committer.Prepare([]*event.Event{ev}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Committer.Append(context.Background(), []*event.Event{ev}); err != nil {
		t.Fatal(err)
	}
	return ev.ID
}

func settle(t testing.TB, a *app.App, eventID string) *txn.Transaction {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		ts, err := a.Store.ListTxns(ctx, txn.Filter{EventID: eventID})
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 1 {
			tr, err := a.Engine.WaitResting(ctx, ts[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			return tr
		}
		time.Sleep(2 * time.Millisecond) // the pipeline decides asynchronously
	}
	t.Fatalf("no transaction for event %s", eventID)
	return nil
}

func TestEventQuarantinesPodAndRevertRestores(t *testing.T) {
	a := startQuell(t)
	admin := kubernetes.NewForConfigOrDie(env.AdminConfig())
	makePods(t, admin, "shop", 1)
	ctx := context.Background()

	tr := settle(t, a, post(t, a, "shop", "web-0"))
	if tr.State != txn.Active {
		t.Fatalf("transaction %s: %s (%s %s)", tr.ID, tr.State, tr.Reason, tr.Error)
	}
	pod, err := admin.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Labels[kube.LabelQuarantine] == "" {
		t.Fatalf("pod not labelled for quarantine: %v", pod.Labels)
	}
	pols, err := admin.NetworkingV1().NetworkPolicies("shop").List(ctx, metav1.ListOptions{LabelSelector: kube.LabelManagedBy + "=quell"})
	if err != nil || len(pols.Items) != 1 {
		t.Fatalf("quarantine policies: %v %v", len(pols.Items), err)
	}
	// The live asset index gives the pod's address its Kubernetes context.
	if _, ok := a.KubeIndex.Lookup(ctx, mustAddr("10.44.0.1")); !ok {
		t.Fatal("the asset index does not know the pod's address")
	}

	if _, err := a.Engine.Revert(ctx, tr.ID, "e2e", "done"); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.Engine.Get(ctx, tr.ID); got.State != txn.Reverted {
		t.Fatalf("after revert: %s", got.State)
	}
	pod, _ = admin.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{})
	if _, ok := pod.Labels[kube.LabelQuarantine]; ok || pod.Labels["app"] != "web" {
		t.Fatalf("labels not restored: %v", pod.Labels)
	}
	b, _ := json.Marshal(pod.Labels)
	t.Logf("pod labels after revert: %s", b)
}

// BenchmarkEventToIsolation, for 100 pods one after another: from the
// event's commit to the isolation being in place on the API server (the pod
// carries the quarantine label its policy selects, seen through a watch:
// the "present" figures), and to the transaction active (after the
// post-check and the journal: the "active" figures).
func BenchmarkEventToIsolation(b *testing.B) {
	a := startQuell(b)
	admin := kubernetes.NewForConfigOrDie(env.AdminConfig())
	const n = 100
	makePods(b, admin, "bench", n)
	w, err := admin.CoreV1().Pods("bench").Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	labelled := make(chan string, n)
	go func() {
		seen := map[string]bool{}
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if ok && pod.Labels[kube.LabelQuarantine] != "" && !seen[pod.Name] {
				seen[pod.Name] = true
				labelled <- pod.Name
			}
		}
	}()
	var present, active []time.Duration
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		if it > 0 {
			b.Fatal("run with -benchtime 1x")
		}
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("web-%d", i)
			start := time.Now()
			id := post(b, a, "bench", name)
			select {
			case got := <-labelled:
				if got != name {
					b.Fatalf("isolated %s, want %s", got, name)
				}
				present = append(present, time.Since(start))
			case <-time.After(30 * time.Second):
				b.Fatalf("%s never isolated", name)
			}
			tr := settle(b, a, id)
			if tr.State != txn.Active {
				b.Fatalf("%s: %s %s", name, tr.State, tr.Reason)
			}
			active = append(active, time.Since(start))
		}
	}
	b.StopTimer()
	ms := func(d []time.Duration, p float64) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(ms(present, 0.5), "present-p50-ms")
	b.ReportMetric(ms(present, 0.99), "present-p99-ms")
	b.ReportMetric(ms(active, 0.5), "active-p50-ms")
	b.ReportMetric(ms(active, 0.99), "active-p99-ms")
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
