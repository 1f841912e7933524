package policy

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

const gdIAMSample = "/work/shared/samples/guardduty/aws-samples-automated-response_finding_iam-maliciousipcaller.json"

func samplePath(t testing.TB, p string) string {
	t.Helper()
	if _, err := os.Stat(p); err != nil {
		// CI clones the repo with shared/ beside it.
		alt := filepath.Join("..", "..", "..", "shared", strings.TrimPrefix(p, "/work/shared/"))
		if _, err2 := os.Stat(alt); err2 == nil {
			return alt
		}
		t.Fatalf("sample %s: %v", p, err)
	}
	return p
}

// copyTree copies the shipped policies so a test can change them.
func copyTree(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

type fakeIncidents map[string]Incident

func (f fakeIncidents) PolicyIncident(_ context.Context, id string) (Incident, error) {
	inc, ok := f[id]
	if !ok {
		return Incident{}, errors.New("incident not found")
	}
	return inc, nil
}

func newEngine(t testing.TB, dir string, opts Options) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Dir = true, dir
	e, err := New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

var (
	disableKeySpec = action.Spec{Name: "aws.disable_access_key", Provider: "aws", Reversible: true}
	terminateSpec  = action.Spec{Name: "aws.terminate_instance", Provider: "aws", Eradication: true}
)

func gdRequest(ev *event.Event, risk string, spec action.Spec, targets []action.Target, incident string) txn.DecisionInput {
	return txn.DecisionInput{
		Request: txn.Request{
			Action:     spec.Name,
			Params:     map[string]string{"access_key_id": ev.Actor.AccessKeyID},
			Mode:       txn.ModeEnforce,
			Event:      ev,
			Context:    &event.Context{Risk: &event.Risk{Level: risk, Score: 75}, Enrichment: &event.Enrichment{}},
			IncidentID: incident,
			Playbook:   "aws-credential-compromise",
			Origin:     "evt/" + ev.ID + "/aws-credential-compromise/1",
		},
		Spec:    spec,
		Targets: targets,
		Key:     spec.Name + "/" + targets[0].Value,
		Mode:    txn.ModeEnforce,
		Time:    time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
	}
}

// TestGuardDutyDecisions is the Decider-level end-to-end test of the shipped
// policy on a real GuardDuty access-key finding.
func TestGuardDutyDecisions(t *testing.T) {
	ev := guardDutyEvent(t, samplePath(t, gdIAMSample))
	if ev.Actor == nil || ev.Actor.AccessKeyID != "GeneratedFindingAccessKeyId" || ev.SeverityID != 3 {
		t.Fatalf("sample mapped unexpectedly: %+v severity %d", ev.Actor, ev.SeverityID)
	}
	keyTarget := []action.Target{{Kind: "access_key", Value: ev.Actor.AccessKeyID}}
	instTarget := []action.Target{{Kind: "instance", Value: ev.Cloud.InstanceID}}

	shipped := examplesDir(t)
	excepted := copyTree(t, shipped)
	write(t, excepted, "data.json", `{"quell":{"exceptions":{"principals":["GeneratedFindingUserName"]}}}`)

	incidents := fakeIncidents{
		"inc-none":     {ID: "inc-none", Evidence: nil},
		"inc-snapshot": {ID: "inc-snapshot", Evidence: []string{"aws.snapshot", "kube.capture_logs", "aws.snapshot"}},
	}
	tests := []struct {
		name      string
		dir       string
		risk      string
		spec      action.Spec
		targets   []action.Target
		incident  string
		verdict   txn.Verdict
		reason    string // a substring of one reason
		approvers int
		group     string
		timeout   time.Duration
		maxTTL    time.Duration
	}{
		{name: "above threshold allowed", dir: shipped, risk: "HIGH", spec: disableKeySpec, targets: keyTarget,
			verdict: txn.Allow, reason: "credential revocation allowed", maxTTL: 24 * time.Hour},
		{name: "critical risk allowed", dir: shipped, risk: "CRITICAL", spec: disableKeySpec, targets: keyTarget,
			verdict: txn.Allow, maxTTL: 24 * time.Hour},
		{name: "below threshold denied", dir: shipped, risk: "MEDIUM", spec: disableKeySpec, targets: keyTarget,
			verdict: txn.Deny, reason: "needs a high-severity finding (severity_id >= 4 or risk HIGH/CRITICAL); got severity_id 3, risk MEDIUM", maxTTL: 24 * time.Hour},
		{name: "excepted principal denied", dir: excepted, risk: "HIGH", spec: disableKeySpec, targets: keyTarget,
			verdict: txn.Deny, reason: `principal "GeneratedFindingUserName" is on the exception list`, maxTTL: 24 * time.Hour},
		{name: "eradication without evidence denied", dir: shipped, risk: "HIGH", spec: terminateSpec, targets: instTarget, incident: "inc-none",
			verdict: txn.Deny, reason: `eradication aws.terminate_instance needs forensic evidence first: none of [aws.snapshot] has completed for incident "inc-none"`, maxTTL: 24 * time.Hour},
		{name: "eradication with no incident denied", dir: shipped, risk: "HIGH", spec: terminateSpec, targets: instTarget,
			verdict: txn.Deny, reason: "needs forensic evidence first", maxTTL: 24 * time.Hour},
		{name: "eradication waits for approval", dir: shipped, risk: "HIGH", spec: terminateSpec, targets: instTarget, incident: "inc-snapshot",
			verdict: txn.RequireApproval, reason: "destroys state", approvers: 1, group: "incident-commanders", timeout: time.Hour, maxTTL: 24 * time.Hour},
	}
	engines := map[string]*Engine{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := engines[tc.dir]
			if e == nil {
				e = newEngine(t, tc.dir, Options{Incidents: incidents})
				engines[tc.dir] = e
			}
			d, err := e.Decide(context.Background(), gdRequest(ev, tc.risk, tc.spec, tc.targets, tc.incident))
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if d.Verdict != tc.verdict {
				t.Fatalf("verdict %s, want %s (reasons %q)", d.Verdict, tc.verdict, d.Reasons)
			}
			if tc.reason != "" && !containsReason(d.Reasons, tc.reason) {
				t.Errorf("reasons %q do not contain %q", d.Reasons, tc.reason)
			}
			if d.Approvers != tc.approvers || d.ApproverGroup != tc.group || d.ApprovalTimeout != tc.timeout {
				t.Errorf("approval = %d/%q/%s, want %d/%q/%s", d.Approvers, d.ApproverGroup, d.ApprovalTimeout, tc.approvers, tc.group, tc.timeout)
			}
			if d.MaxTTL != tc.maxTTL {
				t.Errorf("MaxTTL %s, want %s", d.MaxTTL, tc.maxTTL)
			}
			if d.Engine != "opa" || !strings.HasPrefix(d.PolicyRevision, "sha256:") || !strings.HasPrefix(d.InputHash, "sha256:") || len(d.InputHash) != 71 {
				t.Errorf("engine/revision/hash = %q %q %q", d.Engine, d.PolicyRevision, d.InputHash)
			}
			if d.DecidedAt.IsZero() || d.Latency <= 0 {
				t.Errorf("DecidedAt %v Latency %v", d.DecidedAt, d.Latency)
			}
		})
	}
}

