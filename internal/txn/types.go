// Package txn is the transaction engine: every containment step runs as a
// persisted state machine whose transitions are journaled before the side
// effect they announce, guarded, pre-checked, verified, rolled back on
// failure, expired on time, and recovered after a crash.
package txn

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
)

// State is a transaction's state. Every transition is persisted.
type State string

const (
	Planned          State = "planned"           // recorded, nothing checked yet
	AwaitingApproval State = "awaiting_approval" // paused before any side effect
	Guarded          State = "guarded"           // guards passed
	Prechecked       State = "prechecked"        // Check ran; Before captured
	Applying         State = "applying"          // Apply is (about to be) running
	Applied          State = "applied"           // Apply returned
	Verified         State = "verified"          // Verify confirmed the effect
	Active           State = "active"            // committed; waiting for its TTL
	Reverting        State = "reverting"         // Revert is (about to be) running
	// Terminal states.
	Denied       State = "denied"        // a guard, the policy or a pre-check refused
	Audited      State = "audited"       // audit mode: recorded what would have happened
	Rejected     State = "rejected"      // an approver rejected, or the approval expired
	Failed       State = "failed"        // failed before any side effect
	Reverted     State = "reverted"      // undone (after a failure or by request)
	Expired      State = "expired"       // undone at the end of its TTL
	RevertFailed State = "revert_failed" // undo failed: a human must look
	Completed    State = "completed"     // a one-shot action (log, capture) that has nothing to undo
)

// Terminal reports whether no further transition can happen.
func (s State) Terminal() bool {
	switch s {
	case Denied, Audited, Rejected, Failed, Reverted, Expired, RevertFailed, Completed:
		return true
	}
	return false
}

// Holds reports whether a transaction in this state owns its idempotency
// key: a second request for the same key joins it instead of acting again.
func (s State) Holds() bool { return !s.Terminal() }

// Mode is audit (record only) or enforce.
type Mode string

const (
	ModeAudit   Mode = "audit"
	ModeEnforce Mode = "enforce"
)

