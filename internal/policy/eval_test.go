package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

func TestEvalEvent(t *testing.T) {
	ev := guardDutyEvent(t, samplePath(t, gdIAMSample))
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write(t, dir, "event.json", string(b))
	got, _, err := ReadEvent(filepath.Join(dir, "event.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Actor.AccessKeyID != "GeneratedFindingAccessKeyId" {
		t.Fatalf("ReadEvent: %+v", got.Actor)
	}
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Dir = true, examplesDir(t)
	tests := []struct {
		name     string
		req      EvalRequest
		verdict  txn.Verdict
		contains []string
	}{
		{"terminate with snapshot", EvalRequest{
			Event: got, Context: &event.Context{Risk: &event.Risk{Level: "HIGH"}},
			Spec: terminateSpec, Targets: []action.Target{{Kind: "instance", Value: "i-99999999"}},
			IncidentID: "inc-7", Evidence: []string{"aws.snapshot"}, Time: time.Unix(1_800_000_000, 0),
		}, txn.RequireApproval, []string{"verdict:  require_approval", "approval: 1 approver(s) from incident-commanders within 1h0m0s", "limits:   max ttl 24h0m0s", "input:    sha256:"}},
		{"revocation below threshold", EvalRequest{
			Event: got, Spec: disableKeySpec, Targets: []action.Target{{Kind: "access_key", Value: "GeneratedFindingAccessKeyId"}},
		}, txn.Deny, []string{"verdict:  deny", "got severity_id 3, risk NONE"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			d, input, err := EvalEvent(context.Background(), cfg, tc.req, &out)
			if err != nil {
				t.Fatal(err)
			}
			if d.Verdict != tc.verdict {
				t.Fatalf("verdict %s, want %s\n%s", d.Verdict, tc.verdict, out.String())
			}
			for _, c := range tc.contains {
				if !strings.Contains(out.String(), c) {
					t.Errorf("output lacks %q:\n%s", c, out.String())
				}
			}
			if input.Action.Name != tc.req.Spec.Name || input.Mode != "enforce" {
				t.Errorf("input: %+v", input.Action)
			}
		})
	}
}
