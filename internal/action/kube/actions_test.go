package kube

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	kubeenv "github.com/quell-ir/quell/internal/testenv/kube"
)

// TestObjectActions covers the actions whose effect is objects quell owns.
func TestObjectActions(t *testing.T) {
	kubeenv.Require(t, env)
	cs, dyn := admin(t)
	ctx := context.Background()
	ns := newNS(t, cs)
	c := testClient(t, nil)
	cases := []struct {
		action string
		params map[string]string
		gvr    schema.GroupVersionResource
		nsd    bool
		prefix string
		check  func(t *testing.T, spec map[string]any)
	}{
		{"kube.block_cidr", map[string]string{"namespace": ns, "cidrs": "203.0.113.7,2001:db8::/64", "direction": "both"},
			gvrNetworkPolicy, true, "quell-block", func(t *testing.T, s map[string]any) {
				ex, _, _ := unstructured.NestedSlice(s, "ingress")
				from := ex[0].(map[string]any)["from"].([]any)
				v4 := from[0].(map[string]any)["ipBlock"].(map[string]any)
				if v4["cidr"] != "0.0.0.0/0" || v4["except"].([]any)[0] != "203.0.113.7/32" {
					t.Fatalf("ipBlock %v", v4)
				}
			}},
		{"cilium.block_cidr", map[string]string{"namespace": ns, "cidrs": "198.51.100.0/24", "direction": "egress"},
			gvrCNP, true, "quell-block", func(t *testing.T, s map[string]any) {
				dd, _, _ := unstructured.NestedMap(s, "enableDefaultDeny")
				if dd["ingress"] != false || dd["egress"] != false {
					t.Fatalf("enableDefaultDeny %v", dd)
				}
				eg, _, _ := unstructured.NestedSlice(s, "egressDeny")
				if eg[0].(map[string]any)["toCIDRSet"].([]any)[0].(map[string]any)["cidr"] != "198.51.100.0/24" {
					t.Fatalf("egressDeny %v", eg)
				}
				if _, ok := s["ingressDeny"]; ok {
					t.Fatal("ingressDeny set for direction egress")
				}
			}},
		{"cilium.block_cidr", map[string]string{"cidrs": "192.0.2.1"}, gvrCCNP, false, "quell-block", func(t *testing.T, s map[string]any) {
			me, _, _ := unstructured.NestedSlice(s, "endpointSelector", "matchExpressions")
			if len(me) != 1 || me[0].(map[string]any)["operator"] != "NotIn" {
				t.Fatalf("clusterwide policy must exclude protected namespaces: %v", me)
			}
		}},
		{"istio.deny_source", map[string]string{"namespace": ns, "cidrs": "203.0.113.0/24", "principals": "cluster.local/ns/evil/sa/x"},
			gvrIstioAuthz, true, "quell-deny", func(t *testing.T, s map[string]any) {
				if s["action"] != "DENY" {
					t.Fatalf("action %v", s["action"])
				}
				r, _, _ := unstructured.NestedSlice(s, "rules")
				src := r[0].(map[string]any)["from"].([]any)[0].(map[string]any)["source"].(map[string]any)
				if src["ipBlocks"].([]any)[0] != "203.0.113.0/24" || src["principals"].([]any)[0] != "cluster.local/ns/evil/sa/x" {
					t.Fatalf("source %v", src)
				}
			}},
		{"linkerd.deny", map[string]string{"namespace": ns, "selector": "app=web", "port": "8080", "cidrs": "203.0.113.9"},
			gvrLinkerdAuthz, true, "quell-deny", func(t *testing.T, s map[string]any) {
				ref, _, _ := unstructured.NestedString(s, "targetRef", "kind")
				if ref != "Server" {
					t.Fatalf("targetRef %v", s)
				}
				na, err := dyn.Resource(gvrLinkerdNetAuth).Namespace(ns).List(ctx, metav1.ListOptions{})
				if err != nil || len(na.Items) != 1 {
					t.Fatalf("network authentications: %v %v", na, err)
				}
				nets, _, _ := unstructured.NestedSlice(na.Items[0].Object, "spec", "networks")
				if nets[0].(map[string]any)["except"].([]any)[0] != "203.0.113.9/32" {
					t.Fatalf("networks %v", nets)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.action, func(t *testing.T) {
			key := build(t, c, tc.action, tc.params).Key()
			name := objectName(tc.prefix, key)
			res := func() (*unstructured.Unstructured, error) {
				if tc.nsd {
					return dyn.Resource(tc.gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
				}
				return dyn.Resource(tc.gvr).Get(ctx, name, metav1.GetOptions{})
			}
			lifecycle(t, c, tc.action, tc.params, func(t *testing.T) {
				u, err := res()
				if err != nil {
					t.Fatal(err)
				}
				if u.GetLabels()[LabelManagedBy] != "quell" || u.GetLabels()[LabelIncident] != "inc-42" {
					t.Fatalf("labels %v", u.GetLabels())
				}
				spec, _, _ := unstructured.NestedMap(u.Object, "spec")
				tc.check(t, spec)
			}, func(t *testing.T) {
				if _, err := res(); !apierrors.IsNotFound(err) {
					t.Fatalf("object not deleted on revert: %v", err)
				}
			})
		})
	}
	_, err := build(t, c, "kube.block_cidr", map[string]string{"namespace": "kube-system", "cidrs": "203.0.113.1"}).Check(ctx)
	wantDenied(t, err, "protected")
	_, err = build(t, c, "cilium.block_cidr", map[string]string{"cidrs": "0.0.0.0/0"}).Check(ctx)
	wantDenied(t, err, "every address")
}

func TestDisableServiceAccount(t *testing.T) {
	kubeenv.Require(t, env)
	cs, _ := admin(t)
	ctx := context.Background()
	ns := newNS(t, cs)
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := rbacv1.Subject{Kind: "ServiceAccount", Name: "app", Namespace: ns}
	other := rbacv1.Subject{Kind: "User", Name: "alice", APIGroup: "rbac.authorization.k8s.io"}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "app-edit"},
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "edit"}, Subjects: []rbacv1.Subject{sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	crbName := "view-" + ns
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: crbName},
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"}, Subjects: []rbacv1.Subject{other, sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.RbacV1().ClusterRoleBindings().Delete(ctx, crbName, metav1.DeleteOptions{}) })
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-token",
		Annotations: map[string]string{"kubernetes.io/service-account.name": "app"}}, Type: corev1.SecretTypeServiceAccountToken}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := testClient(t, nil)
	subjects := func() ([]rbacv1.Subject, []rbacv1.Subject) {
		rb, err := cs.RbacV1().RoleBindings(ns).Get(ctx, "app-edit", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		crb, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, crbName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return rb.Subjects, crb.Subjects
	}
	lifecycle(t, c, "kube.disable_service_account", map[string]string{"namespace": ns, "name": "app"}, func(t *testing.T) {
		rb, crb := subjects()
		if len(rb) != 0 || len(crb) != 1 || crb[0] != other {
			t.Fatalf("subjects after disable: %v / %v", rb, crb)
		}
		if _, err := cs.CoreV1().Secrets(ns).Get(ctx, "app-token", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("token secret not deleted: %v", err)
		}
	}, func(t *testing.T) {
		rb, crb := subjects()
		if len(rb) != 1 || rb[0] != sa || len(crb) != 2 || !slices.Contains(crb, sa) || !slices.Contains(crb, other) {
			t.Fatalf("subjects after revert: %v / %v", rb, crb)
		}
	})
}

