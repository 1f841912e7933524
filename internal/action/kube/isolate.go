package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/quell-ir/quell/internal/action"
)

// podBefore is what isolating one pod changed: the labels removed because
// other NetworkPolicies selected the pod through them (policies are
// additive, so an allow-policy that still selected the pod would punch
// holes in the quarantine). It is also kept in an annotation on the pod.
type podBefore struct {
	Name    string            `json:"name"`
	UID     types.UID         `json:"uid"`
	Removed map[string]string `json:"removed,omitempty"`
}

type isolateBefore struct {
	Namespace string      `json:"namespace"`
	Variant   string      `json:"variant"`
	Pods      []podBefore `json:"pods"`
	Workload  string      `json:"workload,omitempty"`
}

// isolation is the shared machinery of kube.isolate_pod and
// kube.isolate_workload.
type isolation struct {
	c        *Client
	name     string
	key      string
	ns       string
	allowNS  string
	variant  string // value of the quarantine label, selects the policy
	policy   string // NetworkPolicy name
	targets  []action.Target
	annot    string
	workload *workloadRef // nil for a single pod
	pod      string
}

func (a *isolation) Key() string              { return a.key }
func (a *isolation) Targets() []action.Target { return a.targets }

func newIsolatePod(c *Client, v action.Values) (action.Action, error) {
	ns, pod := v.String("namespace"), v.String("pod")
	allow := v.String("allow_namespace")
	if allow == "" {
		allow = c.cfg.ForensicsNamespace
	}
	key := "kube.isolate_pod/" + ns + "/" + pod
	// Single pods share one quarantine policy per namespace and forensics
	// namespace, so a mass incident costs one write per pod, not three.
	variant := "deny-all"
	if allow != "" {
		variant = "allow-" + hashKey(allow, 8)
	}
	return &isolation{c: c, name: "kube.isolate_pod", key: key, ns: ns, allowNS: allow, pod: pod,
		variant: variant, policy: "quell-quarantine-" + variant,
		annot:   beforeAnnotation("kube.isolate_pod", key),
		targets: []action.Target{{Kind: "pod", Value: ns + "/" + pod}}}, nil
}

func newIsolateWorkload(c *Client, v action.Values) (action.Action, error) {
	ns, kind, name := v.String("namespace"), v.String("kind"), v.String("name")
	allow := v.String("allow_namespace")
	if allow == "" {
		allow = c.cfg.ForensicsNamespace
	}
	key := "kube.isolate_workload/" + ns + "/" + kind + "/" + name
	variant := "w-" + hashKey(key+"/"+allow, 12)
	return &isolation{c: c, name: "kube.isolate_workload", key: key, ns: ns, allowNS: allow,
		variant: variant, policy: objectName("quell-quarantine", key),
		workload: &workloadRef{ns: ns, kind: kind, name: name},
		annot:    beforeAnnotation("kube.isolate_workload", key),
		targets:  []action.Target{{Kind: "workload", Value: ns + "/" + kind + "/" + name}}}, nil
}

func (a *isolation) policyObject() object {
	spec := map[string]any{
		"podSelector": map[string]any{"matchLabels": map[string]any{LabelQuarantine: a.variant}},
		"policyTypes": []any{"Ingress", "Egress"},
	}
	if a.allowNS != "" {
		peer := []any{map[string]any{"namespaceSelector": map[string]any{
			"matchLabels": map[string]any{"kubernetes.io/metadata.name": a.allowNS}}}}
		spec["ingress"] = []any{map[string]any{"from": peer}}
		spec["egress"] = []any{map[string]any{"to": peer}}
	}
	return object{gvr: gvrNetworkPolicy, namespace: a.ns, apiVersion: "networking.k8s.io/v1",
		kind: "NetworkPolicy", name: a.policy, spec: spec}
}

