// Package playbook loads declarative playbooks (which events, which steps,
// which mode, which TTL, whether approval is needed) and evaluates them
// against an event to produce plans: one per step of every matching
// playbook, with parameters rendered from the event and validated against
// the action's typed spec. It decides nothing about safety: policy and the
// transaction engine do that with the plans.
package playbook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"text/template"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
)

// APIVersion and Kind identify a playbook document.
const (
	APIVersion = "quell.dev/v1"
	Kind       = "Playbook"
)

// Mode is audit (record what would happen) or enforce. Its values are those
// of txn.Mode; the engine's global audit mode overrides enforce.
type Mode string

const (
	ModeAudit   Mode = "audit"
	ModeEnforce Mode = "enforce"
)

// Playbook is one loaded playbook, as listed by `quell playbook ls`.
type Playbook struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	File        string `json:"file"`
	Line        int    `json:"line"`
	Match       string `json:"match"`
	Mode        Mode   `json:"mode"`
	Priority    int    `json:"priority"`
	Steps       []Step `json:"steps"`

	prg      cel.Program
	counters *evalCounters // nil without metrics
}

// evalCounters are one playbook's counters, resolved once at load so that
// evaluation does not look label values up per event.
type evalCounters struct {
	match, nomatch, fail, stepErr prometheus.Counter
}

// Step is one step of a playbook.
type Step struct {
	Name     string            `json:"name"`
	Action   string            `json:"action"`
	Params   map[string]string `json:"params,omitempty"` // as written: static values and templates
	TTL      time.Duration     `json:"ttl,omitempty"`
	Mode     Mode              `json:"mode"` // effective: the step's own, else the playbook's
	Approval bool              `json:"approval"`
	Line     int               `json:"line"`

	spec   action.Spec
	static map[string]string
	tmpls  map[string]*template.Template
}

// Plan is what a matching playbook asks for one step on one event. The
// params are rendered strings, already validated against the action's spec;
// the transaction engine validates them again when it builds the action.
type Plan struct {
	Playbook string            `json:"playbook"`
	Step     int               `json:"step"`
	StepName string            `json:"step_name"`
	Action   string            `json:"action"`
	Params   map[string]string `json:"params"`
	TTL      time.Duration     `json:"ttl,omitempty"`
	Mode     Mode              `json:"mode"`
	Approval bool              `json:"approval"`
}

// Origin is the request identity for txn.Request.Origin: the same event
// evaluated twice asks for the same thing, so the engine acts once.
func (p Plan) Origin(eventID string) string {
	return fmt.Sprintf("evt/%s/%s/%d", eventID, p.Playbook, p.Step)
}

// EvalError is a problem met while evaluating one playbook on one event.
// Step is -1 when the match expression itself failed (the playbook counts
// as not matching); otherwise it names the step and the parameter that
// could not be rendered or did not validate (that step has no plan).
type EvalError struct {
	Playbook string `json:"playbook"`
	Step     int    `json:"step"`
	StepName string `json:"step_name,omitempty"`
	Param    string `json:"param,omitempty"`
	Err      error  `json:"-"`
}

func (e EvalError) Error() string {
	if e.Step < 0 {
		return fmt.Sprintf("playbook %s: match: %v", e.Playbook, e.Err)
	}
	if e.Param == "" {
		return fmt.Sprintf("playbook %s: step %d (%s): %v", e.Playbook, e.Step, e.StepName, e.Err)
	}
	return fmt.Sprintf("playbook %s: step %d (%s): params.%s: %v", e.Playbook, e.Step, e.StepName, e.Param, e.Err)
}

func (e EvalError) Unwrap() error { return e.Err }

// MarshalJSON includes the error text.
func (e EvalError) MarshalJSON() ([]byte, error) {
	type plain EvalError
	return json.Marshal(struct {
		plain
		Error string `json:"error"`
	}{plain(e), e.Error()})
}

