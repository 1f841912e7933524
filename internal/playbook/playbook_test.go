package playbook

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
)

// testRegistry holds action specs shaped like the real providers'. Load and
// Evaluate only read specs; nothing is ever built here.
func testRegistry(t testing.TB) *action.Registry {
	t.Helper()
	never := func(action.Values) (action.Action, error) {
		return nil, errors.New("playbook tests never build actions")
	}
	reg := action.NewRegistry()
	reg.MustRegister(action.Definition{Spec: action.Spec{Name: "firewall.block", Provider: "test", Params: []action.Param{
		{Name: "address", Type: action.TypeCIDR, Required: true},
		{Name: "direction", Type: action.TypeEnum, Enum: []string{"in", "out", "both"}, Default: "in"},
	}}, New: never})
	reg.MustRegister(action.Definition{Spec: action.Spec{Name: "kube.label", Provider: "test", Params: []action.Param{
		{Name: "namespace", Type: action.TypeName, Required: true},
		{Name: "pod", Type: action.TypeName, Required: true},
		{Name: "port", Type: action.TypePort},
	}}, New: never})
	reg.MustRegister(action.Definition{Spec: action.Spec{Name: "log", Provider: "test", Params: []action.Param{
		{Name: "message", Type: action.TypeString, Required: true},
		{Name: "level", Type: action.TypeEnum, Enum: []string{"debug", "info", "warn", "error"}, Default: "info"},
	}}, New: never})
	return reg
}

