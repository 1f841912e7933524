package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/quell-ir/quell/internal/action"
)

// cordonNode is kube.cordon_node: mark a node unschedulable.
type cordonNode struct {
	c     *Client
	node  string
	key   string
	annot string
}

type cordonBefore struct {
	Unschedulable bool `json:"unschedulable"`
}

func newCordon(c *Client, v action.Values) (action.Action, error) {
	n := v.String("node")
	key := "kube.cordon_node/" + n
	return &cordonNode{c: c, node: n, key: key, annot: beforeAnnotation("kube.cordon_node", key)}, nil
}

func (a *cordonNode) Key() string              { return a.key }
func (a *cordonNode) Targets() []action.Target { return []action.Target{{Kind: "node", Value: a.node}} }

func (a *cordonNode) Check(ctx context.Context) (action.Before, error) {
	var out action.Before
	err := a.c.phase(ctx, "kube.cordon_node", "check", a.key, func(ctx context.Context) error {
		n, err := a.c.cs.CoreV1().Nodes().Get(ctx, a.node, metav1.GetOptions{})
		if err != nil {
			return classify("get node "+a.node, err)
		}
		if err := a.c.guardLabels("node "+a.node, n.Labels); err != nil {
			return err
		}
		if saved, ok := n.Annotations[a.annot]; ok {
			out = action.Before(saved)
			return nil
		}
		out, _ = json.Marshal(cordonBefore{Unschedulable: n.Spec.Unschedulable})
		return nil
	})
	return out, err
}

func (a *cordonNode) patch(ctx context.Context, unschedulable bool, annot any, dry bool) error {
	p, _ := json.Marshal(map[string]any{"spec": map[string]any{"unschedulable": unschedulable},
		"metadata": map[string]any{"annotations": map[string]any{a.annot: annot}}})
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	if dry {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err := a.c.cs.CoreV1().Nodes().Patch(ctx, a.node, types.MergePatchType, p, opts)
	return classify("patch node "+a.node, err)
}

func (a *cordonNode) Apply(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.cordon_node", "apply", a.key, func(ctx context.Context) error {
		b, err := a.Check(ctx)
		if err != nil {
			return err
		}
		if a.c.cfg.DryRun {
			if err := a.patch(ctx, true, string(b), true); err != nil {
				return err
			}
		}
		// One patch: the saved state and the change land together.
		return a.patch(ctx, true, string(b), false)
	})
}

func (a *cordonNode) Verify(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.cordon_node", "verify", a.key, func(ctx context.Context) error {
		n, err := a.c.cs.CoreV1().Nodes().Get(ctx, a.node, metav1.GetOptions{})
		if err != nil {
			return classify("verify node "+a.node, err)
		}
		if !n.Spec.Unschedulable {
			return fmt.Errorf("verify: node %s is schedulable", a.node)
		}
		return nil
	})
}

