# METADATA
# title: Kubernetes preparation checks (manifests)
# description: |
#   Every workload must be selected by a NetworkPolicy of its namespace in
#   the same input set, so that quell's isolation policies have a baseline
#   to tighten and lateral movement is not open by default.
package quell.check.kubernetes

workload_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob", "Pod"}

objects contains o if {
	some doc in input.documents
	doc.kind == "kubernetes"
	o := {"file": doc.file, "obj": doc.content}
}

namespace(obj) := object.get(obj.metadata, "namespace", "default")

pod_labels(obj) := object.get(obj.metadata, "labels", {}) if obj.kind == "Pod"

pod_labels(obj) := object.get(obj, ["spec", "jobTemplate", "spec", "template", "metadata", "labels"], {}) if obj.kind == "CronJob"

pod_labels(obj) := object.get(obj, ["spec", "template", "metadata", "labels"], {}) if not obj.kind in {"Pod", "CronJob"}

workloads contains w if {
	some o in objects
	o.obj.kind in workload_kinds
	w := {
		"file": o.file,
		"kind": o.obj.kind,
		"name": o.obj.metadata.name,
		"namespace": namespace(o.obj),
		"labels": pod_labels(o.obj),
	}
}

network_policies contains p if {
	some o in objects
	o.obj.kind == "NetworkPolicy"
	p := {"namespace": namespace(o.obj), "selector": object.get(o.obj, ["spec", "podSelector"], {})}
}

# A label selector as Kubernetes evaluates it; the empty selector selects
# every pod of the namespace.
selects(sel, labels) if {
	every k, v in object.get(sel, "matchLabels", {}) {
		labels[k] == v
	}
	every e in object.get(sel, "matchExpressions", []) {
		expression_matches(e, labels)
	}
}

expression_matches(e, labels) if {
	e.operator == "In"
	labels[e.key] in e.values
}

expression_matches(e, labels) if {
	e.operator == "NotIn"
	not labels[e.key] in e.values
}

expression_matches(e, labels) if {
	e.operator == "Exists"
	_ = labels[e.key]
}

expression_matches(e, labels) if {
	e.operator == "DoesNotExist"
	not has_key(labels, e.key)
}

has_key(obj, k) if _ = obj[k]

covered(w) if {
	some p in network_policies
	p.namespace == w.namespace
	selects(p.selector, w.labels)
}

deny contains v if {
	some w in workloads
	not covered(w)
	v := {
		"file": w.file,
		"resource": sprintf("%s %s/%s", [w.kind, w.namespace, w.name]),
		"msg": sprintf("%s %s/%s: no NetworkPolicy in namespace %s selects its pods (labels %v)", [w.kind, w.namespace, w.name, w.namespace, w.labels]),
	}
}