// Set is an immutable, loaded set of playbooks, safe for concurrent use. A
// reload builds a new Set; the caller swaps it in atomically.
type Set struct {
	playbooks []*Playbook // priority order
	metrics   *Metrics
	log       *slog.Logger
	tracer    trace.Tracer
}

// Playbooks lists the playbooks in evaluation order.
func (s *Set) Playbooks() []Playbook {
	out := make([]Playbook, len(s.playbooks))
	for i, p := range s.playbooks {
		out[i] = *p
		out[i].Steps = append([]Step(nil), p.Steps...)
	}
	return out
}

// Len is the number of playbooks.
func (s *Set) Len() int { return len(s.playbooks) }

// Input is everything a playbook sees about one event.
type Input struct {
	Event   *event.Event
	Context *event.Context // may be nil
	// Incident is the incident the event belongs to, as a map (JSON field
	// names). Nil: {"id": Context.IncidentID} when that is set, else empty.
	Incident map[string]any
}

// Evaluate runs every playbook against one event, in priority order, and
// returns one plan per step of every matching playbook.
func (s *Set) Evaluate(ctx context.Context, ev *event.Event, ec *event.Context) ([]Plan, []EvalError) {
	return s.EvaluateInput(ctx, Input{Event: ev, Context: ec})
}

// EvaluateInput is Evaluate with an explicit incident.
func (s *Set) EvaluateInput(ctx context.Context, in Input) ([]Plan, []EvalError) {
	start := time.Now()
	ctx, span := s.tracer.Start(ctx, "playbook.Evaluate", trace.WithAttributes(attribute.Int("quell.playbooks", len(s.playbooks))))
	defer span.End()

	vars := buildVars(in)
	var (
		plans []Plan
		errs  []EvalError
	)
	for _, pb := range s.playbooks {
		matched, err := pb.match(ctx, vars)
		switch {
		case err != nil:
			if c := pb.counters; c != nil {
				c.fail.Inc()
			}
			errs = append(errs, EvalError{Playbook: pb.Name, Step: -1, Err: err})
			continue
		case !matched:
			if c := pb.counters; c != nil {
				c.nomatch.Inc()
			}
			continue
		}
		if c := pb.counters; c != nil {
			c.match.Inc()
		}
		for i := range pb.Steps {
			st := &pb.Steps[i]
			params, perr := st.render(vars)
			if perr != nil {
				perr.Playbook, perr.Step, perr.StepName = pb.Name, i, st.Name
				errs = append(errs, *perr)
				if c := pb.counters; c != nil {
					c.stepErr.Inc()
				}
				continue
			}
			plans = append(plans, Plan{
				Playbook: pb.Name, Step: i, StepName: st.Name, Action: st.Action,
				Params: params, TTL: st.TTL, Mode: st.Mode, Approval: st.Approval,
			})
		}
	}
	if s.metrics != nil {
		s.metrics.duration.Observe(time.Since(start).Seconds())
	}
	span.SetAttributes(attribute.Int("quell.plans", len(plans)), attribute.Int("quell.eval_errors", len(errs)))
	if len(errs) > 0 {
		span.SetStatus(codes.Error, errs[0].Error())
		for _, e := range errs {
			s.log.DebugContext(ctx, "playbook evaluation error", "playbook", e.Playbook, "step", e.Step, "param", e.Param, "err", e.Err)
		}
	}
	return plans, errs
}

func (m *Metrics) countersFor(name string) *evalCounters {
	return &evalCounters{
		match:   m.evaluations.WithLabelValues(name, "match"),
		nomatch: m.evaluations.WithLabelValues(name, "nomatch"),
		fail:    m.evaluations.WithLabelValues(name, "error"),
		stepErr: m.stepErrors.WithLabelValues(name),
	}
}

func (pb *Playbook) match(ctx context.Context, vars map[string]any) (bool, error) {
	out, _, err := pb.prg.ContextEval(ctx, vars)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok { // the checker guarantees bool; keep a runtime guard all the same
		return false, fmt.Errorf("returned %s, not bool", out.Type())
	}
	return b, nil
}