func (a *cordonNode) Revert(ctx context.Context, before action.Before) error {
	return a.c.phase(ctx, "kube.cordon_node", "revert", a.key, func(ctx context.Context) error {
		var b cordonBefore
		if err := json.Unmarshal(before, &b); err != nil {
			return fmt.Errorf("revert %s: bad before: %w", a.key, err)
		}
		err := a.patch(ctx, b.Unschedulable, nil, false)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// labelAction is kube.label: set labels on an object (e.g. to mark it for
// other controllers), restoring the previous values on revert.
type labelAction struct {
	c        *Client
	kind     string
	ns, name string
	labels   map[string]string
	key      string
	annot    string
}

// labelBefore maps each label key to its previous value; nil: was absent.
type labelBefore struct {
	Previous map[string]*string `json:"previous"`
}

var labelKinds = map[string]schema.GroupVersionResource{
	"pod":         {Version: "v1", Resource: "pods"},
	"node":        {Version: "v1", Resource: "nodes"},
	"namespace":   {Version: "v1", Resource: "namespaces"},
	"deployment":  {Group: "apps", Version: "v1", Resource: "deployments"},
	"statefulset": {Group: "apps", Version: "v1", Resource: "statefulsets"},
	"daemonset":   {Group: "apps", Version: "v1", Resource: "daemonsets"},
}

func newLabel(c *Client, v action.Values) (action.Action, error) {
	kind, ns, name, l := v.String("kind"), v.String("namespace"), v.String("name"), v.KeyValues("labels")
	if kind == "node" || kind == "namespace" {
		ns = ""
	} else if ns == "" {
		return nil, fmt.Errorf("parameter \"namespace\": required for kind %s", kind)
	}
	if len(l) == 0 {
		return nil, fmt.Errorf("parameter \"labels\": required")
	}
	key := fmt.Sprintf("kube.label/%s/%s/%s/%s", kind, ns, name, selectorKey(l))
	return &labelAction{c: c, kind: kind, ns: ns, name: name, labels: l, key: key,
		annot: beforeAnnotation("kube.label", key)}, nil
}

func (a *labelAction) Key() string { return a.key }
func (a *labelAction) Targets() []action.Target {
	v := a.name
	if a.ns != "" {
		v = a.ns + "/" + a.name
	}
	return []action.Target{{Kind: a.kind, Value: v}}
}

func (a *labelAction) res() interface {
	Get(context.Context, string, metav1.GetOptions, ...string) (*unstructured.Unstructured, error)
	Patch(context.Context, string, types.PatchType, []byte, metav1.PatchOptions, ...string) (*unstructured.Unstructured, error)
} {
	if a.ns == "" {
		return a.c.dyn.Resource(labelKinds[a.kind])
	}
	return a.c.dyn.Resource(labelKinds[a.kind]).Namespace(a.ns)
}

func (a *labelAction) what() string { return a.kind + " " + a.Targets()[0].Value }

func (a *labelAction) Check(ctx context.Context) (action.Before, error) {
	var out action.Before
	err := a.c.phase(ctx, "kube.label", "check", a.key, func(ctx context.Context) error {
		if a.kind == "namespace" {
			if err := a.c.guardNamespace(a.name); err != nil {
				return err
			}
		} else if a.ns != "" {
			if err := a.c.guardNamespace(a.ns); err != nil {
				return err
			}
		}
		u, err := a.res().Get(ctx, a.name, metav1.GetOptions{})
		if err != nil {
			return classify("get "+a.what(), err)
		}
		if err := a.c.guardLabels(a.what(), u.GetLabels()); err != nil {
			return err
		}
		if saved, ok := u.GetAnnotations()[a.annot]; ok {
			out = action.Before(saved)
			return nil
		}
		b := labelBefore{Previous: map[string]*string{}}
		cur := u.GetLabels()
		for k := range a.labels {
			if v, ok := cur[k]; ok {
				b.Previous[k] = ptr(v)
			} else {
				b.Previous[k] = nil
			}
		}
		out, err = json.Marshal(b)
		return err
	})
	return out, err
}

func (a *labelAction) patch(ctx context.Context, lbl map[string]any, annot any, dry bool) error {
	p, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": lbl,
		"annotations": map[string]any{a.annot: annot}}})
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	if dry {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err := a.res().Patch(ctx, a.name, types.MergePatchType, p, opts)
	return classify("label "+a.what(), err)
}

func (a *labelAction) Apply(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.label", "apply", a.key, func(ctx context.Context) error {
		b, err := a.Check(ctx)
		if err != nil {
			return err
		}
		lbl := toAny(a.labels)
		if a.c.cfg.DryRun {
			if err := a.patch(ctx, lbl, string(b), true); err != nil {
				return err
			}
		}
		return a.patch(ctx, lbl, string(b), false)
	})
}

func (a *labelAction) Verify(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.label", "verify", a.key, func(ctx context.Context) error {
		u, err := a.res().Get(ctx, a.name, metav1.GetOptions{})
		if err != nil {
			return classify("verify "+a.what(), err)
		}
		keys := make([]string, 0, len(a.labels))
		for k := range a.labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if got := u.GetLabels()[k]; got != a.labels[k] {
				return fmt.Errorf("verify %s: label %s=%q, want %q", a.what(), k, got, a.labels[k])
			}
		}
		return nil
	})
}

func (a *labelAction) Revert(ctx context.Context, before action.Before) error {
	return a.c.phase(ctx, "kube.label", "revert", a.key, func(ctx context.Context) error {
		var b labelBefore
		if err := json.Unmarshal(before, &b); err != nil {
			return fmt.Errorf("revert %s: bad before: %w", a.key, err)
		}
		lbl := map[string]any{}
		for k, v := range b.Previous {
			if v == nil {
				lbl[k] = nil
			} else {
				lbl[k] = *v
			}
		}
		err := a.patch(ctx, lbl, nil, false)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}
