package playbook

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/action/builtin"
	"github.com/quell-ir/quell/internal/event"
)

// exampleRegistry is the real built-in registry with the exec commands the
// examples and docs/playbooks.md describe.
func exampleRegistry(t testing.TB) *action.Registry {
	t.Helper()
	cfg := builtin.DefaultConfig()
	cfg.Exec.Commands = map[string]builtin.Command{
		"block-ip": {
			Params:    map[string]builtin.ParamConfig{"ip": {Type: action.TypeIP, Required: true}, "reason": {Type: action.TypeString}},
			Apply:     []string{"/usr/local/sbin/site-block", "add", "{ip}", "--reason={reason}"},
			Verify:    []string{"/usr/local/sbin/site-block", "check", "{ip}"},
			Revert:    []string{"/usr/local/sbin/site-block", "del", "{ip}"},
			Check:     []string{"/usr/local/sbin/site-block", "check", "{ip}"},
			KeyParams: []string{"ip"},
		},
		"page-oncall": {
			Params: map[string]builtin.ParamConfig{
				"summary":  {Type: action.TypeString, Required: true},
				"severity": {Type: action.TypeEnum, Enum: []string{"info", "warning", "critical"}, Default: "warning"},
			},
			Apply: []string{"/usr/local/bin/page", "--severity", "{severity}", "--", "{summary}"},
		},
	}
	reg := action.NewRegistry()
	if err := builtin.Register(reg, cfg, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	return reg
}

// examplePaths are the example playbooks this package owns (the firewall
// example belongs to the firewall provider and is checked there).
func examplePaths(t testing.TB) []string {
	t.Helper()
	dir := filepath.Join("..", "..", "examples", "playbooks")
	var out []string
	for _, n := range []string{"log-high-risk.yaml", "with-exec/exec-site-block.yaml", "with-exec/cloud-identity.yaml"} {
		out = append(out, filepath.Join(dir, n))
	}
	return out
}

func TestExamples(t *testing.T) {
	set, err := Load(context.Background(), examplePaths(t), exampleRegistry(t))
	if err != nil {
		t.Fatalf("examples do not load:\n%v", err)
	}
	if set.Len() != 4 {
		t.Fatalf("loaded %d playbooks, want 4", set.Len())
	}

	ev, ec := bfEvent("203.0.113.9")
	plans, errs := set.Evaluate(context.Background(), ev, ec)
	if len(errs) != 0 {
		t.Fatalf("brute force: %v", errs)
	}
	var got []string
	for _, p := range plans {
		got = append(got, fmt.Sprintf("%s/%s %s %v", p.Playbook, p.StepName, p.Action, p.Params))
	}
	want := []string{
		"site-block-brute-force/block exec.block-ip map[ip:203.0.113.9 reason:quell crowdsecurity/ssh-bf incident inc-7]",
		"site-block-brute-force/note log map[message:site-block 203.0.113.9 for 4h (crowdsecurity/ssh-bf)]",
		"log-high-risk/record log map[level:warn message:HIGH risk 72.5 from crowdsec: crowdsecurity/ssh-bf (203.0.113.9)]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("plans:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Every plan builds into a real action.
	reg := exampleRegistry(t)
	for _, p := range plans {
		if _, _, err := reg.Build(p.Action, p.Params); err != nil {
			t.Errorf("plan %s/%s does not build: %v", p.Playbook, p.StepName, err)
		}
	}

	// An internal source is not blocked.
	ec.Enrichment.Internal = true
	plans, _ = set.Evaluate(context.Background(), ev, ec)
	for _, p := range plans {
		if p.Action == "exec.block-ip" {
			t.Fatal("internal address planned for blocking")
		}
	}

	// CloudTrail root console login without MFA: both cloud playbooks.
	raw, _ := json.Marshal(map[string]any{"eventName": "ConsoleLogin", "additionalEventData": map[string]any{"MFAUsed": "No"}})
	ct := &event.Event{
		ID: "ct1", Source: "cloudtrail", Type: "console_login", SeverityID: 3,
		Actor: &event.Actor{Type: "Root", User: "root"},
		Cloud: &event.Cloud{Provider: "aws", Account: "123456789012", API: "ConsoleLogin"},
		Raw:   raw,
	}
	ct.Normalize(time.Now())
	plans, errs = set.Evaluate(context.Background(), ct, &event.Context{Risk: &event.Risk{Level: "MEDIUM", Score: 50}})
	if len(errs) != 0 {
		t.Fatalf("cloudtrail: %v", errs)
	}
	got = got[:0]
	for _, p := range plans {
		got = append(got, fmt.Sprintf("%s %s approval=%v %v", p.Playbook, p.Mode, p.Approval, p.Params))
	}
	want = []string{
		"page-on-root-activity enforce approval=true map[severity:critical summary:AWS root activity: ConsoleLogin in account 123456789012]",
		"console-login-without-mfa audit approval=false map[level:warn message:console login without MFA by root in 123456789012]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("plans:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