func containsReason(reasons []string, sub string) bool {
	for _, r := range reasons {
		if strings.Contains(r, sub) {
			return true
		}
	}
	return false
}

func TestInputHash(t *testing.T) {
	ev := guardDutyEvent(t, samplePath(t, gdIAMSample))
	e := newEngine(t, examplesDir(t), Options{})
	in := gdRequest(ev, "HIGH", disableKeySpec, []action.Target{{Kind: "access_key", Value: "AK"}}, "")
	d1, _ := e.Decide(context.Background(), in)
	d2, _ := e.Decide(context.Background(), in)
	if d1.InputHash != d2.InputHash {
		t.Fatalf("same input hashed differently: %s %s", d1.InputHash, d2.InputHash)
	}
	in.Request.Requester = "alice"
	d3, _ := e.Decide(context.Background(), in)
	if d3.InputHash == d1.InputHash {
		t.Fatal("different input, same hash")
	}
	// The raw document is left out unless configured: it must not change the hash.
	ev2 := *ev
	ev2.Raw = []byte(`{"other":true}`)
	in2 := gdRequest(&ev2, "HIGH", disableKeySpec, []action.Target{{Kind: "access_key", Value: "AK"}}, "")
	d4, _ := e.Decide(context.Background(), in2)
	if d4.InputHash != d1.InputHash {
		t.Fatal("raw changed the hash although include_raw is off")
	}
}

