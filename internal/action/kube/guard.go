package kube

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/quell-ir/quell/internal/action"
)

// guardNamespace refuses protected namespaces.
func (c *Client) guardNamespace(ns string) error {
	if slices.Contains(c.cfg.ProtectedNamespaces, ns) {
		return action.Deny("namespace %s is protected (kubernetes.protected_namespaces)", ns)
	}
	return nil
}

// guardLabels refuses an object whose labels match a protected selector.
func (c *Client) guardLabels(what string, l map[string]string) error {
	set := labels.Set(l)
	for i, sel := range c.protected {
		if !sel.Empty() && sel.Matches(set) {
			return action.Deny("%s is protected: its labels match %q (kubernetes.protected_labels[%d])",
				what, c.cfg.ProtectedLabels[i], i)
		}
	}
	return nil
}

func (c *Client) guardObject(what, ns string, l map[string]string) error {
	if ns != "" {
		if err := c.guardNamespace(ns); err != nil {
			return err
		}
	}
	return c.guardLabels(what, l)
}

// guardSelectorSize refuses a selector that matches more pods than allowed:
// the seed's outage was a selector that matched a whole namespace.
func (c *Client) guardSelectorSize(what string, n int) error {
	if n > c.cfg.MaxPodsPerSelector {
		return action.Deny("%s matches %d pods, more than kubernetes.max_pods_per_selector (%d)",
			what, n, c.cfg.MaxPodsPerSelector)
	}
	return nil
}

// guardMinHealthy refuses leaving fewer than the minimum healthy replicas.
func (c *Client) guardMinHealthy(what string, desired, remaining int) error {
	if min := c.minHealth.of(desired); remaining < min {
		return action.Deny("%s would keep %d healthy replicas, fewer than kubernetes.min_healthy_replicas %q (= %d of %d)",
			what, remaining, c.cfg.MinHealthyReplicas, min, desired)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// controllerOf returns the controlling owner of a pod, if any.
func controllerOf(p *corev1.Pod) (kind, name string, ok bool) {
	for _, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			return o.Kind, o.Name, true
		}
	}
	return "", "", false
}

// readySiblings counts the ready pods controlled by the same owner as p
// (p included) and returns the owner's desired replicas when known.
func (c *Client) readySiblings(ctx context.Context, p *corev1.Pod) (ready, desired int, owner string, err error) {
	kind, name, ok := controllerOf(p)
	if !ok {
		return 0, 0, "", nil
	}
	owner = kind + "/" + name
	pods, err := c.listPods(ctx, p.Namespace, labels.Everything())
	if err != nil {
		return 0, 0, owner, err
	}
	for _, q := range pods {
		if k, n, ok := controllerOf(q); ok && k == kind && n == name {
			desired++
			if podReady(q) {
				ready++
			}
		}
	}
	return ready, desired, owner, nil
}

func errf(format string, a ...any) error { return fmt.Errorf(format, a...) }
