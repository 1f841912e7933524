package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

// EvalRequest is what `quell policy eval` asks about: a proposed action on
// an event, with the context a live decision would have.
type EvalRequest struct {
	Event      *event.Event
	Context    *event.Context // enrichment and risk; nil: none
	Spec       action.Spec    // from the action registry; Spec.Name is the action
	Params     map[string]string
	Targets    []action.Target
	TTL        time.Duration
	Mode       txn.Mode // default enforce
	Requester  string
	IncidentID string
	Evidence   []string // completed actions of the incident
	Time       time.Time
}

// EvalEvent answers the decision for req with the policy of cfg, without any
// side effect, and prints it to w (see PrintDecision). It is
// `quell policy eval --event FILE --action NAME [--param k=v]...`.
func EvalEvent(ctx context.Context, cfg Config, req EvalRequest, w io.Writer) (txn.Decision, Input, error) {
	cfg.Watch = false
	e, err := New(ctx, cfg, Options{})
	if err != nil {
		return txn.Decision{}, Input{}, err
	}
	if req.Mode == "" {
		req.Mode = txn.ModeEnforce
	}
	if req.Time.IsZero() {
		req.Time = time.Now()
	}
	if req.Context == nil {
		req.Context = &event.Context{}
	}
	in := txn.DecisionInput{
		Request: txn.Request{
			Action:     req.Spec.Name,
			Params:     req.Params,
			Mode:       req.Mode,
			TTL:        req.TTL,
			Event:      req.Event,
			Context:    req.Context,
			IncidentID: req.IncidentID,
			Requester:  req.Requester,
			Origin:     "policy-eval",
		},
		Spec:    req.Spec,
		Targets: req.Targets,
		Key:     req.Spec.Name,
		Mode:    req.Mode,
		Time:    req.Time,
	}
	var inc *Incident
	if req.IncidentID != "" || len(req.Evidence) > 0 {
		inc = &Incident{ID: req.IncidentID, Evidence: req.Evidence}
	}
	input := BuildInput(in, inc, cfg.IncludeRaw)
	d := e.Evaluate(ctx, input)
	PrintDecision(w, d)
	return d, input, nil
}

// ReadEvent reads a normalized quell event (JSON, as GET /v1/events/{id}
// returns it), validates and normalizes it.
func ReadEvent(path string) (*event.Event, *event.Context, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read event: %w", err)
	}
	// The API's event view may carry its context alongside.
	var doc struct {
		event.Event
		Context *event.Context `json:"context,omitempty"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, nil, fmt.Errorf("event %s: %w", path, err)
	}
	ev := doc.Event
	if err := ev.Validate(); err != nil {
		return nil, nil, fmt.Errorf("event %s: %w", path, err)
	}
	ev.Normalize(time.Now())
	return &ev, doc.Context, nil
}

// PrintDecision writes a decision for people: verdict, reasons, limits,
// revision and input hash.
func PrintDecision(w io.Writer, d txn.Decision) {
	fmt.Fprintf(w, "verdict:  %s\n", d.Verdict)
	for _, r := range d.Reasons {
		fmt.Fprintf(w, "  - %s\n", r)
	}
	if d.Verdict == txn.RequireApproval {
		fmt.Fprintf(w, "approval: %d approver(s)", d.Approvers)
		if d.ApproverGroup != "" {
			fmt.Fprintf(w, " from %s", d.ApproverGroup)
		}
		if d.ApprovalTimeout > 0 {
			fmt.Fprintf(w, " within %s", d.ApprovalTimeout)
		}
		fmt.Fprintln(w)
	}
	var limits []string
	if d.MaxTTL > 0 {
		limits = append(limits, "max ttl "+d.MaxTTL.String())
	}
	if d.ForceAudit {
		limits = append(limits, "forced audit mode")
	}
	if len(limits) > 0 {
		fmt.Fprintf(w, "limits:   %s\n", strings.Join(limits, ", "))
	}
	fmt.Fprintf(w, "policy:   %s (%s)\ninput:    %s\nlatency:  %s\n", d.PolicyRevision, d.Engine, d.InputHash, d.Latency)
}