func writeFile(t testing.TB, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const bruteForce = `apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: block-brute-force, description: "block SSH brute force"}
spec:
  match: 'event.type == "brute_force" && has(event.src_endpoint.ip) && risk.score >= 40'
  mode: enforce
  priority: 100
  steps:
    - name: block
      action: firewall.block
      params: {address: '{{ .event.src_endpoint.ip }}', direction: in}
      ttl: 1h
      approval: none
    - name: note
      action: log
      params:
        message: 'blocked {{ .event.src_endpoint.ip }} (risk {{ .risk.level }}, incident {{ .incident.id }})'
      mode: audit
`

func bfEvent(ip string) (*event.Event, *event.Context) {
	ev := &event.Event{
		ID: "e1", Source: "crowdsec", Type: "brute_force", SeverityID: 4,
		Rule:        "crowdsecurity/ssh-bf",
		SrcEndpoint: &event.Endpoint{IP: ip, Port: 51234},
		DstEndpoint: &event.Endpoint{IP: "10.0.0.5", Port: 22},
		Labels:      map[string]string{"site": "par1"},
	}
	ev.Normalize(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	ec := &event.Context{
		Risk:       &event.Risk{Level: "HIGH", Score: 72.5, Tier: "contain"},
		Enrichment: &event.Enrichment{Threat: event.Threat{Score: 0.9}},
		IncidentID: "inc-7",
	}
	return ev, ec
}

func TestLoadAndEvaluate(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "bf.yaml", bruteForce)
	set, err := Load(context.Background(), []string{dir}, testRegistry(t))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if set.Len() != 1 {
		t.Fatalf("Len = %d, want 1", set.Len())
	}
	ev, ec := bfEvent("203.0.113.9")
	plans, errs := set.Evaluate(context.Background(), ev, ec)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	want := []Plan{
		{Playbook: "block-brute-force", Step: 0, StepName: "block", Action: "firewall.block",
			Params: map[string]string{"address": "203.0.113.9", "direction": "in"}, TTL: time.Hour, Mode: ModeEnforce},
		{Playbook: "block-brute-force", Step: 1, StepName: "note", Action: "log",
			Params: map[string]string{"message": "blocked 203.0.113.9 (risk HIGH, incident inc-7)"}, Mode: ModeAudit},
	}
	if fmt.Sprint(plans) != fmt.Sprint(want) {
		t.Fatalf("plans:\n got %+v\nwant %+v", plans, want)
	}
	if got := plans[0].Origin("e1"); got != "evt/e1/block-brute-force/0" {
		t.Errorf("Origin = %q", got)
	}

	// Below the risk threshold: no plan, no error.
	ec.Risk.Score = 39.9
	if plans, errs := set.Evaluate(context.Background(), ev, ec); len(plans) != 0 || len(errs) != 0 {
		t.Fatalf("low risk: plans %v errs %v", plans, errs)
	}
	// No context at all: risk is an empty map, so risk.score is a no-such-key
	// error, recorded as a non-match.
	plans, errs = set.Evaluate(context.Background(), ev, nil)
	if len(plans) != 0 || len(errs) != 1 || errs[0].Step != -1 || !strings.Contains(errs[0].Error(), "no such key") {
		t.Fatalf("no context: plans %v errs %v", plans, errs)
	}
}

func TestLoadErrors(t *testing.T) {
	const head = "apiVersion: quell.dev/v1\nkind: Playbook\nmetadata: {name: p}\nspec:\n"
	step := func(s string) string {
		return head + "  match: 'true'\n  steps:\n" + s
	}
	tests := []struct {
		name, body string
		want       []string // substrings of the error, in order
	}{
		{"unknown action", step("    - action: firewall.nuke\n"), []string{"x.yaml:7: spec.steps[0].action: unknown action \"firewall.nuke\""}},
		{"unknown param", step("    - action: firewall.block\n      params: {address: 1.2.3.4, port: 22}\n"), []string{"x.yaml:8: spec.steps[0].params.port: unknown parameter of firewall.block"}},
		{"static value of the wrong type", step("    - name: block\n      action: firewall.block\n      params:\n        address: not-an-ip\n"), []string{"x.yaml:10: spec.steps[0].params.address: not an address or CIDR"}},
		{"static enum", step("    - action: firewall.block\n      params: {address: 1.2.3.4, direction: sideways}\n"), []string{"x.yaml:8: spec.steps[0].params.direction:", "not one of in, out, both"}},
		{"missing required", step("    - action: firewall.block\n      params: {direction: in}\n"), []string{"x.yaml:8: spec.steps[0].params.address: required by firewall.block"}},
		{"bad ttl", step("    - action: log\n      params: {message: hi}\n      ttl: 1 hour\n"), []string{"x.yaml:9: spec.steps[0].ttl: not a non-negative duration"}},
		{"negative ttl", step("    - action: log\n      params: {message: hi}\n      ttl: -1h\n"), []string{"spec.steps[0].ttl"}},
		{"bad step mode", step("    - action: log\n      params: {message: hi}\n      mode: yolo\n"), []string{"x.yaml:9: spec.steps[0].mode: must be audit or enforce"}},
		{"bad approval", step("    - action: log\n      params: {message: hi}\n      approval: maybe\n"), []string{"x.yaml:9: spec.steps[0].approval: must be none or required"}},
		{"template syntax", step("    - action: log\n      params: {message: '{{ .event.type '}\n"), []string{"x.yaml:8: spec.steps[0].params.message: template:"}},
		{"template unknown function", step("    - action: log\n      params: {message: '{{ env \"HOME\" }}'}\n"), []string{"spec.steps[0].params.message: template:", "\"env\" not defined"}},
		{"duplicate step", step("    - {name: a, action: log, params: {message: x}}\n    - {name: a, action: log, params: {message: y}}\n"), []string{"x.yaml:8: spec.steps[1].name: \"a\" is also the name of spec.steps[0]"}},
		{"no steps", head + "  match: 'true'\n  steps: []\n", []string{"x.yaml:6: spec.steps: must list at least one step"}},
		{"cel syntax", head + "  match: 'event.type =='\n  steps: [{action: log, params: {message: x}}]\n", []string{"x.yaml:5: spec.match: does not compile"}},
		{"cel not bool", head + "  match: 'event.type'\n  steps: [{action: log, params: {message: x}}]\n", []string{"x.yaml:5: spec.match: must return bool"}},
		{"cel unknown variable", head + "  match: 'evnt.type == \"x\"'\n  steps: [{action: log, params: {message: x}}]\n", []string{"spec.match: does not compile", "undeclared reference to 'evnt'"}},
		{"missing match", head + "  steps: [{action: log, params: {message: x}}]\n", []string{"x.yaml:5: spec.match: required"}},
		{"bad spec mode", head + "  match: 'true'\n  mode: on\n  steps: [{action: log, params: {message: x}}]\n", []string{"x.yaml:6: spec.mode: must be audit or enforce"}},
		{"bad priority", head + "  match: 'true'\n  priority: high\n  steps: [{action: log, params: {message: x}}]\n", []string{"x.yaml:6: spec.priority: must be an integer"}},
		{"unknown spec field", head + "  match: 'true'\n  matchh: 'true'\n  steps: [{action: log, params: {message: x}}]\n", []string{"x.yaml:6: spec.matchh: unknown field"}},
		{"wrong kind", "apiVersion: quell.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {}\n", []string{"x.yaml:2: kind: must be Playbook"}},
		{"wrong api version", strings.Replace(step("    - {action: log, params: {message: x}}\n"), "quell.dev/v1", "quell.dev/v2", 1), []string{"x.yaml:1: apiVersion: must be quell.dev/v1"}},
		{"bad name", strings.Replace(step("    - {action: log, params: {message: x}}\n"), "name: p", "name: Bad_Name", 1), []string{"x.yaml:3: metadata.name: must be lower-case"}},
		{"param is a list", step("    - action: log\n      params: {message: [a, b]}\n"), []string{"x.yaml:8: spec.steps[0].params.message: must be a single value"}},
		{"duplicate playbook", step("    - {action: log, params: {message: x}}\n") + "---\n" + step("    - {action: log, params: {message: y}}\n"),
			[]string{"x.yaml:11: metadata.name: playbook \"p\" is already defined at", "x.yaml:1"}},
		{"yaml syntax", "apiVersion: [\n", []string{"x.yaml: yaml: line"}},
		{"several errors at once", step("    - action: firewall.nuke\n    - action: log\n      ttl: soon\n      params: {message: x}\n"),
			[]string{"spec.steps[0].action: unknown action", "\n", "spec.steps[1].ttl: not a non-negative duration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := writeFile(t, dir, "x.yaml", tt.body)
			set, err := Load(context.Background(), []string{p}, testRegistry(t))
			if err == nil {
				t.Fatalf("Load succeeded with %d playbooks; want error", set.Len())
			}
			msg := strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), "")
			rest := msg
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error %q\ndoes not contain %q (in order)", msg, w)
				}
				rest = rest[i+len(w):]
			}
			var les LoadErrors
			if !errors.As(err, &les) || len(les) == 0 || les[0].File != p {
				t.Fatalf("error is not a LoadErrors naming %s: %#v", p, err)
			}
		})
	}
}

