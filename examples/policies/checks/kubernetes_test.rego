package quell.check.kubernetes_test

import data.quell.check.kubernetes as k8s

docs(objs) := {"documents": [d |
	some i, o in objs
	d := {"file": "m.yaml", "index": i, "kind": "kubernetes", "content": o}
]}

deploy(ns, name, labels) := {
	"apiVersion": "apps/v1", "kind": "Deployment",
	"metadata": {"name": name, "namespace": ns},
	"spec": {"template": {"metadata": {"labels": labels}}},
}

netpol(ns, selector) := {
	"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
	"metadata": {"name": "np", "namespace": ns},
	"spec": {"podSelector": selector},
}

violations(objs) := {v.resource | some v in k8s.deny with input as docs(objs)}

test_workload_without_policy if {
	violations([deploy("shop", "web", {"app": "web"})]) == {"Deployment shop/web"}
}

test_empty_selector_covers_namespace if {
	count(violations([deploy("shop", "web", {"app": "web"}), netpol("shop", {})])) == 0
}

test_policy_in_other_namespace_does_not_cover if {
	violations([deploy("shop", "web", {"app": "web"}), netpol("other", {})]) == {"Deployment shop/web"}
}

test_match_labels if {
	count(violations([deploy("s", "w", {"app": "web", "tier": "fe"}), netpol("s", {"matchLabels": {"app": "web"}})])) == 0
	violations([deploy("s", "w", {"app": "web"}), netpol("s", {"matchLabels": {"app": "api"}})]) == {"Deployment s/w"}
}

test_match_expressions if {
	w := deploy("s", "w", {"app": "web", "tier": "fe"})
	count(violations([w, netpol("s", {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]})])) == 0
	count(violations([w, netpol("s", {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["be"]}]})])) == 0
	count(violations([w, netpol("s", {"matchExpressions": [{"key": "app", "operator": "Exists"}]})])) == 0
	count(violations([w, netpol("s", {"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]})])) == 0
	count(violations([w, netpol("s", {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})])) == 1
	count(violations([w, netpol("s", {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["be"]}]})])) == 1
}

test_pod_and_cronjob_labels if {
	pod := {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"run": "p"}}}
	cj := {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "default"}, "spec": {"jobTemplate": {"spec": {"template": {"metadata": {"labels": {"app": "c"}}}}}}}
	violations([pod, cj]) == {"Pod default/p", "CronJob default/c"}
	violations([pod, cj, netpol("default", {"matchLabels": {"app": "c"}})]) == {"Pod default/p"}
}

test_non_workloads_ignored if {
	cm := {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
	count(violations([cm])) == 0
}
