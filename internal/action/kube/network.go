package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/quell-ir/quell/internal/action"
)

// objectAction is an action whose whole effect is a set of objects quell
// owns: apply creates them, revert deletes them.
type objectAction struct {
	c       *Client
	name    string
	key     string
	targets []action.Target
	guard   func(ctx context.Context) error
	objs    []object
}

func (a *objectAction) Key() string              { return a.key }
func (a *objectAction) Targets() []action.Target { return a.targets }

func (a *objectAction) Check(ctx context.Context) (action.Before, error) {
	var b action.Before
	err := a.c.phase(ctx, a.name, "check", a.key, func(ctx context.Context) error {
		if a.guard != nil {
			if err := a.guard(ctx); err != nil {
				return err
			}
		}
		var err error
		b, err = a.c.checkObjects(ctx, a.key, a.objs)
		return err
	})
	return b, err
}

func (a *objectAction) Apply(ctx context.Context, eff action.Effect) error {
	return a.c.phase(ctx, a.name, "apply", a.key, func(ctx context.Context) error {
		return a.c.applyObjects(ctx, a.key, eff, a.objs)
	})
}

func (a *objectAction) Verify(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, a.name, "verify", a.key, func(ctx context.Context) error {
		return a.c.verifyObjects(ctx, a.key, a.objs)
	})
}

func (a *objectAction) Revert(ctx context.Context, _ action.Before) error {
	return a.c.phase(ctx, a.name, "revert", a.key, func(ctx context.Context) error {
		return a.c.revertObjects(ctx, a.key, a.objs)
	})
}

// splitFamilies sorts prefixes and splits them by address family.
func splitFamilies(ps []netip.Prefix) (v4, v6 []string) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4 = append(v4, p.String())
		} else {
			v6 = append(v6, p.String())
		}
	}
	sort.Strings(v4)
	sort.Strings(v6)
	return slices.Compact(v4), slices.Compact(v6)
}

func cidrKey(ps []netip.Prefix) string {
	v4, v6 := splitFamilies(ps)
	return strings.Join(append(v4, v6...), ",")
}