// Transaction is the persisted record of one containment step.
type Transaction struct {
	ID          string            `json:"id"`
	Key         string            `json:"key"` // idempotency key (action + target)
	Action      string            `json:"action"`
	Params      map[string]string `json:"params"`
	Targets     []action.Target   `json:"targets,omitempty"`
	Mode        Mode              `json:"mode"`
	State       State             `json:"state"`
	EventID     string            `json:"event_id,omitempty"`
	IncidentID  string            `json:"incident_id,omitempty"`
	Playbook    string            `json:"playbook,omitempty"`
	Step        int               `json:"step"`
	Origin      string            `json:"origin"` // idempotency of the request: event/playbook/step, or api/...
	Requester   string            `json:"requester,omitempty"`
	TTL         time.Duration     `json:"ttl,omitempty"`
	ExpiresAt   *time.Time        `json:"expires_at,omitempty"`
	ApprovalBy  *time.Time        `json:"approval_deadline,omitempty"`
	Before      json.RawMessage   `json:"before,omitempty"`
	Attempts    int               `json:"attempts"`
	Error       string            `json:"error,omitempty"`
	Reason      string            `json:"reason,omitempty"` // why it ended where it did
	RevertCause string            `json:"revert_cause,omitempty"`
	Decision    *Decision         `json:"decision,omitempty"`
	Approvals   []Approval        `json:"approvals,omitempty"`
	TraceID     string            `json:"trace_id,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	Version     int64             `json:"version"` // bumped by every persisted transition
}

// JournalEntry is one line of a transaction's journal: a transition, written
// before the side effect it announces.
type JournalEntry struct {
	TxnID  string    `json:"txn_id"`
	Seq    int64     `json:"seq"`
	From   State     `json:"from"`
	To     State     `json:"to"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

// Approval records a human decision on a transaction.
type Approval struct {
	By       string    `json:"by"`
	Approved bool      `json:"approved"`
	Comment  string    `json:"comment,omitempty"`
	At       time.Time `json:"at"`
}

// Verdict is a policy decision's outcome.
type Verdict string

const (
	Allow           Verdict = "allow"
	Deny            Verdict = "deny"
	RequireApproval Verdict = "require_approval"
)

// Decision is what the policy (or the built-in default) answered, with its
// reasons and the limits it imposes. It is recorded with the transaction.
type Decision struct {
	Verdict         Verdict       `json:"verdict"`
	Reasons         []string      `json:"reasons,omitempty"`
	Approvers       int           `json:"approvers,omitempty"`      // how many distinct approvers
	ApproverGroup   string        `json:"approver_group,omitempty"` // from which group
	ApprovalTimeout time.Duration `json:"approval_timeout,omitempty"`
	MaxTTL          time.Duration `json:"max_ttl,omitempty"`
	ForceAudit      bool          `json:"force_audit,omitempty"`
	PolicyRevision  string        `json:"policy_revision,omitempty"`
	InputHash       string        `json:"input_hash,omitempty"`
	Engine          string        `json:"engine"` // "default" or "opa"
	DecidedAt       time.Time     `json:"decided_at"`
	Latency         time.Duration `json:"latency_ns,omitempty"`
}

// Request asks the engine to run one action.
type Request struct {
	Action     string
	Params     map[string]string
	Mode       Mode          // requested mode; the global mode audit overrides enforce
	TTL        time.Duration // 0: no expiry
	Approval   bool          // the playbook step requires approval
	Event      *event.Event  // may be nil for API-initiated requests
	Context    *event.Context
	IncidentID string
	Playbook   string
	Step       int
	Origin     string // unique per logical request, e.g. "evt/<id>/<playbook>/<step>"
	Requester  string
}

// DecisionInput is what a Decider is asked about.
type DecisionInput struct {
	Request Request
	Spec    action.Spec
	Targets []action.Target
	Key     string
	Mode    Mode // the effective mode
	Time    time.Time
}

// Decider answers whether an action may run. The policy package implements
// it with OPA; the default allows everything the guards allow.
type Decider interface {
	Decide(ctx context.Context, in DecisionInput) (Decision, error)
}

// AllowAll is the default Decider.
type AllowAll struct{}

func (AllowAll) Decide(_ context.Context, _ DecisionInput) (Decision, error) {
	return Decision{Verdict: Allow, Engine: "default", Reasons: []string{"no policy configured"}}, nil
}

// Protector tells whether a target is protected infrastructure. The
// enrichment package supplies a prefix table; config supplies the rest.
// An error means the guard could not be evaluated, and the guard denies.
type Protector interface {
	Protected(ctx context.Context, t action.Target) (reason string, protected bool, err error)
}

// Storage errors; backends return these (wrapped or not).
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict: record changed concurrently")
)

// Filter selects transactions for listing.
type Filter struct {
	States     []State
	EventID    string
	IncidentID string
	Action     string
	Limit      int
}

// Store is the storage the engine needs. Backends in package store
// implement it.
type Store interface {
	// CreateTxn records a new transaction with its first journal entries,
	// atomically enforcing one transaction per Origin and one holder of an
	// idempotency key at a time. When either exists it returns that
	// transaction and created=false. On success t.Version is the number of
	// entries.
	CreateTxn(ctx context.Context, t *Transaction, entries ...JournalEntry) (existing *Transaction, created bool, err error)
	// UpdateTxn persists a transition and its journal entries atomically
	// (several when transitions without side effects between them are
	// committed together). It fails with ErrConflict if t.Version is not
	// the stored version; on success t.Version grows by len(entries).
	UpdateTxn(ctx context.Context, t *Transaction, entries ...JournalEntry) error
	GetTxn(ctx context.Context, id string) (*Transaction, error)
	ListTxns(ctx context.Context, f Filter) ([]*Transaction, error)
	// NonTerminal returns every transaction not in a terminal state.
	NonTerminal(ctx context.Context) ([]*Transaction, error)
	Journal(ctx context.Context, id string) ([]JournalEntry, error)
}
