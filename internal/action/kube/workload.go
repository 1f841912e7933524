package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/quell-ir/quell/internal/action"
)

type workloadRef struct{ ns, kind, name string }

func (w workloadRef) String() string { return w.kind + " " + w.ns + "/" + w.name }

type workloadInfo struct {
	labels, annotations map[string]string
	selector            labels.Selector
	replicas            int
}

func (c *Client) getWorkload(ctx context.Context, w workloadRef) (workloadInfo, error) {
	var (
		meta     metav1.ObjectMeta
		sel      *metav1.LabelSelector
		tmpl     map[string]string
		replicas *int32
		err      error
	)
	apps := c.cs.AppsV1()
	switch w.kind {
	case "deployment":
		o, e := apps.Deployments(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		if err = e; e == nil {
			meta, sel, tmpl, replicas = o.ObjectMeta, o.Spec.Selector, o.Spec.Template.Labels, o.Spec.Replicas
		}
	case "statefulset":
		o, e := apps.StatefulSets(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		if err = e; e == nil {
			meta, sel, tmpl, replicas = o.ObjectMeta, o.Spec.Selector, o.Spec.Template.Labels, o.Spec.Replicas
		}
	case "replicaset":
		o, e := apps.ReplicaSets(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		if err = e; e == nil {
			meta, sel, tmpl, replicas = o.ObjectMeta, o.Spec.Selector, o.Spec.Template.Labels, o.Spec.Replicas
		}
	case "daemonset":
		o, e := apps.DaemonSets(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		if err = e; e == nil {
			meta, sel, tmpl = o.ObjectMeta, o.Spec.Selector, o.Spec.Template.Labels
		}
	default:
		return workloadInfo{}, fmt.Errorf("unsupported workload kind %q", w.kind)
	}
	if err != nil {
		return workloadInfo{}, classify("get "+w.String(), err)
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return workloadInfo{}, fmt.Errorf("%s: selector: %w", w, err)
	}
	if s.Empty() {
		return workloadInfo{}, action.Deny("%s has an empty selector (it would match every pod)", w)
	}
	all := map[string]string{}
	for k, v := range tmpl {
		all[k] = v
	}
	for k, v := range meta.Labels {
		all[k] = v
	}
	info := workloadInfo{labels: all, annotations: meta.Annotations, selector: s, replicas: 1}
	if replicas != nil {
		info.replicas = int(*replicas)
	}
	return info, nil
}

// annotateWorkload sets (or, with value "", removes) one annotation.
func (c *Client) annotateWorkload(ctx context.Context, w workloadRef, key, value string) error {
	var v any = value
	if value == "" {
		v = nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{key: v}}})
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	apps := c.cs.AppsV1()
	var err error
	switch w.kind {
	case "deployment":
		_, err = apps.Deployments(w.ns).Patch(ctx, w.name, types.MergePatchType, patch, opts)
	case "statefulset":
		_, err = apps.StatefulSets(w.ns).Patch(ctx, w.name, types.MergePatchType, patch, opts)
	case "replicaset":
		_, err = apps.ReplicaSets(w.ns).Patch(ctx, w.name, types.MergePatchType, patch, opts)
	case "daemonset":
		_, err = apps.DaemonSets(w.ns).Patch(ctx, w.name, types.MergePatchType, patch, opts)
	}
	if apierrors.IsNotFound(err) && value == "" {
		return nil
	}
	return classify("annotate "+w.String(), err)
}

// scaleAction is kube.scale_to_zero: scale a workload down (to zero by
// default), remembering the replicas to restore.
type scaleAction struct {
	c        *Client
	w        workloadRef
	key      string
	replicas int
	annot    string
}

type scaleBefore struct {
	Replicas int `json:"replicas"`
}

func newScale(c *Client, v action.Values) (action.Action, error) {
	w := workloadRef{ns: v.String("namespace"), kind: v.String("kind"), name: v.String("name")}
	key := "kube.scale_to_zero/" + w.ns + "/" + w.kind + "/" + w.name
	return &scaleAction{c: c, w: w, key: key, replicas: v.Int("replicas"),
		annot: beforeAnnotation("kube.scale_to_zero", key)}, nil
}

func (a *scaleAction) Key() string { return a.key }
func (a *scaleAction) Targets() []action.Target {
	return []action.Target{{Kind: "workload", Value: a.w.ns + "/" + a.w.kind + "/" + a.w.name}}
}

func (a *scaleAction) getScale(ctx context.Context) (*autoscalingv1.Scale, error) {
	var s *autoscalingv1.Scale
	var err error
	switch a.w.kind {
	case "deployment":
		s, err = a.c.cs.AppsV1().Deployments(a.w.ns).GetScale(ctx, a.w.name, metav1.GetOptions{})
	case "statefulset":
		s, err = a.c.cs.AppsV1().StatefulSets(a.w.ns).GetScale(ctx, a.w.name, metav1.GetOptions{})
	case "replicaset":
		s, err = a.c.cs.AppsV1().ReplicaSets(a.w.ns).GetScale(ctx, a.w.name, metav1.GetOptions{})
	default:
		return nil, fmt.Errorf("kind %q cannot be scaled", a.w.kind)
	}
	return s, classify("get scale of "+a.w.String(), err)
}

func (a *scaleAction) setScale(ctx context.Context, n int, dryRun bool) error {
	patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, n))
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var err error
	switch a.w.kind {
	case "deployment":
		_, err = a.c.cs.AppsV1().Deployments(a.w.ns).Patch(ctx, a.w.name, types.MergePatchType, patch, opts, "scale")
	case "statefulset":
		_, err = a.c.cs.AppsV1().StatefulSets(a.w.ns).Patch(ctx, a.w.name, types.MergePatchType, patch, opts, "scale")
	case "replicaset":
		_, err = a.c.cs.AppsV1().ReplicaSets(a.w.ns).Patch(ctx, a.w.name, types.MergePatchType, patch, opts, "scale")
	}
	return classify(fmt.Sprintf("scale %s to %d", a.w, n), err)
}