func selectorKey(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k, v := range sel {
		keys = append(keys, k+"="+v)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func cidrTargets(ps []netip.Prefix) []action.Target {
	var out []action.Target
	for _, p := range ps {
		out = append(out, action.Target{Kind: "cidr", Value: p.String()})
	}
	return out
}

// denyWholeFamily refuses a block of a whole address family: it would cut
// everything, the opposite of a targeted block.
func denyWholeFamily(ps []netip.Prefix) error {
	for _, p := range ps {
		if p.Bits() == 0 {
			return action.Deny("blocking %s would block every address", p)
		}
	}
	return nil
}

func matchLabelsSelector(sel map[string]string) map[string]any {
	if len(sel) == 0 {
		return map[string]any{}
	}
	return map[string]any{"matchLabels": toAny(sel)}
}

// newBlockCIDR builds kube.block_cidr: a NetworkPolicy whose rules allow
// everything except the blocked prefixes (ipBlock.except). NetworkPolicies
// only add allows, so this works where no other policy selecting the same
// pods allows the prefixes; Check refuses when one does.
func newBlockCIDR(c *Client, v action.Values) (action.Action, error) {
	ns, sel, cidrs, dir := v.String("namespace"), v.KeyValues("selector"), v.Prefixes("cidrs"), v.String("direction")
	key := fmt.Sprintf("kube.block_cidr/%s/%s/%s/%s", ns, selectorKey(sel), cidrKey(cidrs), dir)
	v4, v6 := splitFamilies(cidrs)
	peers := func() []any {
		p4 := map[string]any{"cidr": "0.0.0.0/0"}
		if len(v4) > 0 {
			p4["except"] = v4
		}
		p6 := map[string]any{"cidr": "::/0"}
		if len(v6) > 0 {
			p6["except"] = v6
		}
		// In-cluster peers are matched by selectors, not ipBlock, so keep
		// them allowed explicitly: the block targets external sources.
		return []any{map[string]any{"ipBlock": p4}, map[string]any{"ipBlock": p6},
			map[string]any{"namespaceSelector": map[string]any{}}}
	}
	spec := map[string]any{"podSelector": matchLabelsSelector(sel)}
	var types []any
	if dir == "ingress" || dir == "both" {
		types = append(types, "Ingress")
		spec["ingress"] = []any{map[string]any{"from": peers()}}
	}
	if dir == "egress" || dir == "both" {
		types = append(types, "Egress")
		spec["egress"] = []any{map[string]any{"to": peers()}}
	}
	spec["policyTypes"] = types
	obj := object{gvr: gvrNetworkPolicy, namespace: ns, apiVersion: "networking.k8s.io/v1",
		kind: "NetworkPolicy", name: objectName("quell-block", key), spec: spec}
	a := &objectAction{c: c, name: "kube.block_cidr", key: key, objs: []object{obj},
		targets: append(cidrTargets(cidrs), action.Target{Kind: "namespace", Value: ns})}
	a.guard = func(ctx context.Context) error {
		if err := denyWholeFamily(cidrs); err != nil {
			return err
		}
		// A NetworkPolicy changes the isolation mode of the pods it selects.
		return c.guardNamespace(ns)
	}
	return a, nil
}

// newCiliumBlock builds cilium.block_cidr: a CiliumNetworkPolicy (or, with
// no namespace, a CiliumClusterwideNetworkPolicy) with ingressDeny /
// egressDeny rules. enableDefaultDeny is off in both directions so that the
// policy only subtracts the blocked prefixes and never turns the selected
// endpoints default-deny.
func newCiliumBlock(c *Client, v action.Values) (action.Action, error) {
	ns, sel, cidrs, dir := v.String("namespace"), v.KeyValues("selector"), v.Prefixes("cidrs"), v.String("direction")
	key := fmt.Sprintf("cilium.block_cidr/%s/%s/%s/%s", ns, selectorKey(sel), cidrKey(cidrs), dir)
	v4, v6 := splitFamilies(cidrs)
	set := []any{}
	for _, p := range append(v4, v6...) {
		set = append(set, map[string]any{"cidr": p})
	}
	endpoint := matchLabelsSelector(sel)
	if ns == "" && len(c.cfg.ProtectedNamespaces) > 0 {
		// Cluster-wide: never touch the protected namespaces' endpoints.
		endpoint["matchExpressions"] = []any{map[string]any{"key": "k8s:io.kubernetes.pod.namespace",
			"operator": "NotIn", "values": c.cfg.ProtectedNamespaces}}
	}
	spec := map[string]any{
		"description":       "quell: block " + strings.Join(append(v4, v6...), ", "),
		"endpointSelector":  endpoint,
		"enableDefaultDeny": map[string]any{"ingress": false, "egress": false},
	}
	if dir == "ingress" || dir == "both" {
		spec["ingressDeny"] = []any{map[string]any{"fromCIDRSet": set}}
	}
	if dir == "egress" || dir == "both" {
		spec["egressDeny"] = []any{map[string]any{"toCIDRSet": set}}
	}
	obj := object{gvr: gvrCNP, namespace: ns, apiVersion: "cilium.io/v2", kind: "CiliumNetworkPolicy",
		name: objectName("quell-block", key), spec: spec}
	if ns == "" {
		obj.gvr, obj.kind = gvrCCNP, "CiliumClusterwideNetworkPolicy"
	}
	a := &objectAction{c: c, name: "cilium.block_cidr", key: key, objs: []object{obj}, targets: cidrTargets(cidrs)}
	a.guard = func(context.Context) error { return denyWholeFamily(cidrs) }
	return a, nil
}

// newIstioDeny builds istio.deny_source: an AuthorizationPolicy with action
// DENY matching the source by ip blocks, principals or namespaces. DENY
// policies are evaluated before ALLOW ones, so no other policy can undo it.
func newIstioDeny(c *Client, v action.Values) (action.Action, error) {
	ns, sel, cidrs := v.String("namespace"), v.KeyValues("selector"), v.Prefixes("cidrs")
	principals, err := listOf(v.String("principals"), identOK, "principals")
	if err != nil {
		return nil, err
	}
	namespaces, err := listOf(v.String("source_namespaces"), nameOK, "source_namespaces")
	if err != nil {
		return nil, err
	}
	if len(cidrs) == 0 && len(principals) == 0 && len(namespaces) == 0 {
		return nil, fmt.Errorf("parameter \"cidrs\": one of cidrs, principals or source_namespaces is required")
	}
	field := "ipBlocks"
	if v.String("source_field") == "remote_ip_blocks" {
		field = "remoteIpBlocks"
	}
	v4, v6 := splitFamilies(cidrs)
	source := map[string]any{}
	if len(cidrs) > 0 {
		source[field] = append(v4, v6...)
	}
	if len(principals) > 0 {
		source["principals"] = principals
	}
	if len(namespaces) > 0 {
		source["namespaces"] = namespaces
	}
	key := fmt.Sprintf("istio.deny_source/%s/%s/%s:%s/%s/%s", ns, selectorKey(sel), field, cidrKey(cidrs),
		strings.Join(principals, ","), strings.Join(namespaces, ","))
	spec := map[string]any{"action": "DENY",
		"rules": []any{map[string]any{"from": []any{map[string]any{"source": source}}}}}
	if len(sel) > 0 {
		spec["selector"] = map[string]any{"matchLabels": toAny(sel)}
	}
	obj := object{gvr: gvrIstioAuthz, namespace: ns, apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy",
		name: objectName("quell-deny", key), spec: spec}
	targets := cidrTargets(cidrs)
	for _, p := range principals {
		targets = append(targets, action.Target{Kind: "principal", Value: p})
	}
	a := &objectAction{c: c, name: "istio.deny_source", key: key, objs: []object{obj}, targets: targets}
	a.guard = func(context.Context) error { return denyWholeFamily(cidrs) }
	return a, nil
}

// newLinkerdDeny builds linkerd.deny. Linkerd authorizes by allow-list, so
// a deny is expressed as: a Server for the port, a NetworkAuthentication
// for every network except the blocked prefixes, and an
// AuthorizationPolicy that requires it.
func newLinkerdDeny(c *Client, v action.Values) (action.Action, error) {
	ns, sel, port, cidrs := v.String("namespace"), v.KeyValues("selector"), v.Port("port"), v.Prefixes("cidrs")
	key := fmt.Sprintf("linkerd.deny/%s/%s/%d/%s", ns, selectorKey(sel), port, cidrKey(cidrs))
	name := objectName("quell-deny", key)
	v4, v6 := splitFamilies(cidrs)
	n4 := map[string]any{"cidr": "0.0.0.0/0"}
	if len(v4) > 0 {
		n4["except"] = v4
	}
	n6 := map[string]any{"cidr": "::/0"}
	if len(v6) > 0 {
		n6["except"] = v6
	}
	objs := []object{
		{gvr: gvrLinkerdNetAuth, namespace: ns, apiVersion: "policy.linkerd.io/v1alpha1", kind: "NetworkAuthentication",
			name: name, spec: map[string]any{"networks": []any{n4, n6}}},
		{gvr: gvrLinkerdServer, namespace: ns, apiVersion: "policy.linkerd.io/v1beta3", kind: "Server",
			name: name, spec: map[string]any{"podSelector": matchLabelsSelector(sel), "port": int64(port)}},
		{gvr: gvrLinkerdAuthz, namespace: ns, apiVersion: "policy.linkerd.io/v1alpha1", kind: "AuthorizationPolicy",
			name: name, spec: map[string]any{
				"targetRef": map[string]any{"group": "policy.linkerd.io", "kind": "Server", "name": name},
				"requiredAuthenticationRefs": []any{map[string]any{"group": "policy.linkerd.io",
					"kind": "NetworkAuthentication", "name": name}}}},
	}
	a := &objectAction{c: c, name: "linkerd.deny", key: key, objs: objs,
		targets: append(cidrTargets(cidrs), action.Target{Kind: "namespace", Value: ns})}
	a.guard = func(ctx context.Context) error {
		if err := denyWholeFamily(cidrs); err != nil {
			return err
		}
		// A Server makes its port default-deny for everything not authorized.
		if err := c.guardNamespace(ns); err != nil {
			return err
		}
		// Linkerd refuses two Servers on one port of one pod, and another
		// Server's authorizations would keep allowing the blocked sources.
		l, err := c.dyn.Resource(gvrLinkerdServer).Namespace(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return classify("list linkerd servers in "+ns, err)
		}
		for _, s := range l.Items {
			if s.GetName() == name {
				continue
			}
			p, _, _ := unstructuredPort(s.Object)
			if p == fmt.Sprint(port) {
				return action.Deny("linkerd Server %s/%s already covers port %d: its authorizations would keep allowing the blocked sources", ns, s.GetName(), port)
			}
		}
		return nil
	}
	return a, nil
}

func unstructuredPort(obj map[string]any) (string, bool, error) {
	spec, _ := obj["spec"].(map[string]any)
	switch p := spec["port"].(type) {
	case int64:
		return fmt.Sprint(p), true, nil
	case float64:
		return fmt.Sprint(int64(p)), true, nil
	case string:
		return p, true, nil
	}
	return "", false, nil
}

func listOf(s string, ok func(string) bool, param string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		if !ok(part) {
			return nil, fmt.Errorf("parameter %q: invalid entry %q", param, part)
		}
		out = append(out, part)
	}
	sort.Strings(out)
	return slices.Compact(out), nil
}