// policyKey is what the policy object is annotated with: the shared
// per-namespace policy belongs to no single transaction.
func (a *isolation) policyKey() string {
	if a.workload == nil {
		return "kube.isolate_pod/" + a.ns + "/" + a.variant
	}
	return a.key
}

// selectingLabels returns the labels of pod through which a non-quell
// policy selects it, and the policies that would select it even without
// them (empty selectors, NotIn/DoesNotExist), which make quarantine
// impossible with NetworkPolicies alone.
func selectingLabels(pod *corev1.Pod, pols []*networkingv1.NetworkPolicy) (map[string]string, []string) {
	removed := map[string]string{}
	for _, p := range pols {
		if p.Labels[LabelManagedBy] == ManagedByQuell {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		for k := range p.Spec.PodSelector.MatchLabels {
			removed[k] = pod.Labels[k]
		}
		for _, e := range p.Spec.PodSelector.MatchExpressions {
			if v, ok := pod.Labels[e.Key]; ok && (e.Operator == metav1.LabelSelectorOpIn || e.Operator == metav1.LabelSelectorOpExists) {
				removed[e.Key] = v
			}
		}
	}
	rest := labels.Set(maps.Clone(pod.Labels))
	for k := range removed {
		delete(rest, k)
	}
	var blocking []string
	for _, p := range pols {
		if p.Labels[LabelManagedBy] == ManagedByQuell {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err == nil && sel.Matches(rest) {
			blocking = append(blocking, p.Name)
		}
	}
	sort.Strings(blocking)
	return removed, blocking
}

func (a *isolation) targetPods(ctx context.Context) ([]*corev1.Pod, string, error) {
	if a.workload == nil {
		p, err := a.c.getPod(ctx, a.ns, a.pod)
		if err != nil {
			return nil, "", err
		}
		return []*corev1.Pod{p}, "", nil
	}
	w, err := a.c.getWorkload(ctx, *a.workload)
	if err != nil {
		return nil, "", err
	}
	if err := a.c.guardLabels(a.workload.String(), w.labels); err != nil {
		return nil, "", err
	}
	pods, err := a.c.listPods(ctx, a.ns, w.selector)
	if err != nil {
		return nil, "", err
	}
	if err := a.c.guardSelectorSize(a.workload.String(), len(pods)); err != nil {
		return nil, "", err
	}
	// Deterministic order: the Before must be the same however often it is
	// computed (Check, Apply, recovery).
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods, w.annotations[a.annot], nil
}

func (a *isolation) Check(ctx context.Context) (action.Before, error) {
	var out action.Before
	err := a.c.phase(ctx, a.name, "check", a.key, func(ctx context.Context) error {
		if err := a.c.guardNamespace(a.ns); err != nil {
			return err
		}
		pods, saved, err := a.targetPods(ctx)
		if err != nil {
			return err
		}
		if a.workload == nil {
			saved = pods[0].Annotations[a.annot]
		}
		if saved != "" {
			// Already applied (a recovered transaction): what Apply saved on
			// the object is the state to restore.
			out = action.Before(saved)
			return nil
		}
		pols, err := a.c.listNetworkPolicies(ctx, a.ns)
		if err != nil {
			return err
		}
		b := isolateBefore{Namespace: a.ns, Variant: a.variant}
		if a.workload != nil {
			b.Workload = a.workload.String()
		}
		for _, p := range pods {
			if err := a.c.guardLabels("pod "+p.Namespace+"/"+p.Name, p.Labels); err != nil {
				return err
			}
			if v, ok := p.Labels[LabelQuarantine]; ok && v != a.variant {
				return action.Deny("pod %s/%s is already quarantined (%s=%s)", p.Namespace, p.Name, LabelQuarantine, v)
			}
			removed, blocking := selectingLabels(p, pols)
			if len(blocking) > 0 {
				return action.Deny("pod %s/%s cannot be quarantined with NetworkPolicies: %v select it regardless of its labels (use cilium.block_cidr or fix the policies)",
					p.Namespace, p.Name, blocking)
			}
			b.Pods = append(b.Pods, podBefore{Name: p.Name, UID: p.UID, Removed: removed})
		}
		out, err = json.Marshal(b)
		return err
	})
	return out, err
}

// ensurePolicy applies the quarantine policy unless the watch cache already
// shows it; concurrent isolations in one namespace share one apply.
func (a *isolation) ensurePolicy(ctx context.Context, eff action.Effect) error {
	obj := a.policyObject()
	if _, nl := a.c.listers(); nl != nil {
		if p, err := nl.NetworkPolicies(a.ns).Get(a.policy); err == nil && p.Annotations[AnnotationKey] == a.policyKey() {
			return nil
		}
	}
	_, err, _ := a.c.ensureSF.Do(a.ns+"/"+a.policy, func() (any, error) {
		if a.workload == nil {
			eff = action.Effect{} // shared: no single incident owns it
		}
		return nil, a.c.applyObjects(ctx, a.policyKey(), eff, []object{obj})
	})
	return err
}

func (a *isolation) Apply(ctx context.Context, eff action.Effect) error {
	return a.c.phase(ctx, a.name, "apply", a.key, func(ctx context.Context) error {
		bj, b, err := a.loadBefore(ctx)
		if err != nil {
			return err
		}
		if a.workload != nil {
			// Save the plan on the workload first so a crash mid-way leaves
			// what recovery needs to finish or undo it.
			if err := a.c.annotateWorkload(ctx, *a.workload, a.annot, string(bj)); err != nil {
				return err
			}
		}
		if err := a.ensurePolicy(ctx, eff); err != nil {
			return err
		}
		for _, pb := range b.Pods {
			if err := a.quarantinePod(ctx, pb, bj, eff); err != nil {
				return err
			}
		}
		return nil
	})
}

// loadBefore recomputes the Before; Apply must not depend on the caller
// passing it back, since the interface does not.
func (a *isolation) loadBefore(ctx context.Context) ([]byte, isolateBefore, error) {
	var b isolateBefore
	bj, err := a.Check(ctx)
	if err != nil {
		return nil, b, err
	}
	return bj, b, json.Unmarshal(bj, &b)
}

func (a *isolation) quarantinePod(ctx context.Context, pb podBefore, bj []byte, eff action.Effect) error {
	p, err := a.c.getPod(ctx, a.ns, pb.Name)
	if apierrors.IsNotFound(err) || (err == nil && p.UID != pb.UID) {
		return nil // gone or replaced: nothing left to isolate
	}
	if err != nil {
		return err
	}
	if p.Labels[LabelQuarantine] == a.variant && p.Annotations[a.annot] != "" {
		return nil // done already
	}
	lbl := map[string]any{LabelQuarantine: a.variant}
	for k := range pb.Removed {
		lbl[k] = nil
	}
	ann := map[string]any{}
	if a.workload == nil {
		ann[a.annot] = string(bj)
	} else {
		ann[a.annot] = "isolated by " + a.key
	}
	if v := labelValue(eff.IncidentID); v != "" {
		ann[LabelIncident] = v
	}
	// resourceVersion makes the patch conditional: a concurrent label
	// change turns into a Conflict (retryable) instead of a lost update.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": p.ResourceVersion, "uid": string(pb.UID), "labels": lbl, "annotations": ann}})
	_, err = a.c.cs.CoreV1().Pods(a.ns).Patch(ctx, pb.Name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return classify("quarantine pod "+a.ns+"/"+pb.Name, err)
}

func (a *isolation) Verify(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, a.name, "verify", a.key, func(ctx context.Context) error {
		bj, err := a.Check(ctx)
		if err != nil {
			return err
		}
		var b isolateBefore
		if err := json.Unmarshal(bj, &b); err != nil {
			return err
		}
		if err := a.c.verifyObjects(ctx, a.policyKey(), []object{a.policyObject()}); err != nil {
			return err
		}
		pols, err := a.c.listNetworkPolicies(ctx, a.ns)
		if err != nil {
			return err
		}
		for _, pb := range b.Pods {
			if err := a.verifyPod(ctx, pb, pols); err != nil {
				return err
			}
		}
		return nil
	})
}

// verifyPod waits briefly for the watch cache to show the change, then
// asks the API server, which is the authority.
func (a *isolation) verifyPod(ctx context.Context, pb podBefore, pols []*networkingv1.NetworkPolicy) error {
	check := func(p *corev1.Pod) error {
		if p.UID != pb.UID {
			return nil // replaced: the isolated pod is gone
		}
		if p.Labels[LabelQuarantine] != a.variant {
			return fmt.Errorf("pod %s/%s lacks %s=%s", a.ns, p.Name, LabelQuarantine, a.variant)
		}
		for k := range pb.Removed {
			if _, ok := p.Labels[k]; ok {
				return fmt.Errorf("pod %s/%s still has label %s that another policy selects", a.ns, p.Name, k)
			}
		}
		if _, blocking := selectingLabels(p, pols); len(blocking) > 0 {
			return fmt.Errorf("pod %s/%s is still selected by NetworkPolicies %v", a.ns, p.Name, blocking)
		}
		return nil
	}
	if pl, _ := a.c.listers(); pl != nil {
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if p, err := pl.Pods(a.ns).Get(pb.Name); err == nil && check(p) == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	p, err := a.c.cs.CoreV1().Pods(a.ns).Get(ctx, pb.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return classify("verify pod "+a.ns+"/"+pb.Name, err)
	}
	return check(p)
}

func (a *isolation) Revert(ctx context.Context, before action.Before) error {
	return a.c.phase(ctx, a.name, "revert", a.key, func(ctx context.Context) error {
		var b isolateBefore
		if err := json.Unmarshal(before, &b); err != nil {
			return fmt.Errorf("revert %s: bad before: %w", a.key, err)
		}
		for _, pb := range b.Pods {
			p, err := a.c.cs.CoreV1().Pods(a.ns).Get(ctx, pb.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return classify("revert: get pod "+a.ns+"/"+pb.Name, err)
			}
			if p.UID != pb.UID {
				continue
			}
			lbl := map[string]any{}
			for k, v := range pb.Removed {
				lbl[k] = v
			}
			if p.Labels[LabelQuarantine] == a.variant {
				lbl[LabelQuarantine] = nil
			}
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
				"resourceVersion": p.ResourceVersion, "labels": lbl,
				"annotations": map[string]any{a.annot: nil, LabelIncident: nil}}})
			if _, err := a.c.cs.CoreV1().Pods(a.ns).Patch(ctx, pb.Name, types.MergePatchType, patch,
				metav1.PatchOptions{FieldManager: FieldManager}); err != nil && !apierrors.IsNotFound(err) {
				return classify("revert: restore pod "+a.ns+"/"+pb.Name, err)
			}
		}
		if a.workload != nil {
			if err := a.c.revertObjects(ctx, a.policyKey(), []object{a.policyObject()}); err != nil {
				return err
			}
			return a.c.annotateWorkload(ctx, *a.workload, a.annot, "")
		}
		// The shared policy goes when no pod in the namespace uses it any
		// more; until then it selects only quarantined pods.
		l, err := a.c.cs.CoreV1().Pods(a.ns).List(ctx, metav1.ListOptions{
			LabelSelector: LabelQuarantine + "=" + a.variant, Limit: 1})
		if err != nil {
			return classify("revert: list quarantined pods in "+a.ns, err)
		}
		if len(l.Items) == 0 {
			return a.c.revertObjects(ctx, a.policyKey(), []object{a.policyObject()})
		}
		return nil
	})
}
