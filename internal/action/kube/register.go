package kube

import (
	"github.com/quell-ir/quell/internal/action"
)

func p(name string, t action.ParamType, req bool, desc string) action.Param {
	return action.Param{Name: name, Type: t, Required: req, Description: desc}
}

var workloadKinds = []string{"deployment", "statefulset", "daemonset", "replicaset"}

// Definitions returns the kube action definitions bound to c.
func Definitions(c *Client) []action.Definition {
	cidrParams := func(nsRequired bool) []action.Param {
		return []action.Param{
			p("namespace", action.TypeName, nsRequired, "namespace of the selected pods"),
			p("selector", action.TypeKeyValue, false, "pod labels k=v,...; empty selects every pod of the namespace"),
			p("cidrs", action.TypeCIDRList, true, "prefixes to block"),
			{Name: "direction", Type: action.TypeEnum, Enum: []string{"ingress", "egress", "both"}, Default: "both", Description: "traffic direction to block"},
		}
	}
	wrap := func(f func(*Client, action.Values) (action.Action, error)) action.Constructor {
		return func(v action.Values) (action.Action, error) { return f(c, v) }
	}
	allowNS := p("allow_namespace", action.TypeName, false, "forensics namespace still allowed to and from the pods (default: kubernetes.forensics_namespace)")
	return []action.Definition{
		{Spec: action.Spec{Name: "kube.isolate_pod", Provider: "kube", Reversible: true,
			Description: "Quarantine a pod: a deny-all NetworkPolicy selects a label quell adds; labels other policies select the pod by are saved and removed",
			Params:      []action.Param{p("namespace", action.TypeName, true, "pod namespace"), p("pod", action.TypeName, true, "pod name"), allowNS},
			Needs:       []string{"pods: get list watch patch", "networkpolicies.networking.k8s.io: get list watch patch delete"},
			Example:     "- action: kube.isolate_pod\n  params: {namespace: '{{ .event.kubernetes.namespace }}', pod: '{{ .event.kubernetes.pod }}'}\n  ttl: 4h\n"},
			New: wrap(newIsolatePod)},
		{Spec: action.Spec{Name: "kube.isolate_workload", Provider: "kube", Reversible: true,
			Description: "Quarantine every current pod of a workload behind its own deny-all NetworkPolicy",
			Params: []action.Param{p("namespace", action.TypeName, true, "namespace"),
				{Name: "kind", Type: action.TypeEnum, Enum: workloadKinds, Default: "deployment", Description: "workload kind"},
				p("name", action.TypeName, true, "workload name"), allowNS},
			Needs: []string{"deployments,statefulsets,daemonsets,replicasets.apps: get patch", "pods: get list watch patch",
				"networkpolicies.networking.k8s.io: get list watch patch delete"}},
			New: wrap(newIsolateWorkload)},
		{Spec: action.Spec{Name: "kube.block_cidr", Provider: "kube", Reversible: true,
			Description: "Block prefixes for a namespace's pods with a NetworkPolicy that allows everything except them (ipBlock.except)",
			Params:      cidrParams(true), Needs: []string{"networkpolicies.networking.k8s.io: get patch delete"}},
			New: wrap(newBlockCIDR)},
		{Spec: action.Spec{Name: "cilium.block_cidr", Provider: "cilium", Reversible: true,
			Description: "Block prefixes with a CiliumNetworkPolicy (clusterwide without namespace) using ingressDeny/egressDeny; never turns endpoints default-deny",
			Params:      cidrParams(false), Needs: []string{"ciliumnetworkpolicies,ciliumclusterwidenetworkpolicies.cilium.io: get patch delete"}},
			New: wrap(newCiliumBlock)},
		{Spec: action.Spec{Name: "istio.deny_source", Provider: "istio", Reversible: true,
			Description: "Deny a source with an Istio AuthorizationPolicy (action DENY) on ip blocks, principals or namespaces",
			Params: []action.Param{p("namespace", action.TypeName, true, "namespace (the Istio root namespace applies mesh-wide)"),
				p("selector", action.TypeKeyValue, false, "workload labels; empty applies to the namespace"),
				p("cidrs", action.TypeCIDRList, false, "source prefixes"),
				p("principals", action.TypeString, false, "comma-separated source principals (cluster.local/ns/x/sa/y)"),
				p("source_namespaces", action.TypeString, false, "comma-separated source namespaces"),
				{Name: "source_field", Type: action.TypeEnum, Enum: []string{"ip_blocks", "remote_ip_blocks"}, Default: "ip_blocks",
					Description: "match the peer address (ip_blocks) or the original client (remote_ip_blocks)"}},
			Needs: []string{"authorizationpolicies.security.istio.io: get patch delete"}},
			New: wrap(newIstioDeny)},
		{Spec: action.Spec{Name: "linkerd.deny", Provider: "linkerd", Reversible: true,
			Description: "Deny prefixes on a port with Linkerd policy: a Server, a NetworkAuthentication of every network except them, and an AuthorizationPolicy",
			Params: []action.Param{p("namespace", action.TypeName, true, "namespace"),
				p("selector", action.TypeKeyValue, true, "pod labels of the Server"),
				p("port", action.TypePort, true, "port"), p("cidrs", action.TypeCIDRList, true, "prefixes to deny")},
			Needs: []string{"servers,authorizationpolicies,networkauthentications.policy.linkerd.io: get list patch delete"}},
			New: wrap(newLinkerdDeny)},
		{Spec: action.Spec{Name: "kube.disable_service_account", Provider: "kube", Reversible: true,
			Description: "Remove a service account from every (Cluster)RoleBinding, delete its long-lived tokens, mark it; revert restores the bindings (not the tokens)",
			Params:      []action.Param{p("namespace", action.TypeName, true, "namespace"), p("name", action.TypeName, true, "service account")},
			Needs: []string{"serviceaccounts: get patch", "rolebindings,clusterrolebindings.rbac.authorization.k8s.io: list get update",
				"roles,clusterroles.rbac.authorization.k8s.io: bind", "secrets: list delete"}},
			New: wrap(newDisableSA)},
		{Spec: action.Spec{Name: "kube.cordon_node", Provider: "kube", Reversible: true,
			Description: "Mark a node unschedulable", Params: []action.Param{p("node", action.TypeName, true, "node name")},
			Needs: []string{"nodes: get patch"}},
			New: wrap(newCordon)},
		{Spec: action.Spec{Name: "kube.label", Provider: "kube", Reversible: true,
			Description: "Set labels on an object; revert restores the previous values",
			Params: []action.Param{{Name: "kind", Type: action.TypeEnum, Enum: []string{"pod", "node", "namespace", "deployment", "statefulset", "daemonset"}, Required: true, Description: "object kind"},
				p("namespace", action.TypeName, false, "namespace (namespaced kinds)"), p("name", action.TypeName, true, "object name"),
				p("labels", action.TypeKeyValue, true, "labels k=v,...")},
			Needs: []string{"pods,nodes,deployments,statefulsets,daemonsets: get patch"}},
			New: wrap(newLabel)},
		{Spec: action.Spec{Name: "kube.scale_to_zero", Provider: "kube", Reversible: true,
			Description: "Scale a workload down (to zero by default), remembering its replicas; refused below kubernetes.min_healthy_replicas",
			Params: []action.Param{p("namespace", action.TypeName, true, "namespace"),
				{Name: "kind", Type: action.TypeEnum, Enum: []string{"deployment", "statefulset", "replicaset"}, Default: "deployment", Description: "workload kind"},
				p("name", action.TypeName, true, "workload name"),
				{Name: "replicas", Type: action.TypeInt, Default: "0", Min: 0, Max: 100000, Description: "target replicas"}},
			Needs: []string{"deployments,statefulsets,replicasets.apps: get patch", "deployments/scale,statefulsets/scale,replicasets/scale.apps: get patch"}},
			New: wrap(newScale)},
		{Spec: action.Spec{Name: "kube.capture_logs", Provider: "kube", Reversible: false,
			Description: "Save a pod's spec, events and logs (with SHA-256 manifest) to the evidence directory",
			Params: []action.Param{p("namespace", action.TypeName, true, "namespace"), p("pod", action.TypeName, true, "pod"),
				p("container", action.TypeName, false, "one container (default: all)"),
				{Name: "tail_lines", Type: action.TypeInt, Default: "10000", Min: 1, Max: 1000000, Description: "lines per container"}},
			Needs: []string{"pods: get", "pods/log: get", "events: list"}},
			New: wrap(newCapture)},
		{Spec: action.Spec{Name: "kube.delete_pod", Provider: "kube", Eradication: true, Reversible: false,
			Description: "Delete a pod (eradication); refused below kubernetes.min_healthy_replicas for controller-owned pods",
			Params: []action.Param{p("namespace", action.TypeName, true, "namespace"), p("pod", action.TypeName, true, "pod"),
				{Name: "grace_period_seconds", Type: action.TypeInt, Default: "-1", Min: -1, Max: 3600, Description: "grace period; -1 uses the pod's"}},
			Needs: []string{"pods: get list delete"}},
			New: wrap(newDeletePod)},
	}
}

// Register adds every kube action, bound to c, to reg.
func Register(reg *action.Registry, c *Client) error {
	for _, d := range Definitions(c) {
		if err := reg.Register(d); err != nil {
			return err
		}
	}
	return nil
}