func TestCordonLabelScale(t *testing.T) {
	kubeenv.Require(t, env)
	cs, _ := admin(t)
	ctx := context.Background()
	ns := newNS(t, cs)
	node := "node-" + ns
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{}) })
	mkDeployment(t, cs, ns, "miner", 3, map[string]string{"app": "miner"})
	mkPod(t, cs, ns, "p", map[string]string{"app": "p", "tier": "old"}, nil)
	c := testClient(t, nil)

	t.Run("cordon", func(t *testing.T) {
		get := func() bool {
			n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return n.Spec.Unschedulable
		}
		lifecycle(t, c, "kube.cordon_node", map[string]string{"node": node},
			func(t *testing.T) {
				if !get() {
					t.Fatal("node schedulable")
				}
			}, func(t *testing.T) {
				if get() {
					t.Fatal("node still cordoned")
				}
			})
	})
	t.Run("label", func(t *testing.T) {
		get := func() map[string]string {
			p, _ := cs.CoreV1().Pods(ns).Get(ctx, "p", metav1.GetOptions{})
			return p.Labels
		}
		lifecycle(t, c, "kube.label", map[string]string{"kind": "pod", "namespace": ns, "name": "p", "labels": "tier=suspect,quell.io/flag=1"},
			func(t *testing.T) {
				if l := get(); l["tier"] != "suspect" || l["quell.io/flag"] != "1" {
					t.Fatalf("labels %v", l)
				}
			}, func(t *testing.T) {
				if l := get(); l["tier"] != "old" || l["quell.io/flag"] != "" || l["app"] != "p" {
					t.Fatalf("labels after revert %v", l)
				}
			})
	})
	t.Run("scale", func(t *testing.T) {
		params := map[string]string{"namespace": ns, "name": "miner"}
		_, err := build(t, c, "kube.scale_to_zero", params).Check(ctx)
		wantDenied(t, err, "min_healthy_replicas")
		c0 := testClient(t, func(c *Config) { c.MinHealthyReplicas = "0" })
		get := func() int32 {
			d, _ := cs.AppsV1().Deployments(ns).Get(ctx, "miner", metav1.GetOptions{})
			return *d.Spec.Replicas
		}
		lifecycle(t, c0, "kube.scale_to_zero", params,
			func(t *testing.T) {
				if get() != 0 {
					t.Fatal("not scaled")
				}
			}, func(t *testing.T) {
				if get() != 3 {
					t.Fatalf("replicas after revert %d", get())
				}
			})
	})
	t.Run("outside-rbac", func(t *testing.T) {
		// quell's ClusterRole grants no patch on namespaces.
		a := build(t, c, "kube.label", map[string]string{"kind": "namespace", "name": ns, "labels": "x=y"})
		_, err := a.Check(ctx)
		if err == nil || !strings.Contains(err.Error(), "forbidden: quell's Kubernetes identity lacks this permission") {
			t.Fatalf("want a clear RBAC error, got %v", err)
		}
	})
}