func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", bruteForce)
	// Two playbooks in one file, and an empty trailing document.
	writeFile(t, dir, "b.yml", `apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: low}
spec:
  match: 'true'
  priority: -5
  steps: [{action: log, params: {message: 'low {{ .event.id }}'}}]
---
apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: also-100}
spec:
  match: 'event.source == "crowdsec"'
  priority: 100
  steps: [{action: log, params: {message: "same priority, sorted by name"}}]
---
`)
	writeFile(t, dir, "README.md", "not a playbook")
	writeFile(t, dir, ".hidden.yaml", "this: is: not: yaml")
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	set, err := Load(context.Background(), []string{dir}, testRegistry(t))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	var names []string
	for _, p := range set.Playbooks() {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, ","); got != "also-100,block-brute-force,low" {
		t.Fatalf("order = %s", got)
	}
	ev, ec := bfEvent("198.51.100.7")
	plans, errs := set.Evaluate(context.Background(), ev, ec)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	var got []string
	for _, p := range plans {
		got = append(got, p.Playbook+"/"+p.StepName)
	}
	if strings.Join(got, ",") != "also-100/step-0,block-brute-force/block,block-brute-force/note,low/step-0" {
		t.Fatalf("plans in order: %v", got)
	}

	// One broken file fails the whole directory.
	writeFile(t, dir, "c.yaml", strings.Replace(bruteForce, "block-brute-force", "other", 1)+"---\nkind: Playbook\n")
	if _, err := Load(context.Background(), []string{dir}, testRegistry(t)); err == nil || !strings.Contains(err.Error(), "c.yaml:") {
		t.Fatalf("broken file: err = %v", err)
	}
	// A missing path is an error too.
	if _, err := Load(context.Background(), []string{filepath.Join(dir, "nope")}, testRegistry(t)); err == nil {
		t.Fatal("missing path loaded")
	}
}

func loadOne(t testing.TB, body string, opts ...Option) *Set {
	t.Helper()
	p := writeFile(t, t.TempDir(), "p.yaml", body)
	set, err := Load(context.Background(), []string{p}, testRegistry(t), opts...)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return set
}

func pb(match string, steps string) string {
	return fmt.Sprintf("apiVersion: quell.dev/v1\nkind: Playbook\nmetadata: {name: p}\nspec:\n  match: %q\n  steps:\n%s", match, steps)
}

