package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/quell-ir/quell/internal/action"
)

// disableSA is kube.disable_service_account: remove the account from every
// RoleBinding and ClusterRoleBinding (saved for revert), delete its
// long-lived token secrets (recorded, deliberately never restored: a token
// that may have leaked must stay dead) and mark the account.
type disableSA struct {
	c        *Client
	ns, name string
	key      string
	annot    string
}

// boundSubject is one removed binding subject.
type boundSubject struct {
	Kind      string         `json:"kind"` // RoleBinding or ClusterRoleBinding
	Namespace string         `json:"namespace,omitempty"`
	Name      string         `json:"name"`
	Subject   rbacv1.Subject `json:"subject"`
}

type saBefore struct {
	Bindings      []boundSubject `json:"bindings"`
	DeletedTokens []string       `json:"deleted_tokens,omitempty"`
}

func newDisableSA(c *Client, v action.Values) (action.Action, error) {
	ns, name := v.String("namespace"), v.String("name")
	key := "kube.disable_service_account/" + ns + "/" + name
	return &disableSA{c: c, ns: ns, name: name, key: key,
		annot: beforeAnnotation("kube.disable_service_account", key)}, nil
}

func (a *disableSA) Key() string { return a.key }
func (a *disableSA) Targets() []action.Target {
	return []action.Target{{Kind: "service_account", Value: a.ns + "/" + a.name}}
}

func (a *disableSA) matches(s rbacv1.Subject, bindingNS string) bool {
	switch s.Kind {
	case rbacv1.ServiceAccountKind:
		ns := s.Namespace
		if ns == "" {
			ns = bindingNS
		}
		return s.Name == a.name && ns == a.ns
	case rbacv1.UserKind:
		return s.Name == "system:serviceaccount:"+a.ns+":"+a.name
	}
	return false
}

// scan lists the bindings that still name the account.
func (a *disableSA) scan(ctx context.Context) ([]boundSubject, error) {
	var out []boundSubject
	rbs, err := a.c.cs.RbacV1().RoleBindings("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, classify("list rolebindings", err)
	}
	for _, b := range rbs.Items {
		for _, s := range b.Subjects {
			if a.matches(s, b.Namespace) {
				out = append(out, boundSubject{Kind: "RoleBinding", Namespace: b.Namespace, Name: b.Name, Subject: s})
			}
		}
	}
	crbs, err := a.c.cs.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, classify("list clusterrolebindings", err)
	}
	for _, b := range crbs.Items {
		for _, s := range b.Subjects {
			if a.matches(s, "") {
				out = append(out, boundSubject{Kind: "ClusterRoleBinding", Name: b.Name, Subject: s})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Kind+out[i].Namespace+out[i].Name < out[j].Kind+out[j].Namespace+out[j].Name
	})
	return out, nil
}

func (a *disableSA) Check(ctx context.Context) (action.Before, error) {
	var out action.Before
	err := a.c.phase(ctx, "kube.disable_service_account", "check", a.key, func(ctx context.Context) error {
		if err := a.c.guardNamespace(a.ns); err != nil {
			return err
		}
		sa, err := a.c.cs.CoreV1().ServiceAccounts(a.ns).Get(ctx, a.name, metav1.GetOptions{})
		if err != nil {
			return classify("get serviceaccount "+a.ns+"/"+a.name, err)
		}
		if err := a.c.guardLabels("serviceaccount "+a.ns+"/"+a.name, sa.Labels); err != nil {
			return err
		}
		if saved, ok := sa.Annotations[a.annot]; ok {
			out = action.Before(saved)
			return nil
		}
		bs, err := a.scan(ctx)
		if err != nil {
			return err
		}
		tokens, err := a.tokens(ctx)
		if err != nil {
			return err
		}
		out, err = json.Marshal(saBefore{Bindings: bs, DeletedTokens: tokens})
		return err
	})
	return out, err
}

func (a *disableSA) annotate(ctx context.Context, v any) error {
	p, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{a.annot: v}}})
	_, err := a.c.cs.CoreV1().ServiceAccounts(a.ns).Patch(ctx, a.name, types.MergePatchType, p,
		metav1.PatchOptions{FieldManager: FieldManager})
	return classify("annotate serviceaccount "+a.ns+"/"+a.name, err)
}

