package builtin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/action"
)

// siteBlock is a stand-in for an operator's blocking script: it keeps a set
// of addresses in $STATE, and appends every invocation (argv, one element
// per line between brackets, then the QUELL_* variables) to $STATE.log.
const siteBlock = `#!/bin/sh
state="$STATE"
touch "$state"
{
  echo "argc=$#"
  for a in "$@"; do printf '[%s]\n' "$a"; done
  echo "txn=$QUELL_TXN_ID expires=$QUELL_EXPIRES_AT phase=$QUELL_PHASE action=$QUELL_ACTION"
} >> "$state.log"
case "$1" in
  add)   grep -qxF -- "$2" "$state" 2>/dev/null || printf '%s\n' "$2" >> "$state" ;;
  del)   grep -vxF -- "$2" "$state" > "$state.tmp"; mv "$state.tmp" "$state" ;;
  check) grep -qxF -- "$2" "$state" ;;
  fail)  echo "boom on stderr" >&2; exit "$2" ;;
  *)     exit 64 ;;
esac
`

type fixture struct {
	dir, script, state string
	reg                *action.Registry
	metrics            *prometheus.Registry
	logs               *bytes.Buffer
}

func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func newFixture(t *testing.T, mutate func(*Config, string)) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), reg: action.NewRegistry(), metrics: prometheus.NewRegistry(), logs: &bytes.Buffer{}}
	f.script = writeScript(t, f.dir, "site-block", siteBlock)
	f.state = filepath.Join(f.dir, "state")
	cfg := DefaultConfig()
	cfg.Exec.Commands = map[string]Command{
		"block-ip": {
			Description:        "Block an address with the site's own script",
			Params:             map[string]ParamConfig{"ip": {Type: action.TypeIP, Required: true}, "reason": {Type: action.TypeString}},
			Apply:              []string{f.script, "add", "{ip}", "--reason={reason}"},
			Verify:             []string{f.script, "check", "{ip}"},
			Revert:             []string{f.script, "del", "{ip}"},
			Check:              []string{f.script, "check", "{ip}"},
			Timeout:            5 * time.Second,
			RetryableExitCodes: []int{75},
			Env:                map[string]string{"STATE": f.state},
			KeyParams:          []string{"ip"},
		},
	}
	if mutate != nil {
		mutate(&cfg, f.script)
	}
	log := slogJSON(f.logs)
	if err := Register(f.reg, cfg, log, f.metrics, nil); err != nil {
		t.Fatalf("Register: %v", err)
	}
	return f
}

func (f *fixture) build(t *testing.T, name string, params map[string]string) action.Action {
	t.Helper()
	a, _, err := f.reg.Build(name, params)
	if err != nil {
		t.Fatalf("Build %s %v: %v", name, params, err)
	}
	return a
}

func (f *fixture) stateLines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(f.state)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