func (a *scaleAction) Check(ctx context.Context) (action.Before, error) {
	var out action.Before
	err := a.c.phase(ctx, "kube.scale_to_zero", "check", a.key, func(ctx context.Context) error {
		if err := a.c.guardNamespace(a.w.ns); err != nil {
			return err
		}
		info, err := a.c.getWorkload(ctx, a.w)
		if err != nil {
			return err
		}
		if err := a.c.guardLabels(a.w.String(), info.labels); err != nil {
			return err
		}
		if saved, ok := info.annotations[a.annot]; ok {
			n, err := strconv.Atoi(saved)
			if err != nil {
				return fmt.Errorf("%s: bad %s annotation %q", a.w, a.annot, saved)
			}
			out, _ = json.Marshal(scaleBefore{Replicas: n})
			return nil
		}
		if a.replicas < info.replicas {
			if err := a.c.guardMinHealthy(a.w.String(), info.replicas, a.replicas); err != nil {
				return err
			}
		}
		out, _ = json.Marshal(scaleBefore{Replicas: info.replicas})
		return nil
	})
	return out, err
}

func (a *scaleAction) Apply(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.scale_to_zero", "apply", a.key, func(ctx context.Context) error {
		bj, err := a.Check(ctx)
		if err != nil {
			return err
		}
		var b scaleBefore
		if err := json.Unmarshal(bj, &b); err != nil {
			return err
		}
		if a.c.cfg.DryRun {
			if err := a.setScale(ctx, a.replicas, true); err != nil {
				return err
			}
		}
		// Remember the replicas on the object before changing them.
		if err := a.c.annotateWorkload(ctx, a.w, a.annot, strconv.Itoa(b.Replicas)); err != nil {
			return err
		}
		return a.setScale(ctx, a.replicas, false)
	})
}

func (a *scaleAction) Verify(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.scale_to_zero", "verify", a.key, func(ctx context.Context) error {
		s, err := a.getScale(ctx)
		if err != nil {
			return err
		}
		if int(s.Spec.Replicas) != a.replicas {
			return fmt.Errorf("verify %s: replicas %d, want %d", a.w, s.Spec.Replicas, a.replicas)
		}
		return nil
	})
}

func (a *scaleAction) Revert(ctx context.Context, before action.Before) error {
	return a.c.phase(ctx, "kube.scale_to_zero", "revert", a.key, func(ctx context.Context) error {
		var b scaleBefore
		if err := json.Unmarshal(before, &b); err != nil {
			return fmt.Errorf("revert %s: bad before: %w", a.key, err)
		}
		if err := a.setScale(ctx, b.Replicas, false); err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}
		return a.c.annotateWorkload(ctx, a.w, a.annot, "")
	})
}

