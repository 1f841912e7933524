// Package kube implements quell's Kubernetes containment actions: pod and
// workload quarantine with NetworkPolicies, CIDR blocks (NetworkPolicy or
// Cilium), Istio and Linkerd source denies, service-account disabling, node
// cordoning, labelling, scaling, evidence capture and pod deletion. Every
// action pre-checks (protected namespaces and labels, blast radius, minimum
// healthy replicas), dry-runs, applies with server-side apply as field
// manager "quell", verifies against the API server, and reverts exactly.
package kube

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
)

// FieldManager is the server-side apply field manager of every write.
const FieldManager = "quell"

// Config configures the Kubernetes client and the actions' guards.
type Config struct {
	// Kubeconfig is a kubeconfig path; empty uses the in-cluster config, then
	// $KUBECONFIG or ~/.kube/config.
	Kubeconfig string `yaml:"kubeconfig"`
	// Context selects a kubeconfig context; empty uses the current one.
	Context string `yaml:"context"`
	// QPS and Burst bound the client's request rate (client-side token bucket).
	QPS   float32 `yaml:"qps"`
	Burst int     `yaml:"burst"`
	// Timeout bounds one API request.
	Timeout time.Duration `yaml:"timeout"`
	// ProtectedNamespaces are never isolated, scaled, labelled or emptied.
	ProtectedNamespaces []string `yaml:"protected_namespaces"`
	// ProtectedLabels are label selectors (e.g. "app.kubernetes.io/name in
	// (ingress-nginx,traefik)"); objects they match are never touched.
	ProtectedLabels []string `yaml:"protected_labels"`
	// MaxPodsPerSelector refuses a workload/selector action matching more pods.
	MaxPodsPerSelector int `yaml:"max_pods_per_selector"`
	// MinHealthyReplicas is a number ("1") or a percentage of the desired
	// replicas ("50%") that deleting or scaling must leave ready.
	MinHealthyReplicas string `yaml:"min_healthy_replicas"`
	// EvidenceDir receives kube.capture_logs output.
	EvidenceDir string `yaml:"evidence_dir"`
	// ForensicsNamespace, when set, is the default namespace allowed to reach
	// quarantined pods (and be reached by them).
	ForensicsNamespace string `yaml:"forensics_namespace"`
	// DryRun runs a server-side dry run before every server-side apply.
	DryRun bool `yaml:"dry_run"`
	// Informers serves reads of pods and NetworkPolicies from a watch cache,
	// so that a mass incident spends its request budget on writes.
	Informers bool `yaml:"informers"`
}

// DefaultConfig returns the defaults documented in docs/kubernetes.md.
func DefaultConfig() Config {
	return Config{
		QPS:     50,
		Burst:   100,
		Timeout: 10 * time.Second,
		ProtectedNamespaces: []string{"kube-system", "kube-public", "kube-node-lease",
			"ingress-nginx", "istio-system", "linkerd", "cilium", "quell-system"},
		ProtectedLabels: []string{
			"quell.io/protected=true",
			"app.kubernetes.io/name in (quell,ingress-nginx,traefik,contour,envoy-gateway,istio-ingressgateway)",
			"istio=ingressgateway",
			"node-role.kubernetes.io/control-plane",
		},
		MaxPodsPerSelector: 50,
		MinHealthyReplicas: "1",
		EvidenceDir:        "/var/lib/quell/evidence",
		DryRun:             true,
		Informers:          true,
	}
}

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	var errs []error
	if c.QPS <= 0 {
		errs = append(errs, fmt.Errorf("kubernetes.qps: must be positive, got %v", c.QPS))
	}
	if c.Burst < 1 {
		errs = append(errs, fmt.Errorf("kubernetes.burst: must be at least 1, got %d", c.Burst))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("kubernetes.timeout: must be positive, got %s", c.Timeout))
	}
	for i, s := range c.ProtectedLabels {
		if _, err := labels.Parse(s); err != nil {
			errs = append(errs, fmt.Errorf("kubernetes.protected_labels[%d]: %w", i, err))
		}
	}
	if c.MaxPodsPerSelector < 1 {
		errs = append(errs, fmt.Errorf("kubernetes.max_pods_per_selector: must be at least 1, got %d", c.MaxPodsPerSelector))
	}
	if _, err := parseMinHealthy(c.MinHealthyReplicas); err != nil {
		errs = append(errs, fmt.Errorf("kubernetes.min_healthy_replicas: %w", err))
	}
	if c.EvidenceDir == "" {
		errs = append(errs, errors.New("kubernetes.evidence_dir: required"))
	}
	return errors.Join(errs...)
}

// minHealthy is a parsed MinHealthyReplicas.
type minHealthy struct {
	n       int
	percent bool
}

func parseMinHealthy(s string) (minHealthy, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return minHealthy{}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 100 {
			return minHealthy{}, fmt.Errorf("%q: want a number or a percentage 0%%..100%%", s)
		}
		return minHealthy{n: n, percent: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return minHealthy{}, fmt.Errorf("%q: want a non-negative number or a percentage", s)
	}
	return minHealthy{n: n}, nil
}

// of returns the minimum for a workload that desires `desired` replicas;
// percentages round up, so "50%" of 3 is 2.
func (m minHealthy) of(desired int) int {
	if !m.percent {
		return m.n
	}
	return (desired*m.n + 99) / 100
}