func (f *fixture) invocations(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(f.state + ".log")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

var eff = action.Effect{TxnID: "txn-42", IncidentID: "inc-1", ExpiresAt: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}

func TestExecLifecycle(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	a := f.build(t, "exec.block-ip", map[string]string{"ip": "::ffff:203.0.113.9", "reason": "ssh brute force"})
	if a.Key() != "exec.block-ip/ip=203.0.113.9" {
		t.Errorf("Key = %q", a.Key())
	}
	if got := a.Targets(); len(got) != 1 || got[0] != (action.Target{Kind: "ip", Value: "203.0.113.9"}) {
		t.Errorf("Targets = %v", got)
	}
	before, err := a.Check(ctx)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if string(before) != `{"checked":true,"present":false}` {
		t.Errorf("Before = %s", before)
	}
	if err := a.Verify(ctx, eff); err == nil {
		t.Fatal("Verify before Apply succeeded")
	}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got := f.stateLines(t); len(got) != 1 || got[0] != "203.0.113.9" {
		t.Fatalf("state after apply = %v", got)
	}
	inv := f.invocations(t)
	for _, want := range []string{
		"argc=3\n[add]\n[203.0.113.9]\n[--reason=ssh brute force]\ntxn=txn-42 expires=2026-05-01T12:00:00Z phase=apply action=exec.block-ip",
	} {
		if !strings.Contains(inv, want) {
			t.Errorf("invocations do not contain %q:\n%s", want, inv)
		}
	}
	if err := a.Revert(ctx, before); err != nil {
		t.Fatalf("Revert: %v", err)
	}
	if got := f.stateLines(t); len(got) != 0 {
		t.Fatalf("state after revert = %v", got)
	}
	for _, c := range []struct {
		phase, result string
		want          float64
	}{{"apply", "ok", 1}, {"check", "absent", 1}, {"verify", "failed", 1}, {"verify", "ok", 1}, {"revert", "ok", 1}} {
		if got := counterValue(t, f, c.phase, c.result); got != c.want {
			t.Errorf("runs{%s,%s} = %v, want %v", c.phase, c.result, got, c.want)
		}
	}
}

// counterValue reads one exec run counter from the registry the actions
// registered with.
func counterValue(t *testing.T, f *fixture, phase, result string) float64 {
	t.Helper()
	mfs, err := f.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "quell_action_exec_runs_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["command"] == "block-ip" && labels["phase"] == phase && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func slogJSON(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestExecRevertKeepsPreexistingEffect(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	if err := os.WriteFile(f.state, []byte("198.51.100.4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := f.build(t, "exec.block-ip", map[string]string{"ip": "198.51.100.4"})
	before, err := a.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != `{"checked":true,"present":true}` {
		t.Fatalf("Before = %s", before)
	}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Revert(ctx, before); err != nil {
		t.Fatal(err)
	}
	if got := f.stateLines(t); len(got) != 1 || got[0] != "198.51.100.4" {
		t.Fatalf("revert removed a pre-existing effect: state = %v", got)
	}
	if strings.Contains(f.invocations(t), "[del]") {
		t.Fatal("revert command ran for a pre-existing effect")
	}
}

func TestExecArgvIsNotShellInterpreted(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	pwned := filepath.Join(f.dir, "pwned")
	hostile := []string{
		"$(touch " + pwned + ")",
		"`touch " + pwned + "`; touch " + pwned,
		"x && touch " + pwned + " || true",
		"a b c * ? ~ > " + pwned + " '\"\\",
		"{ip}", // a placeholder inside a value stays literal
	}
	for _, h := range hostile {
		// A typed parameter rejects it outright.
		if _, _, err := f.reg.Build("exec.block-ip", map[string]string{"ip": h}); err == nil {
			t.Errorf("ip %q accepted", h)
		}
		// A string parameter passes it verbatim, as part of one argv element.
		a := f.build(t, "exec.block-ip", map[string]string{"ip": "192.0.2.1", "reason": h})
		if err := a.Apply(ctx, eff); err != nil {
			t.Fatalf("Apply with reason %q: %v", h, err)
		}
		if inv := f.invocations(t); !strings.Contains(inv, "argc=3\n[add]\n[192.0.2.1]\n[--reason="+h+"]\n") {
			t.Errorf("reason %q not passed verbatim as one element:\n%s", h, inv)
		}
	}
	if _, err := os.Stat(pwned); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a hostile value was executed: %s exists (err %v)", pwned, err)
	}
	// A value that would read as an option is refused.
	if _, _, err := f.reg.Build("exec.block-ip", map[string]string{"ip": "192.0.2.1", "reason": "--flush-all"}); err == nil || !strings.Contains(err.Error(), "must not start with '-'") {
		t.Errorf("leading dash: err = %v", err)
	}
	// Control characters never get that far.
	if _, _, err := f.reg.Build("exec.block-ip", map[string]string{"ip": "192.0.2.1", "reason": "a\nb"}); err == nil {
		t.Error("newline accepted")
	}
}

