package builtin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/quell-ir/quell/internal/action"
)

// Phases of an exec action, as passed in QUELL_PHASE and used as a metric
// label.
const (
	phaseCheck  = "check"
	phaseApply  = "apply"
	phaseVerify = "verify"
	phaseRevert = "revert"
)

// execDef is one configured command, shared by every action built from it.
type execDef struct {
	name      string // the command's name; the action is "exec." + name
	action    string // the action's name when not "exec." + name (breakglass.grant)
	cmd       Command
	params    []action.Param // sorted by name
	timeout   time.Duration
	path      string
	maxOutput int
	log       *slog.Logger
	tracer    trace.Tracer
	m         *metrics
}

func (d *execDef) actionName() string {
	if d.action != "" {
		return d.action
	}
	return "exec." + d.name
}

func (d *execDef) spec() action.Spec {
	needs := []string{"exec " + d.cmd.Apply[0]}
	for _, argv := range [][]string{d.cmd.Verify, d.cmd.Revert, d.cmd.Check} {
		if len(argv) > 0 && !contains(needs, "exec "+argv[0]) {
			needs = append(needs, "exec "+argv[0])
		}
	}
	example := "action: " + d.actionName()
	if len(d.params) > 0 {
		p := d.params[0]
		for _, q := range d.params {
			if q.Required {
				p = q
				break
			}
		}
		example += fmt.Sprintf("\nparams: {%s: '{{ .event.src_endpoint.ip }}'}", p.Name)
	}
	desc := d.cmd.Description
	if desc == "" {
		desc = "Operator command " + d.cmd.Apply[0]
	}
	provider := "exec"
	if d.action != "" {
		provider = strings.SplitN(d.action, ".", 2)[0]
	}
	return action.Spec{
		Name:        d.actionName(),
		Provider:    provider,
		Description: desc,
		Params:      d.params,
		Reversible:  len(d.cmd.Revert) > 0,
		Eradication: d.cmd.Eradication,
		Needs:       needs,
		Example:     example,
	}
}

// newAction is the action.Constructor: it fixes the argument values of one
// transaction, in their canonical form (an IPv4-mapped address unmapped, a
// prefix masked).
func (d *execDef) newAction(v action.Values) (action.Action, error) {
	a := &execAction{def: d, values: map[string]string{}}
	for _, p := range d.params {
		if !v.Has(p.Name) {
			continue
		}
		s := canonical(p, v)
		if strings.HasPrefix(s, "-") && !d.cmd.Params[p.Name].AllowLeadingDash {
			return nil, fmt.Errorf("parameter %q: must not start with '-' (it could be read as an option; set allow_leading_dash to permit)", p.Name)
		}
		a.values[p.Name] = s
		switch p.Type {
		case action.TypeIP:
			a.targets = append(a.targets, action.Target{Kind: "ip", Value: s})
		case action.TypeCIDR:
			a.targets = append(a.targets, action.Target{Kind: "cidr", Value: s})
		case action.TypeCIDRList:
			for _, pf := range v.Prefixes(p.Name) {
				a.targets = append(a.targets, action.Target{Kind: "cidr", Value: pf.String()})
			}
		case action.TypeName:
			a.targets = append(a.targets, action.Target{Kind: "name", Value: s})
		}
		if d.action == BreakGlassAction && p.Name == "person" {
			a.targets = append(a.targets, action.Target{Kind: "user", Value: s})
		}
	}
	keyParams := d.cmd.KeyParams
	if len(keyParams) == 0 {
		for _, p := range d.params {
			keyParams = append(keyParams, p.Name)
		}
	}
	sort.Strings(keyParams)
	var parts []string
	for _, k := range keyParams {
		if s, ok := a.values[k]; ok {
			parts = append(parts, k+"="+url.QueryEscape(s))
		}
	}
	a.key = d.actionName() + "/" + strings.Join(parts, ",")
	return a, nil
}