// deletePod is kube.delete_pod, an eradication step: it cannot be undone,
// so policy requires approval; the pod's spec is kept in the Before.
type deletePod struct {
	c       *Client
	ns, pod string
	key     string
	grace   int
}

func newDeletePod(c *Client, v action.Values) (action.Action, error) {
	ns, pod := v.String("namespace"), v.String("pod")
	return &deletePod{c: c, ns: ns, pod: pod, key: "kube.delete_pod/" + ns + "/" + pod,
		grace: v.Int("grace_period_seconds")}, nil
}

type deleteBefore struct {
	UID  types.UID       `json:"uid"`
	Pod  json.RawMessage `json:"pod,omitempty"`
	Gone bool            `json:"gone,omitempty"`
}

func (a *deletePod) Key() string { return a.key }
func (a *deletePod) Targets() []action.Target {
	return []action.Target{{Kind: "pod", Value: a.ns + "/" + a.pod}}
}

func (a *deletePod) Check(ctx context.Context) (action.Before, error) {
	var out action.Before
	err := a.c.phase(ctx, "kube.delete_pod", "check", a.key, func(ctx context.Context) error {
		if err := a.c.guardNamespace(a.ns); err != nil {
			return err
		}
		p, err := a.c.cs.CoreV1().Pods(a.ns).Get(ctx, a.pod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			out, _ = json.Marshal(deleteBefore{Gone: true})
			return nil
		}
		if err != nil {
			return classify("get pod "+a.ns+"/"+a.pod, err)
		}
		if err := a.c.guardLabels("pod "+a.ns+"/"+a.pod, p.Labels); err != nil {
			return err
		}
		if err := a.guardReplicas(ctx, p); err != nil {
			return err
		}
		p.ManagedFields = nil
		pj, _ := json.Marshal(p)
		out, _ = json.Marshal(deleteBefore{UID: p.UID, Pod: pj})
		return nil
	})
	return out, err
}

// guardReplicas applies min_healthy_replicas to a pod that a controller
// owns; a bare pod (often the attacker's own) has no replicas to keep.
func (a *deletePod) guardReplicas(ctx context.Context, p *corev1.Pod) error {
	ready, desired, owner, err := a.c.readySiblings(ctx, p)
	if err != nil || owner == "" {
		return err
	}
	remaining := ready
	if podReady(p) {
		remaining--
	}
	return a.c.guardMinHealthy(owner+" (deleting pod "+p.Name+")", desired, remaining)
}

func (a *deletePod) Apply(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.delete_pod", "apply", a.key, func(ctx context.Context) error {
		bj, err := a.Check(ctx)
		if err != nil {
			return err
		}
		var b deleteBefore
		_ = json.Unmarshal(bj, &b)
		if b.Gone {
			return nil
		}
		opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &b.UID}}
		if a.grace >= 0 {
			opts.GracePeriodSeconds = ptr(int64(a.grace))
		}
		if a.c.cfg.DryRun {
			dry := opts
			dry.DryRun = []string{metav1.DryRunAll}
			if err := a.c.cs.CoreV1().Pods(a.ns).Delete(ctx, a.pod, dry); err != nil && !apierrors.IsNotFound(err) {
				return classify("dry-run delete pod "+a.ns+"/"+a.pod, err)
			}
		}
		err = a.c.cs.CoreV1().Pods(a.ns).Delete(ctx, a.pod, opts)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return classify("delete pod "+a.ns+"/"+a.pod, err)
	})
}

func (a *deletePod) Verify(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.delete_pod", "verify", a.key, func(ctx context.Context) error {
		p, err := a.c.cs.CoreV1().Pods(a.ns).Get(ctx, a.pod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return classify("verify pod "+a.ns+"/"+a.pod, err)
		}
		if p.DeletionTimestamp != nil {
			return nil // terminating: the kubelet finishes it
		}
		return fmt.Errorf("verify: pod %s/%s still exists and is not terminating", a.ns, a.pod)
	})
}

// Revert cannot bring a deleted pod back; it says so, and the transaction
// record keeps the pod's spec.
func (a *deletePod) Revert(context.Context, action.Before) error {
	return fmt.Errorf("revert %s: kube.delete_pod is an eradication step and cannot be undone; the pod's spec is in the transaction's before", a.key)
}