func TestExecMinimalEnvironment(t *testing.T) {
	t.Setenv("QUELL_TEST_SECRET", "do-not-leak")
	f := newFixture(t, func(c *Config, _ string) {
		c.Exec.Commands["dump-env"] = Command{
			Params: map[string]ParamConfig{"ip": {Type: action.TypeIP, Required: true}},
			Apply:  []string{"/usr/bin/env"},
			Env:    map[string]string{"SITE": "par1"},
		}
	})
	a := f.build(t, "exec.dump-env", map[string]string{"ip": "192.0.2.7"})
	ea := a.(*execAction)
	env := strings.Join(ea.env("apply", eff), "\n")
	for _, want := range []string{"PATH=" + DefaultExecPath, "SITE=par1", "QUELL_TXN_ID=txn-42", "QUELL_EXPIRES_AT=2026-05-01T12:00:00Z", "QUELL_PHASE=apply", "QUELL_INCIDENT_ID=inc-1"} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %s: %s", want, env)
		}
	}
	// Run it for real and read what the process saw, from the log record.
	if err := a.Apply(context.Background(), eff); err != nil {
		t.Fatal(err)
	}
	logs := f.logs.String()
	if strings.Contains(logs, "do-not-leak") || strings.Contains(logs, "HOME=") {
		t.Fatalf("the command inherited quell's environment:\n%s", logs)
	}
	if !strings.Contains(logs, `QUELL_TXN_ID=txn-42`) || !strings.Contains(logs, `SITE=par1`) {
		t.Fatalf("the command did not see its environment:\n%s", logs)
	}
}

func TestExecExitCodes(t *testing.T) {
	f := newFixture(t, func(c *Config, script string) {
		c.Exec.Commands["fail"] = Command{
			Params:             map[string]ParamConfig{"code": {Type: action.TypeInt, Required: true, Min: 1, Max: 255}},
			Apply:              []string{script, "fail", "{code}"},
			RetryableExitCodes: []int{75},
			Env:                map[string]string{"STATE": filepath.Join(c.Exec.Commands["block-ip"].Env["STATE"])},
		}
	})
	ctx := context.Background()
	tests := []struct {
		code      string
		retryable bool
	}{{"75", true}, {"3", false}, {"1", false}}
	for _, tt := range tests {
		a := f.build(t, "exec.fail", map[string]string{"code": tt.code})
		err := a.Apply(ctx, eff)
		if err == nil {
			t.Fatalf("exit %s: no error", tt.code)
		}
		if _, ok := action.IsRetryable(err); ok != tt.retryable {
			t.Errorf("exit %s: retryable = %v, want %v (%v)", tt.code, ok, tt.retryable, err)
		}
		if !strings.Contains(err.Error(), "exit status "+tt.code) || !strings.Contains(err.Error(), "stderr: boom on stderr") {
			t.Errorf("exit %s: error lacks status or stderr: %v", tt.code, err)
		}
	}
	// A check exit code other than 0 or 1 is an error, not "absent".
	g := newFixture(t, func(c *Config, script string) {
		cmd := c.Exec.Commands["block-ip"]
		cmd.Check = []string{script, "fail", "75"}
		c.Exec.Commands["block-ip"] = cmd
	})
	if _, err := g.build(t, "exec.block-ip", map[string]string{"ip": "192.0.2.1"}).Check(ctx); err == nil {
		t.Fatal("check exit 75 taken as absent")
	} else if _, ok := action.IsRetryable(err); !ok {
		t.Errorf("check exit 75 not retryable: %v", err)
	}
}