// render fills the step's parameters for one event and validates them
// against the action's spec, so that a hostile value (an "address" that is
// not one) stops here with the parameter named.
func (st *Step) render(vars map[string]any) (map[string]string, *EvalError) {
	out := make(map[string]string, len(st.static)+len(st.tmpls))
	for k, v := range st.static {
		out[k] = v
	}
	var buf bytes.Buffer
	for name, t := range st.tmpls {
		buf.Reset()
		if err := t.Execute(&buf, vars); err != nil {
			return nil, &EvalError{Param: name, Err: fmt.Errorf("render: %s", trimTemplateErr(err))}
		}
		s := buf.String()
		// index on a missing map key yields nil, which prints as
		// "<no value>": treat it as the missing field it is.
		if strings.Contains(s, "<no value>") {
			return nil, &EvalError{Param: name, Err: fmt.Errorf("render: a field used by the template is missing")}
		}
		out[name] = s
	}
	if _, err := st.spec.Validate(out); err != nil {
		return nil, &EvalError{Param: paramOf(err), Err: err}
	}
	return out, nil
}

func trimTemplateErr(err error) string {
	// text/template prefixes "template: <name>:1:2: executing ...": keep the
	// useful tail only.
	s := err.Error()
	if i := strings.Index(s, "executing "); i >= 0 {
		if j := strings.Index(s[i:], ": "); j >= 0 {
			return s[i+j+2:]
		}
	}
	return s
}

func buildVars(in Input) map[string]any {
	evm := map[string]any{}
	if in.Event != nil {
		evm = in.Event.AsMap()
	}
	// The nested objects of the event model are always present in the map
	// playbooks see (empty when the event has none), so that
	// has(event.src_endpoint.ip) is false, not an error, on an event without
	// a source endpoint.
	for _, f := range [...]string{"src_endpoint", "dst_endpoint", "actor", "process", "kubernetes", "cloud"} {
		if _, ok := evm[f]; !ok {
			evm[f] = map[string]any{}
		}
	}
	vars := map[string]any{
		"event":      evm,
		"enrichment": map[string]any{},
		"risk":       map[string]any{},
		"incident":   map[string]any{},
	}
	if c := in.Context; c != nil {
		if c.Enrichment != nil {
			vars["enrichment"] = toMap(c.Enrichment)
		}
		if c.Risk != nil {
			vars["risk"] = toMap(c.Risk)
		}
		if c.IncidentID != "" {
			vars["incident"] = map[string]any{"id": c.IncidentID}
		}
	}
	if in.Incident != nil {
		vars["incident"] = in.Incident
	}
	for k, v := range vars {
		vars[k] = integralNumbers(v)
	}
	return vars
}

// integralNumbers turns JSON's whole-number doubles into int64, in place, so
// that a template prints a port 10000 as "10000", not "1e+04", and CEL sees
// event.severity_id as the int it is. Fractions stay doubles; CEL compares
// across the two.
func integralNumbers(v any) any {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && math.Abs(x) <= 1<<53 {
			return int64(x)
		}
	case map[string]any:
		for k, e := range x {
			x[k] = integralNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = integralNumbers(e)
		}
	}
	return v
}

// toMap renders a value as the generic map expressions see, through JSON so
// that field names match the API.
func toMap(v any) map[string]any {
	b, err := json.Marshal(v)
	if err != nil {
		return map[string]any{}
	}
	m := map[string]any{}
	if json.Unmarshal(b, &m) != nil {
		return map[string]any{}
	}
	return m
}

// paramOf extracts the parameter name from an action.Spec.Validate error
// (`parameter "address": ...`).
func paramOf(err error) string {
	const marker = `parameter "`
	s := err.Error()
	i := strings.Index(s, marker)
	if i < 0 {
		return ""
	}
	s = s[i+len(marker):]
	if j := strings.IndexByte(s, '"'); j >= 0 {
		return s[:j]
	}
	return ""
}