func canonical(p action.Param, v action.Values) string {
	switch p.Type {
	case action.TypeIP:
		return v.IP(p.Name).String()
	case action.TypeCIDR:
		return v.Prefix(p.Name).String()
	case action.TypeCIDRList:
		pfs := v.Prefixes(p.Name)
		out := make([]string, len(pfs))
		for i, pf := range pfs {
			out[i] = pf.String()
		}
		return strings.Join(out, ",")
	case action.TypeInt:
		return strconv.Itoa(v.Int(p.Name))
	case action.TypePort:
		return strconv.Itoa(int(v.Port(p.Name)))
	case action.TypeBool:
		return strconv.FormatBool(v.Bool(p.Name))
	case action.TypeDuration:
		return v.Duration(p.Name).String()
	}
	return v.Raw()[p.Name]
}

type execAction struct {
	def     *execDef
	values  map[string]string
	targets []action.Target
	key     string
}

// execBefore is what Check saw, persisted in the journal.
type execBefore struct {
	Checked bool `json:"checked"` // a check command ran
	Present bool `json:"present"` // it said the effect was already there
}

func (a *execAction) Key() string              { return a.key }
func (a *execAction) Targets() []action.Target { return a.targets }

func (a *execAction) Check(ctx context.Context) (action.Before, error) {
	b := execBefore{}
	if len(a.def.cmd.Check) > 0 {
		code, err := a.run(ctx, phaseCheck, a.def.cmd.Check, action.Effect{})
		switch {
		case err == nil:
			b = execBefore{Checked: true, Present: true}
		case code == 1:
			b = execBefore{Checked: true, Present: false}
		default:
			return nil, err
		}
	}
	raw, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("%s check: %w", a.def.actionName(), err)
	}
	return raw, nil
}

// Apply runs the apply command. It runs even when Check found the effect
// present: the command must be idempotent, and running it refreshes what it
// maintains (an expiry, a comment).
func (a *execAction) Apply(ctx context.Context, eff action.Effect) error {
	_, err := a.run(ctx, phaseApply, a.def.cmd.Apply, eff)
	return err
}

func (a *execAction) Verify(ctx context.Context, eff action.Effect) error {
	if len(a.def.cmd.Verify) == 0 {
		return nil // documented: without verify, a successful apply is trusted
	}
	code, err := a.run(ctx, phaseVerify, a.def.cmd.Verify, eff)
	if err != nil && code >= 0 && !a.def.retryable(code) {
		return fmt.Errorf("%s verify: effect not present: %w", a.def.actionName(), err)
	}
	return err
}

// Revert runs the revert command unless Check found the effect already
// present: an effect quell did not create is never removed by quell.
func (a *execAction) Revert(ctx context.Context, before action.Before) error {
	var b execBefore
	if len(before) > 0 && string(before) != "null" {
		if err := json.Unmarshal(before, &b); err != nil {
			return fmt.Errorf("%s revert: decode pre-check state: %w", a.def.actionName(), err)
		}
	}
	if b.Present {
		a.def.log.InfoContext(ctx, "exec revert skipped: the effect existed before quell applied it",
			"action", a.def.actionName(), "key", a.key)
		return nil
	}
	if len(a.def.cmd.Revert) == 0 {
		a.def.log.WarnContext(ctx, "exec action has no revert command; nothing undone", "action", a.def.actionName(), "key", a.key)
		return nil
	}
	_, err := a.run(ctx, phaseRevert, a.def.cmd.Revert, action.Effect{})
	return err
}

func (d *execDef) retryable(code int) bool {
	for _, c := range d.cmd.RetryableExitCodes {
		if c == code {
			return true
		}
	}
	return false
}

// argv fills the placeholders of one argv template. Each element stays one
// argument whatever the value holds: no shell, no splitting, no globbing.
// The replacement is not rescanned, so a value containing "{x}" stays
// literal.
func (a *execAction) argv(tmpl []string) []string {
	out := make([]string, len(tmpl))
	for i, arg := range tmpl {
		out[i] = placeholderRE.ReplaceAllStringFunc(arg, func(m string) string {
			return a.values[m[1:len(m)-1]] // an absent optional parameter is empty
		})
	}
	return out
}