func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	slow := writeScript(t, dir, "slow", `#!/bin/sh
sleep 60 &
echo $! > "$PIDS/child"
echo $$ > "$PIDS/parent"
wait
`)
	f := newFixture(t, func(c *Config, _ string) {
		c.Exec.Commands["slow"] = Command{
			Apply:   []string{slow},
			Timeout: 300 * time.Millisecond,
			Env:     map[string]string{"PIDS": dir},
		}
	})
	a := f.build(t, "exec.slow", nil)
	start := time.Now()
	err := a.Apply(context.Background(), eff)
	elapsed := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Fatalf("Apply = %v, want a timeout", err)
	}
	if _, ok := action.IsRetryable(err); !ok {
		t.Errorf("timeout not retryable: %v", err)
	}
	if elapsed > 5*time.Second {
		t.Errorf("Apply took %s after a 300ms timeout", elapsed)
	}
	for _, who := range []string{"parent", "child"} {
		b, err := os.ReadFile(filepath.Join(dir, who))
		if err != nil {
			t.Fatalf("%s pid: %v", who, err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		waitDead(t, who, pid)
	}
}

// waitDead polls until pid is gone or a zombie, with a deadline.
func waitDead(t *testing.T, who string, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
			if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s process %d still alive after the timeout", who, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestExecOutputIsBounded(t *testing.T) {
	dir := t.TempDir()
	loud := writeScript(t, dir, "loud", "#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\0' x >&2\nexit 2\n")
	f := newFixture(t, func(c *Config, _ string) {
		c.Exec.MaxOutputBytes = 1024
		c.Exec.Commands["loud"] = Command{Apply: []string{loud}}
	})
	err := f.build(t, "exec.loud", nil).Apply(context.Background(), eff)
	if err == nil {
		t.Fatal("no error")
	}
	if len(err.Error()) > 2048 || !strings.Contains(err.Error(), "[298976 bytes truncated]") {
		t.Fatalf("error is %d bytes: %.300s", len(err.Error()), err)
	}
}

func TestExecMissingProgram(t *testing.T) {
	f := newFixture(t, func(c *Config, _ string) {
		c.Exec.Commands["gone"] = Command{Apply: []string{"/nonexistent/quell-test-bin"}}
	})
	err := f.build(t, "exec.gone", nil).Apply(context.Background(), eff)
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("err = %v", err)
	}
	if _, ok := action.IsRetryable(err); ok {
		t.Error("a missing program is not retryable")
	}
}

func TestExecSpec(t *testing.T) {
	f := newFixture(t, nil)
	d, ok := f.reg.Lookup("exec.block-ip")
	if !ok {
		t.Fatal("exec.block-ip not registered")
	}
	s := d.Spec
	if s.Provider != "exec" || !s.Reversible || len(s.Params) != 2 || s.Params[0].Name != "ip" || s.Params[0].Type != action.TypeIP || !s.Params[0].Required {
		t.Fatalf("spec = %+v", s)
	}
	if len(s.Needs) != 1 || s.Needs[0] != "exec "+f.script {
		t.Errorf("needs = %v", s.Needs)
	}
	if _, ok := f.reg.Lookup("log"); !ok {
		t.Error("log not registered")
	}
	// Registering twice into one registry is a wiring error, reported.
	if err := Register(f.reg, DefaultConfig(), nil, nil, nil); err == nil {
		t.Error("second Register succeeded")
	}
}

