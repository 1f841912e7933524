package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/quell-ir/quell/internal/txn"
)

// Decide evaluates the policy for one proposed action. It implements
// txn.Decider. It fails closed: when the incident lookup, the evaluation or
// the result's shape fails, the Decision denies with the error as its reason
// and the returned error is nil, so that the engine records the denial like
// any other.
func (e *Engine) Decide(ctx context.Context, in txn.DecisionInput) (txn.Decision, error) {
	ctx, span := e.tracer.Start(ctx, "policy.decide", trace.WithAttributes(
		attribute.String("quell.action", in.Request.Action),
		attribute.String("quell.mode", string(in.Mode)),
	))
	defer span.End()
	if in.Time.IsZero() {
		in.Time = e.now()
	}
	var inc *Incident
	if id := in.Request.IncidentID; id != "" {
		inc = &Incident{ID: id}
		if e.incidents != nil {
			got, err := e.incidents.PolicyIncident(ctx, id)
			if err != nil {
				d := e.failClosed(span, fmt.Errorf("look up incident %s for policy: %w", id, err), "")
				e.m.decisions.WithLabelValues(string(d.Verdict)).Inc()
				return d, nil
			}
			if got.ID == "" {
				got.ID = id
			}
			inc = &got
		}
	}
	d := e.Evaluate(ctx, BuildInput(in, inc, e.cfg.IncludeRaw))
	span.SetAttributes(attribute.String("quell.verdict", string(d.Verdict)), attribute.String("policy.revision", d.PolicyRevision))
	return d, nil
}

// Evaluate decides for an already built input (`quell policy eval` uses it
// to show a decision without side effects). It never fails: errors deny.
func (e *Engine) Evaluate(ctx context.Context, in Input) txn.Decision {
	start := time.Now()
	p := e.cur.Load() // the query in force now; a concurrent reload does not affect this decision
	var d txn.Decision
	value, hash, err := encodeInput(in)
	if err != nil {
		d = e.failClosed(trace.SpanFromContext(ctx), err, "")
	} else {
		ectx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
		rs, err := p.query.Eval(ectx, rego.EvalParsedInput(value))
		cancel()
		if err != nil {
			d = e.failClosed(trace.SpanFromContext(ctx), fmt.Errorf("evaluate %s: %w", e.cfg.Query, err), hash)
		} else if d, err = parseDecision(rs, e.cfg.Query); err != nil {
			d = e.failClosed(trace.SpanFromContext(ctx), err, hash)
		}
	}
	d.Engine = EngineName
	d.PolicyRevision = p.revision
	d.InputHash = hash
	d.DecidedAt = e.now().UTC()
	d.Latency = time.Since(start)
	e.m.decisions.WithLabelValues(string(d.Verdict)).Inc()
	e.m.latency.Observe(d.Latency.Seconds())
	e.log.LogAttrs(ctx, levelFor(d.Verdict), "policy decision",
		slogString("action", in.Action.Name),
		slogString("verdict", string(d.Verdict)),
		slogString("reasons", strings.Join(d.Reasons, "; ")),
		slogString("revision", d.PolicyRevision),
		slogString("input_hash", hash),
	)
	return d
}

func (e *Engine) failClosed(span trace.Span, err error, hash string) txn.Decision {
	e.m.errors.Inc()
	span.RecordError(err)
	span.SetStatus(codes.Error, "policy failed closed")
	e.log.Error("policy evaluation failed; denying", "err", err)
	d := txn.Decision{
		Verdict:   txn.Deny,
		Reasons:   []string{"policy error (fail closed): " + err.Error()},
		Engine:    EngineName,
		InputHash: hash,
		DecidedAt: e.now().UTC(),
	}
	if p := e.cur.Load(); p != nil {
		d.PolicyRevision = p.revision
	}
	return d
}