func TestCaptureAndDelete(t *testing.T) {
	kubeenv.Require(t, env)
	cs, _ := admin(t)
	ctx := context.Background()
	ns := newNS(t, cs)
	mkPod(t, cs, ns, "bad", map[string]string{"app": "bad"}, nil)
	ctrl := true
	owner := &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "u-1", Controller: &ctrl}
	only := mkPod(t, cs, ns, "only", map[string]string{"app": "rs"}, owner)
	setReady(t, cs, only)
	c := testClient(t, nil)

	t.Run("capture", func(t *testing.T) {
		a := build(t, c, "kube.capture_logs", map[string]string{"namespace": ns, "pod": "bad"})
		lifecycle(t, c, "kube.capture_logs", map[string]string{"namespace": ns, "pod": "bad"}, func(t *testing.T) {
			dir := a.(*captureLogs).Dir(actionEffect())
			b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), "pod.json") || !(strings.Contains(string(b), "logs/app") || strings.Contains(string(b), "logs-app.txt")) {
				t.Fatalf("manifest: %s", b)
			}
		}, nil)
	})
	t.Run("delete", func(t *testing.T) {
		_, err := build(t, c, "kube.delete_pod", map[string]string{"namespace": ns, "pod": "only"}).Check(ctx)
		wantDenied(t, err, "min_healthy_replicas")
		lifecycle(t, c, "kube.delete_pod", map[string]string{"namespace": ns, "pod": "bad"}, func(t *testing.T) {
			if _, err := cs.CoreV1().Pods(ns).Get(ctx, "bad", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("pod not deleted: %v", err)
			}
		}, nil)
	})
}
