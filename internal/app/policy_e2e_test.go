package app_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/action/builtin"
	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

// TestPolicyRulesOfEngagementEndToEnd runs the shipped default policy
// (examples/policies/quell) in the whole engine, on a real GuardDuty
// finding posted in GuardDuty's own format, with real commands as actions:
// a high-severity access-key finding gets its key disabled; the same
// finding for an excepted principal is denied with the reason; an
// eradication step waits for approval, and runs only after it and after
// the forensic capture.
func TestPolicyRulesOfEngagementEndToEnd(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policies")
	os.MkdirAll(filepath.Join(pol, "quell"), 0o755)
	for _, f := range []string{"decision.rego", "settings.rego"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", "policies", "quell", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(pol, "quell", f), b, 0o644)
	}
	// The site's own commands stand in for the AWS actions: the policy's
	// settings name them as credential, forensic and evidence actions.
	os.WriteFile(filepath.Join(pol, "data.json"), []byte(`{"quell": {
	  "settings": {"credential_actions": ["exec.disable-key"], "forensic_actions": ["exec.capture"], "evidence": {"exec.wipe": ["exec.capture"]}},
	  "exceptions": {"principals": ["break-glass-admin"]}}}`), 0o644)
	ops := filepath.Join(dir, "ops.log")
	script := filepath.Join(dir, "act.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $2\" >> "+ops+"\n"), 0o755)
	cmd := func(op string, erad bool, params map[string]builtin.ParamConfig, arg string) builtin.Command {
		return builtin.Command{Params: params, Apply: []string{"/bin/sh", script, op, arg}, Timeout: 10 * time.Second, Eradication: erad}
	}
	keyParam := map[string]builtin.ParamConfig{"key": {Type: action.TypeIdent, Required: true}}
	disable := cmd("disable", false, keyParam, "{key}")
	disable.Revert = []string{"/bin/sh", script, "enable", "{key}"}

	pb := filepath.Join(dir, "playbooks.yaml")
	os.WriteFile(pb, []byte(`apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: revoke-key}
spec:
  match: 'event.source == "guardduty" && has(event.actor.access_key_id)'
  mode: enforce
  steps:
    - action: exec.disable-key
      params: {key: '{{ .event.actor.access_key_id }}'}
      ttl: 4h
---
apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: wipe}
spec:
  match: 'event.source == "guardduty" && has(event.actor.access_key_id)'
  mode: enforce
  steps:
    - name: capture
      action: exec.capture
      params: {key: '{{ .event.actor.access_key_id }}'}
    - name: wipe
      action: exec.wipe
      params: {key: '{{ .event.actor.access_key_id }}'}
`), 0o644)

	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Server.Addr = "127.0.0.1:0"
	cfg.Mode, cfg.Engine.Mode = txn.ModeEnforce, txn.ModeEnforce
	cfg.Playbooks = []string{pb}
	cfg.Policy.Enabled, cfg.Policy.Dir, cfg.Policy.Watch = true, pol, false
	cfg.Actions.Exec.Commands = map[string]builtin.Command{
		"disable-key": disable,
		"capture":     cmd("capture", false, keyParam, "{key}"),
		"wipe":        cmd("wipe", true, keyParam, "{key}"),
	}
	a, err := app.New(context.Background(), cfg, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Stop(context.Background())

	sample, err := os.ReadFile(filepath.Join(samplesDir(t), "guardduty", "aws-samples-automated-response_finding_iam-maliciousipcaller.json"))
	if err != nil {
		t.Fatal(err)
	}
	finding := func(id string, severity float64, user string) *event.Event {
		var doc map[string]any
		json.Unmarshal(sample, &doc)
		doc["id"], doc["severity"] = id, severity
		doc["resource"].(map[string]any)["accessKeyDetails"].(map[string]any)["userName"] = user
		doc["resource"].(map[string]any)["accessKeyDetails"].(map[string]any)["accessKeyId"] = "AKIA" + strings.ToUpper(id)
		body, _ := json.Marshal(doc)
		res, err := a.Sources.Parse(ctx, "guardduty", body)
		if err != nil || len(res.Events) != 1 {
			t.Fatalf("parse finding: %v (%d events)", err, len(res.Events))
		}
		ev := &res.Events[0]
		if err := a.Committer.Prepare([]*event.Event{ev}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Committer.Append(ctx, []*event.Event{ev}); err != nil {
			t.Fatal(err)
		}
		return ev
	}
	txnOf := func(ev *event.Event, actionName string) *txn.Transaction {
		t.Helper()
		for ctx.Err() == nil {
			ts, err := a.Store.ListTxns(ctx, txn.Filter{EventID: ev.ID, Action: actionName})
			if err != nil {
				t.Fatal(err)
			}
			if len(ts) == 1 {
				tr, err := a.Engine.WaitResting(ctx, ts[0].ID)
				if err == nil || tr.State == txn.AwaitingApproval {
					return tr
				}
			}
			time.Sleep(5 * time.Millisecond) // the pipeline decides asynchronously
		}
		t.Fatalf("no settled %s transaction for %s", actionName, ev.ID)
		return nil
	}
	waitCtx := func(d time.Duration) (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, d) }

	// A high-severity finding: the key is disabled.
	high := finding("a1b2c3", 8.0, "GeneratedFindingUserName")
	if tr := txnOf(high, "exec.disable-key"); tr.State != txn.Active || tr.Decision == nil || tr.Decision.Engine != "opa" {
		t.Fatalf("high severity: %s (%+v), want active by opa", tr.State, tr.Decision)
	}
	// The eradication waits for approval, after the capture completed.
	wctx, wcancel := waitCtx(5 * time.Second)
	var wipe *txn.Transaction
	for wctx.Err() == nil && wipe == nil {
		ts, _ := a.Store.ListTxns(wctx, txn.Filter{EventID: high.ID, Action: "exec.wipe"})
		if len(ts) == 1 && ts[0].State == txn.AwaitingApproval {
			wipe = ts[0]
		}
		time.Sleep(5 * time.Millisecond)
	}
	wcancel()
	if wipe == nil {
		t.Fatal("the eradication step never waited for approval")
	}
	if cap := txnOf(high, "exec.capture"); cap.State != txn.Completed {
		t.Fatalf("capture: %s", cap.State)
	}
	if b, _ := os.ReadFile(ops); strings.Contains(string(b), "wipe") {
		t.Fatal("the eradication ran before approval")
	}
	if _, err := a.Engine.Approve(ctx, wipe.ID, "incident-commander", "evidence captured, go"); err != nil {
		t.Fatal(err)
	}
	if tr, err := a.Engine.WaitResting(ctx, wipe.ID); err != nil || tr.State != txn.Completed {
		t.Fatalf("approved eradication: %v %v", tr, err)
	}
	b, _ := os.ReadFile(ops)
	if lines := string(b); strings.Index(lines, "capture") > strings.Index(lines, "wipe") || !strings.Contains(lines, "disable AKIAA1B2C3") {
		t.Fatalf("effects out of order or missing:\n%s", lines)
	}

	// The same finding for an excepted principal: denied, with the reason.
	excepted := finding("d4e5f6", 8.0, "break-glass-admin")
	tr := txnOf(excepted, "exec.disable-key")
	if tr.State != txn.Denied || !strings.Contains(tr.Reason, "exception list") {
		t.Fatalf("excepted principal: %s %q", tr.State, tr.Reason)
	}
	// A medium-severity finding: below the threshold.
	medium := finding("a7a8a9", 5.0, "GeneratedFindingUserName")
	tr = txnOf(medium, "exec.disable-key")
	if tr.State != txn.Denied || !strings.Contains(tr.Reason, "high-severity") {
		t.Fatalf("medium severity: %s %q", tr.State, tr.Reason)
	}
	if b, _ := os.ReadFile(ops); strings.Contains(string(b), "disable AKIAD4E5F6") || strings.Contains(string(b), "disable AKIAA7A8A9") {
		t.Fatalf("a denied revocation ran:\n%s", b)
	}
}

// samplesDir finds ../shared/samples beside the repository.
func samplesDir(t *testing.T) string {
	t.Helper()
	d, _ := filepath.Abs(filepath.Join("..", "..", "..", "shared", "samples"))
	if _, err := os.Stat(d); err != nil {
		if os.Getenv("QUELL_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("shared samples missing at %s", d)
		}
		t.Skipf("shared samples missing at %s", d)
	}
	return d
}
