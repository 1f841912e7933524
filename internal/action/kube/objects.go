package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/quell-ir/quell/internal/action"
)

var (
	gvrNetworkPolicy  = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
	gvrCNP            = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	gvrCCNP           = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
	gvrIstioAuthz     = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	gvrLinkerdServer  = schema.GroupVersionResource{Group: "policy.linkerd.io", Version: "v1beta3", Resource: "servers"}
	gvrLinkerdAuthz   = schema.GroupVersionResource{Group: "policy.linkerd.io", Version: "v1alpha1", Resource: "authorizationpolicies"}
	gvrLinkerdNetAuth = schema.GroupVersionResource{Group: "policy.linkerd.io", Version: "v1alpha1", Resource: "networkauthentications"}
)

// object is one object an action owns outright: created by server-side
// apply under a name derived from the key, deleted on revert.
type object struct {
	gvr                    schema.GroupVersionResource
	namespace              string // empty: cluster-scoped
	apiVersion, kind, name string
	spec                   map[string]any
}

func (o object) String() string {
	if o.namespace == "" {
		return o.kind + " " + o.name
	}
	return o.kind + " " + o.namespace + "/" + o.name
}

func (c *Client) resource(o object) dynamic.ResourceInterface {
	if o.namespace == "" {
		return c.dyn.Resource(o.gvr)
	}
	return c.dyn.Resource(o.gvr).Namespace(o.namespace)
}

func (o object) unstructured(key string, eff action.Effect) *unstructured.Unstructured {
	meta := map[string]any{"name": o.name, "labels": toAny(managedLabels(eff.IncidentID)),
		"annotations": map[string]any{AnnotationKey: key}}
	if eff.TxnID != "" {
		meta["annotations"].(map[string]any)[AnnotationTxn] = eff.TxnID
	}
	if o.namespace != "" {
		meta["namespace"] = o.namespace
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": o.apiVersion, "kind": o.kind, "metadata": meta, "spec": o.spec}}
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// objectsBefore records, per object, whether it existed before Check and
// was not quell's (it would then be kept on revert). Names are derived
// from the key, so in practice nothing does.
type objectsBefore struct {
	Foreign []string `json:"foreign,omitempty"`
}

// checkObjects refuses to take over an object of the same name that quell
// did not create for this key.
func (c *Client) checkObjects(ctx context.Context, key string, objs []object) (action.Before, error) {
	var b objectsBefore
	for _, o := range objs {
		u, err := c.resource(o).Get(ctx, o.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, classify("get "+o.String(), err)
		}
		if u.GetAnnotations()[AnnotationKey] != key {
			return nil, action.Deny("%s exists and was not created by quell for %s", o, key)
		}
	}
	return json.Marshal(b)
}

// applyObjects dry-runs, then server-side applies, each object.
func (c *Client) applyObjects(ctx context.Context, key string, eff action.Effect, objs []object) error {
	for _, o := range objs {
		data, err := json.Marshal(o.unstructured(key, eff).Object)
		if err != nil {
			return err
		}
		if c.cfg.DryRun {
			if _, err := c.resource(o).Patch(ctx, o.name, types.ApplyPatchType, data, metav1.PatchOptions{
				FieldManager: FieldManager, Force: ptr(true), DryRun: []string{metav1.DryRunAll}}); err != nil {
				return classify("dry-run apply "+o.String(), err)
			}
		}
		// Force: the object is quell's by name; a conflict means someone
		// edited it, and containment must win over that edit.
		if _, err := c.resource(o).Patch(ctx, o.name, types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager: FieldManager, Force: ptr(true)}); err != nil {
			return classify("apply "+o.String(), err)
		}
	}
	return nil
}

// verifyObjects reads every object back and compares its spec.
func (c *Client) verifyObjects(ctx context.Context, key string, objs []object) error {
	for _, o := range objs {
		u, err := c.resource(o).Get(ctx, o.name, metav1.GetOptions{})
		if err != nil {
			return classify("verify "+o.String(), err)
		}
		if u.GetAnnotations()[AnnotationKey] != key {
			return fmt.Errorf("verify %s: not quell's object for %s", o, key)
		}
		live, _, _ := unstructured.NestedFieldNoCopy(u.Object, "spec")
		if !subset(normalize(o.spec), live) {
			return fmt.Errorf("verify %s: live spec differs from the applied one", o)
		}
	}
	return nil
}

// revertObjects deletes the objects quell created for key.
func (c *Client) revertObjects(ctx context.Context, key string, objs []object) error {
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		u, err := c.resource(o).Get(ctx, o.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return classify("revert: get "+o.String(), err)
		}
		if u.GetAnnotations()[AnnotationKey] != key {
			continue // not ours: never delete what quell did not create
		}
		uid := u.GetUID()
		err = c.resource(o).Delete(ctx, o.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return classify("revert: delete "+o.String(), err)
		}
	}
	return nil
}

// normalize round-trips a spec through JSON so that typed values ([]string,
// int) compare with what the dynamic client decodes ([]any, int64).
func normalize(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// subset reports whether every field of want is present with the same
// value in got; server defaulting may add fields, never change ours.
func subset(want, got any) bool {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return len(w) == 0 && got == nil
		}
		for k, wv := range w {
			if !subset(wv, g[k]) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok {
			return len(w) == 0 && got == nil
		}
		if len(g) != len(w) {
			return false
		}
		for i := range w {
			if !subset(w[i], g[i]) {
				return false
			}
		}
		return true
	case float64:
		switch g := got.(type) {
		case int64:
			return float64(g) == w
		case float64:
			return g == w
		}
		return false
	default:
		return reflect.DeepEqual(want, got)
	}
}

func ptr[T any](v T) *T { return &v }