func (a *execAction) env(phase string, eff action.Effect) []string {
	env := []string{"PATH=" + a.def.path}
	for _, k := range sortedKeys(a.def.cmd.Env) {
		env = append(env, k+"="+a.def.cmd.Env[k])
	}
	exp := ""
	if !eff.ExpiresAt.IsZero() {
		exp = eff.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return append(env,
		"QUELL_ACTION="+a.def.actionName(),
		"QUELL_PHASE="+phase,
		"QUELL_TXN_ID="+eff.TxnID,
		"QUELL_INCIDENT_ID="+eff.IncidentID,
		"QUELL_EXPIRES_AT="+exp,
	)
}

// run executes one phase. It returns the exit code (-1 when the process did
// not exit normally: not started, killed, timed out) and an error for any
// outcome but exit 0. The error carries the bounded stdout and stderr, and is
// action.Retryable for a timeout or a configured retryable exit code.
func (a *execAction) run(ctx context.Context, phase string, tmpl []string, eff action.Effect) (int, error) {
	d := a.def
	argv := a.argv(tmpl)
	ctx, span := d.tracer.Start(ctx, "exec "+d.name+" "+phase, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("quell.action", d.actionName()), attribute.String("quell.phase", phase),
			attribute.String("process.executable.path", argv[0])))
	defer span.End()

	runCtx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, argv[0], argv[1:]...)
	cmd.Env = a.env(phase, eff)
	cmd.Dir = "/"
	stdout, stderr := &capped{max: d.maxOutput}, &capped{max: d.maxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Own process group, killed whole on timeout: a script's children
	// (sleep, curl) must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// If a grandchild escaped the group and holds the pipes, stop waiting.
	cmd.WaitDelay = time.Second

	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	d.m.execDuration.WithLabelValues(d.name, phase).Observe(elapsed.Seconds())

	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	span.SetAttributes(attribute.Int("process.exit.code", code))
	result, outErr := "ok", error(nil)
	describe := func(what string) error {
		return fmt.Errorf("%s %s: %s%s", d.actionName(), phase, what, outputs(stdout, stderr))
	}
	switch {
	case err == nil:
	case errors.Is(runCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
		result = "timeout"
		outErr = action.Retryable(describe(fmt.Sprintf("timed out after %s (process group killed)", d.timeout)), 0)
		code = -1
	case ctx.Err() != nil:
		result = "canceled"
		outErr = fmt.Errorf("%s %s: %w", d.actionName(), phase, ctx.Err())
		code = -1
	case code == 1 && phase == phaseCheck:
		result = "absent"
		outErr = describe("exit status 1 (absent)")
	case code > 0 && d.retryable(code):
		result = "retryable"
		outErr = action.Retryable(describe(fmt.Sprintf("exit status %d (retryable)", code)), 0)
	case code > 0:
		result = "failed"
		outErr = describe(fmt.Sprintf("exit status %d", code))
	default:
		result = "error"
		outErr = describe(err.Error())
	}
	d.m.execRuns.WithLabelValues(d.name, phase, result).Inc()
	level := slog.LevelInfo
	if phase == phaseCheck || phase == phaseVerify {
		level = slog.LevelDebug
	}
	if outErr != nil && !(phase == phaseCheck && code == 1) {
		level = slog.LevelWarn
		span.SetStatus(codes.Error, result)
	}
	d.log.Log(ctx, level, "exec command ran", "action", d.actionName(), "phase", phase, "key", a.key,
		"txn_id", eff.TxnID, "exit_code", code, "result", result, "duration", elapsed,
		"stdout", stdout.String(), "stderr", stderr.String())
	return code, outErr
}

func outputs(stdout, stderr *capped) string {
	var b strings.Builder
	if s := strings.TrimSpace(stderr.String()); s != "" {
		fmt.Fprintf(&b, "; stderr: %s", s)
	}
	if s := strings.TrimSpace(stdout.String()); s != "" {
		fmt.Fprintf(&b, "; stdout: %s", s)
	}
	return b.String()
}

// capped keeps the first max bytes written to it and counts the rest.
type capped struct {
	max     int
	buf     bytes.Buffer
	dropped int
}

func (c *capped) Write(p []byte) (int, error) {
	room := c.max - c.buf.Len()
	if room > 0 {
		if len(p) <= room {
			c.buf.Write(p)
		} else {
			c.buf.Write(p[:room])
			c.dropped += len(p) - room
		}
	} else {
		c.dropped += len(p)
	}
	return len(p), nil // never fail the command because we stopped keeping its output
}

func (c *capped) String() string {
	if c.dropped > 0 {
		return fmt.Sprintf("%s... [%d bytes truncated]", c.buf.String(), c.dropped)
	}
	return c.buf.String()
}
