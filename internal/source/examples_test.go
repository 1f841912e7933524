package source_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestExamples keeps examples/events/ and its README table honest.
func TestExamples(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "examples", "events")
	r := newRegistry(t)
	for _, tc := range []struct {
		file, typ, prio string
		n               int
	}{
		{"falco.json", "execution", "P0", 1},
		{"guardduty.json", "brute_force", "P1", 1},
		{"cloudtrail.json", "persistence", "P0", 2},
		{"alertmanager.json", "brute_force", "P0", 1},
		{"crowdsec.json", "brute_force", "P1", 1},
		{"k8saudit.json", "execution", "P1", 1},
		{"generic.json", "dns_tunneling", "P0", 1},
	} {
		body, err := os.ReadFile(filepath.Join(dir, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		name := tc.file[:len(tc.file)-len(".json")]
		res, err := r.Parse(context.Background(), name, body)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if len(res.Events) != tc.n || res.Events[0].Type != tc.typ || res.Events[0].Priority != tc.prio {
			t.Errorf("%s: %d events, first %s %s; want %d %s %s", tc.file, len(res.Events), res.Events[0].Type, res.Events[0].Priority, tc.n, tc.typ, tc.prio)
		}
	}
}