func TestLogAction(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	a := f.build(t, "log", map[string]string{"message": "blocked 203.0.113.9", "level": "warn"})
	if a.Key() == f.build(t, "log", map[string]string{"message": "blocked 203.0.113.10", "level": "warn"}).Key() {
		t.Error("two messages share a key")
	}
	if a.Key() != f.build(t, "log", map[string]string{"message": "blocked 203.0.113.9", "level": "warn"}).Key() {
		t.Error("one message, two keys")
	}
	if !strings.HasPrefix(a.Key(), "log/") {
		t.Errorf("key = %q", a.Key())
	}
	before, err := a.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Revert(ctx, before); err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(f.logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if m["action"] == "log" {
			recs = append(recs, m)
		}
	}
	if len(recs) != 2 {
		t.Fatalf("records = %v", recs)
	}
	r := recs[0]
	if r["level"] != "WARN" || r["msg"] != "blocked 203.0.113.9" || r["txn_id"] != "txn-42" || r["incident_id"] != "inc-1" || r["expires_at"] != "2026-05-01T12:00:00Z" {
		t.Errorf("apply record = %v", r)
	}
	if recs[1]["msg"] != "revert: blocked 203.0.113.9" {
		t.Errorf("revert record = %v", recs[1])
	}
	// Default level, and a level outside the enum.
	if a := f.build(t, "log", map[string]string{"message": "x"}); a.(*logAction).level != "info" {
		t.Errorf("default level = %q", a.(*logAction).level)
	}
	if _, _, err := f.reg.Build("log", map[string]string{"message": "x", "level": "panic"}); err == nil {
		t.Error("level panic accepted")
	}
	if _, _, err := f.reg.Build("log", map[string]string{}); err == nil {
		t.Error("missing message accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	base := func() Command {
		return Command{
			Params: map[string]ParamConfig{"ip": {Type: action.TypeIP, Required: true}},
			Apply:  []string{"/usr/local/sbin/site-block", "add", "{ip}"},
		}
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"relative program", func(c *Config) { x := base(); x.Apply[0] = "site-block"; c.Exec.Commands["block-ip"] = x }, "exec.commands.block-ip.apply[0]: must be an absolute path"},
		{"placeholder program", func(c *Config) { x := base(); x.Verify = []string{"/{ip}"}; c.Exec.Commands["block-ip"] = x }, "exec.commands.block-ip.verify[0]: the program cannot be a placeholder"},
		{"unknown placeholder", func(c *Config) {
			x := base()
			x.Revert = []string{"/bin/x", "{addr}"}
			c.Exec.Commands["block-ip"] = x
		}, "exec.commands.block-ip.revert[1]: placeholder {addr} names no parameter"},
		{"no apply", func(c *Config) { x := base(); x.Apply = nil; c.Exec.Commands["block-ip"] = x }, "exec.commands.block-ip.apply: required"},
		{"bad type", func(c *Config) {
			x := base()
			x.Params["ip"] = ParamConfig{Type: "ipaddr"}
			c.Exec.Commands["block-ip"] = x
		}, "exec.commands.block-ip.params.ip.type: unknown type \"ipaddr\""},
		{"bad default", func(c *Config) {
			x := base()
			x.Params["ip"] = ParamConfig{Type: action.TypeIP, Default: "nope"}
			c.Exec.Commands["block-ip"] = x
		}, "exec.commands.block-ip.params.ip.default: not an IP address"},
		{"enum without values", func(c *Config) {
			x := base()
			x.Params["dir"] = ParamConfig{Type: action.TypeEnum}
			c.Exec.Commands["block-ip"] = x
		}, "exec.commands.block-ip.params.dir.enum: required"},
		{"bad name", func(c *Config) { c.Exec.Commands["Block_IP"] = base() }, "exec.commands.Block_IP: name must be"},
		{"bad exit code", func(c *Config) { x := base(); x.RetryableExitCodes = []int{0}; c.Exec.Commands["block-ip"] = x }, "exec.commands.block-ip.retryable_exit_codes[0]: must be 1..255"},
		{"timeout too long", func(c *Config) { x := base(); x.Timeout = time.Hour; c.Exec.Commands["block-ip"] = x }, "exec.commands.block-ip.timeout"},
		{"env PATH", func(c *Config) {
			x := base()
			x.Env = map[string]string{"PATH": "/tmp"}
			c.Exec.Commands["block-ip"] = x
		}, "exec.commands.block-ip.env.PATH: set exec.path instead"},
		{"env QUELL_", func(c *Config) {
			x := base()
			x.Env = map[string]string{"QUELL_TXN_ID": "x"}
			c.Exec.Commands["block-ip"] = x
		}, "exec.commands.block-ip.env.QUELL_TXN_ID"},
		{"key param", func(c *Config) { x := base(); x.KeyParams = []string{"addr"}; c.Exec.Commands["block-ip"] = x }, "exec.commands.block-ip.key_params[0]"},
		{"relative path entry", func(c *Config) { c.Exec.Path = "/usr/bin:bin" }, "exec.path"},
		{"log level", func(c *Config) { c.Log.Level = "loud" }, "log.level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Exec.Commands = map[string]Command{}
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
			if rerr := Register(action.NewRegistry(), c, nil, nil, nil); rerr == nil {
				t.Fatal("Register accepted an invalid config")
			}
		})
	}
}