// parseDecision maps the policy's answer (the contract in docs/policy.md)
// onto a txn.Decision. A malformed answer is an error, and so denies.
func parseDecision(rs rego.ResultSet, query string) (txn.Decision, error) {
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return txn.Decision{}, fmt.Errorf("%s is undefined: the policy gave no decision", query)
	}
	obj, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return txn.Decision{}, fmt.Errorf("%s: want an object, got %T", query, rs[0].Expressions[0].Value)
	}
	var d txn.Decision
	allow, err := optBool(obj, "allow")
	if err != nil {
		return d, err
	}
	deny, err := optStrings(obj, "deny")
	if err != nil {
		return d, err
	}
	reasons, err := optStrings(obj, "reasons")
	if err != nil {
		return d, err
	}
	if d.ForceAudit, err = optBool(obj, "force_audit"); err != nil {
		return d, err
	}
	if d.MaxTTL, err = optDuration(obj, "max_ttl"); err != nil {
		return d, err
	}
	approval := false
	if ra, present := obj["require_approval"]; present && ra != nil && ra != false {
		m, ok := ra.(map[string]any)
		if !ok {
			return d, fmt.Errorf("decision.require_approval: want an object or null, got %T", ra)
		}
		n, err := optInt(m, "approvers")
		if err != nil {
			return d, fmt.Errorf("decision.require_approval.%w", err)
		}
		if n < 0 {
			return d, fmt.Errorf("decision.require_approval.approvers: must not be negative, got %d", n)
		}
		if n == 0 {
			n = 1 // asking for approval with no count means one approver
		}
		d.Approvers = n
		if g, ok := m["group"]; ok && g != nil {
			s, ok := g.(string)
			if !ok {
				return d, fmt.Errorf("decision.require_approval.group: want a string, got %T", g)
			}
			d.ApproverGroup = s
		}
		if d.ApprovalTimeout, err = optDuration(m, "timeout"); err != nil {
			return d, fmt.Errorf("decision.require_approval.%w", err)
		}
		approval = true
	}
	switch {
	case len(deny) > 0:
		d.Verdict, d.Reasons = txn.Deny, deny
		d.Approvers, d.ApproverGroup, d.ApprovalTimeout = 0, "", 0
	case approval:
		d.Verdict, d.Reasons = txn.RequireApproval, reasons
	case allow:
		d.Verdict, d.Reasons = txn.Allow, reasons
	default:
		d.Verdict = txn.Deny
		d.Reasons = append([]string{"not allowed by policy (no rule allowed it)"}, reasons...)
	}
	return d, nil
}

func optBool(m map[string]any, k string) (bool, error) {
	v, ok := m[k]
	if !ok || v == nil {
		return false, nil
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("decision.%s: want a boolean, got %T", k, v)
	}
	return b, nil
}

// optStrings reads a set or array of reasons. Non-string members (an object
// a policy author built) are rendered as JSON rather than dropped: a reason
// must never disappear.
func optStrings(m map[string]any, k string) ([]string, error) {
	v, ok := m[k]
	if !ok || v == nil {
		return nil, nil
	}
	arr, ok := v.([]any)
	if !ok {
		if s, isStr := v.(string); isStr {
			return []string{s}, nil
		}
		return nil, fmt.Errorf("decision.%s: want a set or array of strings, got %T", k, v)
	}
	out := make([]string, 0, len(arr))
	for _, x := range arr {
		if s, ok := x.(string); ok {
			out = append(out, s)
			continue
		}
		b, _ := json.Marshal(x)
		out = append(out, string(b))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func optInt(m map[string]any, k string) (int, error) {
	v, ok := m[k]
	if !ok || v == nil {
		return 0, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("%s: want an integer, got %T", k, v)
	}
	i, err := n.Int64()
	if err != nil {
		return 0, fmt.Errorf("%s: want an integer, got %s", k, n)
	}
	return int(i), nil
}

// optDuration reads a Go duration string ("24h", "90m") or a number of
// seconds.
func optDuration(m map[string]any, k string) (time.Duration, error) {
	v, ok := m[k]
	if !ok || v == nil {
		return 0, nil
	}
	switch x := v.(type) {
	case string:
		d, err := time.ParseDuration(x)
		if err != nil || d < 0 {
			return 0, fmt.Errorf("%s: want a non-negative duration like \"24h\", got %q", k, x)
		}
		return d, nil
	case json.Number:
		f, err := x.Float64()
		if err != nil || f < 0 {
			return 0, fmt.Errorf("%s: want a non-negative number of seconds, got %s", k, x)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	return 0, fmt.Errorf("%s: want a duration string or seconds, got %T", k, v)
}
