package loadtest

import (
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// writerBinding lets the competing writer create ConfigMaps. Not "edit":
// that role is aggregated by kube-controller-manager, which this harness
// does not run, so it grants nothing here.
func writerBinding() *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "competing-writer"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "writer", APIGroup: "rbac.authorization.k8s.io"}}}
}
