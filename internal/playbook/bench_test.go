package playbook

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// benchSet is 20 playbooks of the shapes operators write: most select on
// the event type and do not match a given event; three match and render
// two templated steps each.
func benchSet(b *testing.B) *Set {
	b.Helper()
	var docs []string
	types := []string{"port_scan", "malware", "privilege_escalation", "exfiltration", "crypto_mining",
		"credential_access", "defense_evasion", "persistence", "lateral_movement", "discovery",
		"impact", "execution", "collection", "command_and_control", "reconnaissance",
		"container_escape", "k8s_exec"}
	for i, ty := range types {
		docs = append(docs, fmt.Sprintf(`apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: p%02d-%s}
spec:
  match: 'event.type == "%s" && has(event.src_endpoint.ip) && risk.?score.orValue(0) >= 40'
  priority: %d
  steps:
    - {name: block, action: firewall.block, params: {address: '{{ .event.src_endpoint.ip }}'}, ttl: 1h}
`, i, strings.ReplaceAll(ty, "_", "-"), ty, i))
	}
	for i := 0; i < 3; i++ {
		docs = append(docs, fmt.Sprintf(`apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: match-%d}
spec:
  match: 'event.type == "brute_force" && has(event.src_endpoint.ip) && !cidr("10.0.0.0/8").containsIP(event.src_endpoint.ip) && risk.score >= 40'
  steps:
    - {name: block, action: firewall.block, params: {address: '{{ .event.src_endpoint.ip }}', direction: in}, ttl: 1h}
    - {name: note, action: log, params: {message: 'blocked {{ .event.src_endpoint.ip }} risk {{ .risk.level }} rule {{ .event.rule }}'}}
`, i))
	}
	p := writeFile(b, b.TempDir(), "bench.yaml", strings.Join(docs, "---\n"))
	set, err := Load(context.Background(), []string{p}, testRegistry(b))
	if err != nil {
		b.Fatal(err)
	}
	if set.Len() != 20 {
		b.Fatalf("%d playbooks", set.Len())
	}
	return set
}

func BenchmarkEvaluate20(b *testing.B) {
	set := benchSet(b)
	ev, ec := bfEvent("203.0.113.9")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plans, errs := set.Evaluate(ctx, ev, ec)
		if len(plans) != 6 || len(errs) != 0 {
			b.Fatalf("plans %d errs %v", len(plans), errs)
		}
	}
}

func BenchmarkEvaluate20WithMetrics(b *testing.B) {
	set := benchSet(b)
	set.metrics = NewMetrics(nil)
	for _, pb := range set.playbooks {
		pb.counters = set.metrics.countersFor(pb.Name)
	}
	ev, ec := bfEvent("203.0.113.9")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if plans, _ := set.Evaluate(ctx, ev, ec); len(plans) != 6 {
			b.Fatal(len(plans))
		}
	}
}