// editSubjects rewrites one binding's subjects with an optimistic lock
// (resourceVersion), so a concurrent edit becomes a retryable Conflict.
func (a *disableSA) editSubjects(ctx context.Context, b boundSubject, edit func([]rbacv1.Subject) []rbacv1.Subject, dry bool) error {
	opts := metav1.UpdateOptions{FieldManager: FieldManager}
	if dry {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if b.Kind == "RoleBinding" {
		rb, err := a.c.cs.RbacV1().RoleBindings(b.Namespace).Get(ctx, b.Name, metav1.GetOptions{})
		if err != nil {
			return classify("get rolebinding "+b.Namespace+"/"+b.Name, err)
		}
		rb.Subjects = edit(rb.Subjects)
		_, err = a.c.cs.RbacV1().RoleBindings(b.Namespace).Update(ctx, rb, opts)
		return classify("update rolebinding "+b.Namespace+"/"+b.Name, err)
	}
	crb, err := a.c.cs.RbacV1().ClusterRoleBindings().Get(ctx, b.Name, metav1.GetOptions{})
	if err != nil {
		return classify("get clusterrolebinding "+b.Name, err)
	}
	crb.Subjects = edit(crb.Subjects)
	_, err = a.c.cs.RbacV1().ClusterRoleBindings().Update(ctx, crb, opts)
	return classify("update clusterrolebinding "+b.Name, err)
}

func (a *disableSA) Apply(ctx context.Context, eff action.Effect) error {
	return a.c.phase(ctx, "kube.disable_service_account", "apply", a.key, func(ctx context.Context) error {
		bj, err := a.Check(ctx)
		if err != nil {
			return err
		}
		var b saBefore
		if err := json.Unmarshal(bj, &b); err != nil {
			return err
		}
		tokens, err := a.tokens(ctx)
		if err != nil {
			return err
		}
		b.DeletedTokens = mergeSorted(b.DeletedTokens, tokens)
		bj, _ = json.Marshal(b)
		if err := a.annotate(ctx, string(bj)); err != nil {
			return err
		}
		remove := func(subs []rbacv1.Subject, bindingNS string) []rbacv1.Subject {
			return slices.DeleteFunc(subs, func(s rbacv1.Subject) bool { return a.matches(s, bindingNS) })
		}
		for _, bs := range b.Bindings {
			bindingNS := bs.Namespace
			edit := func(subs []rbacv1.Subject) []rbacv1.Subject { return remove(subs, bindingNS) }
			if a.c.cfg.DryRun {
				if err := a.editSubjects(ctx, bs, edit, true); err != nil && !apierrors.IsNotFound(err) {
					return err
				}
			}
			if err := a.editSubjects(ctx, bs, edit, false); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
		for _, t := range tokens {
			err := a.c.cs.CoreV1().Secrets(a.ns).Delete(ctx, t, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return classify("delete token secret "+a.ns+"/"+t, err)
			}
		}
		return nil
	})
}

func mergeSorted(a, b []string) []string {
	out := append(append([]string{}, a...), b...)
	sort.Strings(out)
	return slices.Compact(out)
}

func (a *disableSA) Verify(ctx context.Context, _ action.Effect) error {
	return a.c.phase(ctx, "kube.disable_service_account", "verify", a.key, func(ctx context.Context) error {
		bs, err := a.scan(ctx)
		if err != nil {
			return err
		}
		if len(bs) > 0 {
			return fmt.Errorf("verify: %s %s/%s still binds the account", bs[0].Kind, bs[0].Namespace, bs[0].Name)
		}
		secrets, err := a.c.cs.CoreV1().Secrets(a.ns).List(ctx, metav1.ListOptions{
			FieldSelector: "type=kubernetes.io/service-account-token"})
		if err != nil {
			return classify("list token secrets in "+a.ns, err)
		}
		for _, s := range secrets.Items {
			if s.Annotations["kubernetes.io/service-account.name"] == a.name && s.DeletionTimestamp == nil {
				return fmt.Errorf("verify: token secret %s/%s still exists", a.ns, s.Name)
			}
		}
		sa, err := a.c.cs.CoreV1().ServiceAccounts(a.ns).Get(ctx, a.name, metav1.GetOptions{})
		if err != nil {
			return classify("verify serviceaccount", err)
		}
		if _, ok := sa.Annotations[a.annot]; !ok {
			return fmt.Errorf("verify: serviceaccount %s/%s is not marked", a.ns, a.name)
		}
		return nil
	})
}

func (a *disableSA) Revert(ctx context.Context, before action.Before) error {
	return a.c.phase(ctx, "kube.disable_service_account", "revert", a.key, func(ctx context.Context) error {
		var b saBefore
		if err := json.Unmarshal(before, &b); err != nil {
			return fmt.Errorf("revert %s: bad before: %w", a.key, err)
		}
		for _, bs := range b.Bindings {
			sub := bs.Subject
			err := a.editSubjects(ctx, bs, func(subs []rbacv1.Subject) []rbacv1.Subject {
				if slices.Contains(subs, sub) {
					return subs
				}
				return append(subs, sub)
			}, false)
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
		err := a.annotate(ctx, nil)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// tokens lists the account's legacy long-lived token secrets by name.
func (a *disableSA) tokens(ctx context.Context) ([]string, error) {
	secrets, err := a.c.cs.CoreV1().Secrets(a.ns).List(ctx, metav1.ListOptions{
		FieldSelector: "type=kubernetes.io/service-account-token"})
	if err != nil {
		return nil, classify("list token secrets in "+a.ns, err)
	}
	var out []string
	for _, s := range secrets.Items {
		if s.Annotations["kubernetes.io/service-account.name"] == a.name {
			out = append(out, s.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}