func TestDecideFailsClosed(t *testing.T) {
	ev := guardDutyEvent(t, samplePath(t, gdIAMSample))
	in := gdRequest(ev, "HIGH", disableKeySpec, []action.Target{{Kind: "access_key", Value: "AK"}}, "")
	tests := []struct {
		name   string
		rego   string
		reason string
	}{
		{"undefined", "package quell\n\ndecision := {\"allow\": true} if input.nope\n", "data.quell.decision is undefined"},
		{"conflict", "package quell\n\ndecision := {\"allow\": true} if input.mode\n\ndecision := {\"allow\": false} if input.action\n", "evaluate data.quell.decision"},
		{"not an object", "package quell\n\ndecision := true\n", "want an object"},
		{"bad ttl", "package quell\n\ndecision := {\"allow\": true, \"max_ttl\": \"forever\"}\n", "max_ttl"},
		{"bad approvers", "package quell\n\ndecision := {\"allow\": true, \"require_approval\": {\"approvers\": \"two\"}}\n", "require_approval.approvers"},
		{"allow not bool", "package quell\n\ndecision := {\"allow\": \"yes\"}\n", "decision.allow"},
		{"nothing allows", "package quell\n\ndecision := {\"allow\": false}\n", "not allowed by policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "p.rego", tc.rego)
			reg := prometheus.NewRegistry()
			e := newEngine(t, dir, Options{Registerer: reg})
			d, err := e.Decide(context.Background(), in)
			if err != nil {
				t.Fatalf("Decide returned an error instead of denying: %v", err)
			}
			if d.Verdict != txn.Deny || !containsReason(d.Reasons, tc.reason) {
				t.Fatalf("got %s %q, want deny with %q", d.Verdict, d.Reasons, tc.reason)
			}
			if got := testutil.ToFloat64(e.m.decisions.WithLabelValues("deny")); got != 1 {
				t.Errorf("deny counter %v, want 1", got)
			}
		})
	}
	t.Run("incident lookup error", func(t *testing.T) {
		e := newEngine(t, examplesDir(t), Options{Incidents: fakeIncidents{}})
		in := in
		in.Request.IncidentID = "missing"
		d, err := e.Decide(context.Background(), in)
		if err != nil || d.Verdict != txn.Deny || !containsReason(d.Reasons, "look up incident missing") {
			t.Fatalf("got %+v %v", d, err)
		}
	})
}

func TestNewRefusesBrokenPolicy(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", "package quell\n\ndecision := {\n")
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Dir = true, dir
	if _, err := New(context.Background(), cfg, Options{}); err == nil {
		t.Fatal("New accepted a policy that does not parse")
	}
	cfg.Dir = t.TempDir()
	if _, err := New(context.Background(), cfg, Options{}); err == nil || !strings.Contains(err.Error(), "no .rego modules") {
		t.Fatalf("empty dir: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	tests := []struct {
		name  string
		mod   func(*Config)
		field string
	}{
		{"enabled without source", func(c *Config) { c.Enabled = true }, "policy.dir or policy.bundle"},
		{"both sources", func(c *Config) { c.Enabled, c.Dir, c.Bundle = true, "a", "b.tar.gz" }, "set only one"},
		{"no query", func(c *Config) { c.Query = "" }, "policy.query"},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "policy.timeout"},
		{"debounce", func(c *Config) { c.WatchDebounce = -1 }, "policy.watch_debounce"},
		{"key file", func(c *Config) { c.Verification.PublicKeys = map[string]PublicKey{"k": {}} }, "policy.verification.public_keys.k.file"},
		{"key id", func(c *Config) { c.Verification.KeyID = "nope" }, "policy.verification.key_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v, want one naming %s", err, tc.field)
			}
		})
	}
}

// An evaluation that runs past policy.timeout is cancelled and denies.
func TestDecideTimeoutFailsClosed(t *testing.T) {
	dir := t.TempDir()
	// Input-dependent, so that partial evaluation cannot compute it at load.
	mod := "package quell\n\ndecision := {\"allow\": count([1 | some i in numbers.range(1, input.playbook.step); some j in numbers.range(1, input.playbook.step); i * j < 0]) == 0}\n"
	if err := os.WriteFile(filepath.Join(dir, "slow.rego"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Dir, cfg.Timeout = true, dir, 20*time.Millisecond
	e, err := New(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d := e.Evaluate(context.Background(), Input{Playbook: PlaybookInput{Step: 100000}})
	if d.Verdict != txn.Deny || !containsReason(d.Reasons, "fail closed") {
		t.Fatalf("decision %+v, want a fail-closed deny", d)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s: the evaluation was not cancelled", took)
	}
}