func TestEvaluate(t *testing.T) {
	logStep := "    - {action: log, params: {message: hit}}\n"
	tests := []struct {
		name     string
		match    string
		steps    string
		mutate   func(*event.Event, *event.Context)
		plans    int
		errParam string // "" with wantErr: a match error
		wantErr  string
	}{
		{name: "has on absent object is false, not an error", match: `has(event.kubernetes.pod)`, steps: logStep},
		{name: "optional syntax", match: `event.?kubernetes.?pod.orValue("") == "" && event.?labels.?site.orValue("") == "par1"`, steps: logStep, plans: 1},
		{name: "cidr helper", match: `cidr("203.0.113.0/24").containsIP(event.src_endpoint.ip)`, steps: logStep, plans: 1},
		{name: "cidr helper outside", match: `cidr("10.0.0.0/8").containsIP(event.src_endpoint.ip)`, steps: logStep},
		{name: "numbers compare across int and double", match: `event.severity_id >= 4 && event.severity_id == 4 && enrichment.threat.score > 0.5`, steps: logStep, plans: 1},
		{name: "strings ext", match: `event.rule.startsWith("crowdsecurity/") && event.rule.split("/")[1] == "ssh-bf"`, steps: logStep, plans: 1},
		{name: "incident variable", match: `incident.id == "inc-7"`, steps: logStep, plans: 1},
		{name: "no such key is an error, not a crash", match: `event.labels.missing == "x"`, steps: logStep, wantErr: "no such key"},
		{name: "cost limit", match: `[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, a+b+c+d > 0))))`, steps: logStep, wantErr: "cost limit"},
		{name: "render: missing key", match: `true`, steps: "    - {action: log, params: {message: '{{ .event.kubernetes.pod }}'}}\n", errParam: "message", wantErr: "pod"},
		{name: "render: index of missing key", match: `true`, steps: "    - {action: log, params: {message: '{{ index .event.labels \"nope\" }}'}}\n", errParam: "message", wantErr: "missing"},
		{name: "render: default helper", match: `true`, steps: "    - {action: log, params: {message: '{{ index .event.labels \"nope\" | default \"none\" }}/{{ .event.labels.site | upper }}'}}\n", plans: 1},
		{name: "hostile value rejected by type", match: `true`,
			steps:    "    - {action: kube.label, params: {namespace: prod, pod: '{{ .event.actor.user }}'}}\n",
			mutate:   func(e *event.Event, _ *event.Context) { e.Actor = &event.Actor{User: "$(touch /tmp/pwned)"} },
			errParam: "pod", wantErr: "not a DNS-1123 name"},
		{name: "hostile address rejected by type", match: `true`,
			steps:    "    - {action: firewall.block, params: {address: '{{ .event.labels.site }}'}}\n",
			mutate:   func(e *event.Event, _ *event.Context) { e.Labels["site"] = "1.2.3.4; rm -rf /" },
			errParam: "address", wantErr: "not a CIDR"},
		{name: "number renders as integer", match: `true`,
			steps: "    - {action: kube.label, params: {namespace: prod, pod: web, port: '{{ .event.dst_endpoint.port }}'}}\n", plans: 1},
		{name: "failing step does not stop the others", match: `true`,
			steps:    "    - {action: log, params: {message: '{{ .event.nope }}'}}\n" + logStep,
			plans:    1,
			errParam: "message", wantErr: "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := loadOne(t, pb(tt.match, tt.steps), WithConfig(Config{MatchCostLimit: 1000}))
			ev, ec := bfEvent("203.0.113.9")
			if tt.mutate != nil {
				tt.mutate(ev, ec)
			}
			plans, errs := set.Evaluate(context.Background(), ev, ec)
			if len(plans) != tt.plans {
				t.Errorf("plans = %+v, want %d", plans, tt.plans)
			}
			if tt.wantErr == "" {
				if len(errs) != 0 {
					t.Fatalf("errors: %v", errs)
				}
				return
			}
			if len(errs) != 1 {
				t.Fatalf("errors = %v, want one", errs)
			}
			e := errs[0]
			if !strings.Contains(e.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", e.Error(), tt.wantErr)
			}
			if e.Param != tt.errParam {
				t.Errorf("param = %q, want %q", e.Param, tt.errParam)
			}
			if tt.errParam == "" && e.Step != -1 {
				t.Errorf("match error has step %d", e.Step)
			}
			if tt.errParam != "" && (e.Step != 0 || e.Playbook != "p") {
				t.Errorf("render error at %s/%d", e.Playbook, e.Step)
			}
		})
	}
}

