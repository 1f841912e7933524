package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

// Input is the document a policy sees as `input`. Its shape is a public
// contract (docs/policy.md): fields are added, never renamed.
type Input struct {
	// Event is the normalized event (nil for API-initiated requests). Its raw
	// document is included only with Config.IncludeRaw.
	Event *event.Event `json:"event"`
	// Enrichment and Risk are the pipeline's context for the event.
	Enrichment *event.Enrichment `json:"enrichment"`
	Risk       *event.Risk       `json:"risk"`
	// Incident is what quell knows about the incident the request belongs to.
	Incident *Incident `json:"incident"`
	// Action is the proposed action.
	Action ActionInput `json:"action"`
	// Requester is who asked: a user for API requests, "playbook:<name>" or
	// empty for automatic ones.
	Requester string `json:"requester"`
	// Origin identifies the logical request (evt/<id>/<playbook>/<step>, api/...).
	Origin   string        `json:"origin"`
	Playbook PlaybookInput `json:"playbook"`
	// Time is the decision time, RFC 3339 UTC; TimeNS the same in Unix
	// nanoseconds, for time.* built-ins.
	Time   string `json:"time"`
	TimeNS int64  `json:"time_ns"`
	// Mode is the effective mode: audit or enforce.
	Mode string `json:"mode"`
	// Evidence lists the names of the actions already completed for the
	// incident (e.g. kube.capture_logs, aws.snapshot), sorted, no repeats.
	Evidence []string `json:"evidence"`
}

// ActionInput describes the proposed action.
type ActionInput struct {
	Name    string            `json:"name"`
	Params  map[string]string `json:"params"`
	Spec    SpecInput         `json:"spec"`
	Targets []action.Target   `json:"targets"`
	Key     string            `json:"key"`
	// TTL is the requested containment duration as a Go duration ("0s": no
	// expiry); TTLSeconds the same in seconds.
	TTL        string  `json:"ttl"`
	TTLSeconds float64 `json:"ttl_seconds"`
	// ApprovalRequested is set when the playbook step itself asks for approval.
	ApprovalRequested bool `json:"approval_requested"`
	// RequestedMode is the mode the playbook or API asked for, before the
	// global mode applied.
	RequestedMode string `json:"requested_mode"`
}

// SpecInput is the part of an action's Spec that policy uses.
type SpecInput struct {
	Name        string   `json:"name"`
	Provider    string   `json:"provider"`
	Reversible  bool     `json:"reversible"`
	Eradication bool     `json:"eradication"`
	Needs       []string `json:"needs"`
}

// PlaybookInput names the playbook step that proposed the action.
type PlaybookInput struct {
	Name string `json:"name"`
	Step int    `json:"step"`
}

// Incident is what the policy knows about an incident.
type Incident struct {
	ID       string `json:"id"`
	State    string `json:"state,omitempty"`
	Severity string `json:"severity,omitempty"`
	// Evidence lists the names of actions completed for the incident.
	Evidence []string          `json:"evidence"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// IncidentSource supplies incident facts, chiefly the evidence already
// captured. The store implements it; an error makes the decision deny,
// because a policy that requires evidence must not be bypassed by a lookup
// failure.
type IncidentSource interface {
	PolicyIncident(ctx context.Context, id string) (Incident, error)
}

// BuildInput assembles the policy input for a decision. inc may be nil.
func BuildInput(in txn.DecisionInput, inc *Incident, includeRaw bool) Input {
	r := in.Request
	ev := r.Event
	if ev != nil && !includeRaw && len(ev.Raw) > 0 {
		c := *ev
		c.Raw = nil
		ev = &c
	}
	out := Input{
		Event:     ev,
		Incident:  inc,
		Requester: r.Requester,
		Origin:    r.Origin,
		Playbook:  PlaybookInput{Name: r.Playbook, Step: r.Step},
		Time:      in.Time.UTC().Format(time.RFC3339Nano),
		TimeNS:    in.Time.UnixNano(),
		Mode:      string(in.Mode),
		Action: ActionInput{
			Name:   r.Action,
			Params: r.Params,
			Spec: SpecInput{
				Name:        in.Spec.Name,
				Provider:    in.Spec.Provider,
				Reversible:  in.Spec.Reversible,
				Eradication: in.Spec.Eradication,
				Needs:       in.Spec.Needs,
			},
			Targets:           in.Targets,
			Key:               in.Key,
			TTL:               r.TTL.String(),
			TTLSeconds:        r.TTL.Seconds(),
			ApprovalRequested: r.Approval,
			RequestedMode:     string(r.Mode),
		},
		Evidence: []string{},
	}
	if out.Action.Name == "" {
		out.Action.Name = in.Spec.Name
	}
	if out.Action.Params == nil {
		out.Action.Params = map[string]string{}
	}
	if out.Action.Targets == nil {
		out.Action.Targets = []action.Target{}
	}
	if out.Action.Spec.Needs == nil {
		out.Action.Spec.Needs = []string{}
	}
	if c := r.Context; c != nil {
		out.Enrichment, out.Risk = c.Enrichment, c.Risk
	}
	if inc != nil {
		c := *inc
		c.Evidence = sortedUnique(inc.Evidence)
		out.Incident = &c
		out.Evidence = c.Evidence
	}
	return out
}

func sortedUnique(in []string) []string {
	seen := make(map[string]bool, len(in))
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// encodeInput turns the input into the generic value OPA evaluates and the
// sha256 of its JSON encoding. The encoding is deterministic: struct fields
// in declaration order, map keys sorted, no insignificant whitespace (the
// raw event document, when included, is compacted but keeps its own key
// order). The same question always hashes the same, so a recorded decision
// can be matched with its replay.
//
// The value is parsed from that same encoding straight into OPA's AST
// (jsonToValue), so the policy sees exactly what was hashed and OPA does
// not convert a generic map on every evaluation.
func encodeInput(in Input) (value ast.Value, hash string, err error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, "", fmt.Errorf("encode policy input: %w", err)
	}
	sum := sha256.Sum256(b)
	if value, err = jsonToValue(b); err != nil {
		return nil, "", fmt.Errorf("decode policy input: %w", err)
	}
	return value, "sha256:" + hex.EncodeToString(sum[:]), nil
}