func TestRenderedNumbers(t *testing.T) {
	set := loadOne(t, pb("event.dst_endpoint.port == 10000 && risk.score > 72.0", `    - action: kube.label
      params: {namespace: prod, pod: web, port: '{{ .event.dst_endpoint.port }}'}
    - action: log
      params: {message: 'asn={{ .event.src_endpoint.asn }} score={{ .risk.score }} threat={{ .enrichment.threat.score }}'}
`))
	ev, ec := bfEvent("203.0.113.9")
	ev.DstEndpoint.Port = 10000
	ev.SrcEndpoint.ASN = 4200000000
	plans, errs := set.Evaluate(context.Background(), ev, ec)
	if len(errs) != 0 || len(plans) != 2 {
		t.Fatalf("plans %+v errs %v", plans, errs)
	}
	if got := plans[0].Params["port"]; got != "10000" {
		t.Errorf("port = %q", got)
	}
	if got := plans[1].Params["message"]; got != "asn=4200000000 score=72.5 threat=0.9" {
		t.Errorf("message = %q", got)
	}
}

func TestEvaluateCanceledContext(t *testing.T) {
	// A long comprehension is interrupted when the caller's context ends.
	set := loadOne(t, pb(`lists.range(1000).all(x, x >= 0)`, "    - {action: log, params: {message: x}}\n"))
	ev, ec := bfEvent("203.0.113.9")
	if plans, errs := set.Evaluate(context.Background(), ev, ec); len(plans) != 1 || len(errs) != 0 {
		t.Fatalf("live context: plans %v errs %v", plans, errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	plans, errs := set.Evaluate(ctx, ev, ec)
	if len(plans) != 0 || len(errs) != 1 || errs[0].Step != -1 {
		t.Fatalf("canceled context: plans %v errs %v", plans, errs)
	}
}

func TestMetrics(t *testing.T) {
	r := prometheus.NewRegistry()
	m := NewMetrics(r)
	dir := t.TempDir()
	writeFile(t, dir, "bf.yaml", bruteForce)
	set, err := Load(context.Background(), []string{dir}, testRegistry(t), WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	ev, ec := bfEvent("203.0.113.9")
	set.Evaluate(context.Background(), ev, ec)
	set.Evaluate(context.Background(), ev, nil) // error
	ec.Risk.Score = 1
	set.Evaluate(context.Background(), ev, ec) // nomatch
	for result, want := range map[string]float64{"match": 1, "error": 1, "nomatch": 1} {
		if got := testutil.ToFloat64(m.evaluations.WithLabelValues("block-brute-force", result)); got != want {
			t.Errorf("evaluations{result=%s} = %v, want %v", result, got, want)
		}
	}
	if got := testutil.CollectAndCount(m.duration); got != 1 {
		t.Errorf("duration series = %d", got)
	}
	if got := testutil.ToFloat64(m.loaded); got != 1 {
		t.Errorf("loaded = %v", got)
	}
	if _, err := Load(context.Background(), []string{filepath.Join(dir, "missing.yaml")}, testRegistry(t), WithMetrics(m)); err == nil {
		t.Fatal("want error")
	}
	if got := testutil.ToFloat64(m.loads.WithLabelValues("error")); got != 1 {
		t.Errorf("loads{error} = %v", got)
	}
	if got := testutil.ToFloat64(m.loaded); got != 1 {
		t.Errorf("a failed load changed loaded to %v", got)
	}
}

func TestEvaluateConcurrent(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "bf.yaml", bruteForce)
	set, err := Load(context.Background(), []string{dir}, testRegistry(t), WithMetrics(NewMetrics(prometheus.NewRegistry())))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := fmt.Sprintf("203.0.113.%d", g+1)
			ev, ec := bfEvent(ip)
			for i := 0; i < 50; i++ {
				plans, errs := set.Evaluate(context.Background(), ev, ec)
				if len(errs) != 0 || len(plans) != 2 || plans[0].Params["address"] != ip {
					errc <- fmt.Errorf("goroutine %d: plans %v errs %v", g, plans, errs)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Paths: []string{""}, MatchCostLimit: 1, MaxMatchLength: 1}, "playbooks.paths[0]"},
		{Config{MatchCostLimit: 0, MaxMatchLength: 1}, "playbooks.match_cost_limit"},
		{Config{MatchCostLimit: 1, MaxMatchLength: 0}, "playbooks.max_match_length"},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want %s", tt.cfg, err, tt.want)
		}
	}
}
