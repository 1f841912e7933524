// Package action defines what a containment action is, how it describes
// itself, how its parameters are typed, and the registry that holds the
// actions a build offers. The real effects live in sub-packages, one per
// provider (action/firewall, action/kube, ...).
package action

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Action is one containment step against one target. The transaction engine
// (package txn) calls its methods in order, journaling before each one:
//
//	Check -> Apply -> Verify -> (TTL) -> Revert
//
// Every method must be idempotent: recovery after a crash may call any of
// them again for the same target.
type Action interface {
	// Key is the idempotency key: stable for the same effect on the same
	// target, so that a second request for it confirms instead of acting.
	Key() string
	// Targets lists what the action touches, for the protected-targets guard.
	Targets() []Target
	// Check is the pre-check. It captures the state needed to undo exactly
	// what Apply will do (e.g. "this address was already in the set").
	// Returning a *DeniedError refuses the action (blast radius, protection).
	Check(ctx context.Context) (Before, error)
	// Apply makes the change. It is called with the containment's expiry so
	// that time-bound effects (set element timeouts) carry it.
	Apply(ctx context.Context, eff Effect) error
	// Verify checks the change against the real system.
	Verify(ctx context.Context, eff Effect) error
	// Revert restores exactly what Check saw; it must not remove anything
	// that existed before.
	Revert(ctx context.Context, before Before) error
}

// Extender is implemented by actions whose effect carries its own expiry (a
// kernel set element timeout) and must be told when the engine extends it.
type Extender interface {
	Extend(ctx context.Context, eff Effect) error
}

// Before is the opaque state captured by Check, persisted in the journal.
type Before = json.RawMessage

// Effect carries what an Apply needs to know about its transaction.
type Effect struct {
	TxnID      string
	IncidentID string
	ExpiresAt  time.Time // zero: no expiry
}

// Target names one thing an action touches.
type Target struct {
	Kind  string `json:"kind"` // ip, cidr, pod, namespace, node, service_account, access_key, instance, command, ...
	Value string `json:"value"`
}

func (t Target) String() string { return t.Kind + ":" + t.Value }

// Spec describes an action: `quell actions ls` prints it and playbooks are
// validated against it at load time.
type Spec struct {
	Name        string   `json:"name"`
	Provider    string   `json:"provider"`
	Description string   `json:"description"`
	Params      []Param  `json:"params"`
	Reversible  bool     `json:"reversible"`
	Eradication bool     `json:"eradication,omitempty"` // destroys state: policy requires approval
	Needs       []string `json:"needs,omitempty"`       // privileges: capabilities, RBAC rules, IAM actions
	Example     string   `json:"example,omitempty"`     // a playbook step
}

// Constructor builds an action from validated parameters.
type Constructor func(v Values) (Action, error)

// Definition is what a provider registers.
type Definition struct {
	Spec Spec
	New  Constructor
}

// Registry holds the actions this process offers. It is built once at start
// and read concurrently afterwards.
type Registry struct {
	mu   sync.RWMutex
	defs map[string]Definition
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{defs: map[string]Definition{}} }

// Register adds a definition; registering the same name twice is an error,
// because two providers claiming one name is a wiring bug.
func (r *Registry) Register(d Definition) error {
	if d.Spec.Name == "" || d.New == nil {
		return errors.New("register action: name and constructor are required")
	}
	if err := d.Spec.checkParams(); err != nil {
		return fmt.Errorf("register action %s: %w", d.Spec.Name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.defs[d.Spec.Name]; dup {
		return fmt.Errorf("register action %s: already registered", d.Spec.Name)
	}
	r.defs[d.Spec.Name] = d
	return nil
}

// MustRegister is Register for wiring code where a failure is a programming error.
func (r *Registry) MustRegister(d Definition) {
	if err := r.Register(d); err != nil {
		panic(err)
	}
}

// Lookup returns the definition of name.
func (r *Registry) Lookup(name string) (Definition, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.defs[name]
	return d, ok
}

// Specs lists every registered action, sorted by name.
func (r *Registry) Specs() []Spec {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Spec, 0, len(r.defs))
	for _, d := range r.defs {
		out = append(out, d.Spec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Build validates raw parameters against the action's spec and constructs it.
func (r *Registry) Build(name string, raw map[string]string) (Action, Values, error) {
	d, ok := r.Lookup(name)
	if !ok {
		return nil, Values{}, fmt.Errorf("action %q is not registered", name)
	}
	v, err := d.Spec.Validate(raw)
	if err != nil {
		return nil, Values{}, fmt.Errorf("action %s: %w", name, err)
	}
	a, err := d.New(v)
	if err != nil {
		return nil, Values{}, fmt.Errorf("action %s: %w", name, err)
	}
	return a, v, nil
}

// DeniedError is a refusal by a pre-check: the action would be unsafe. The
// transaction ends as denied, with the reason, and a human is told.
type DeniedError struct{ Reason string }

func (e *DeniedError) Error() string { return "denied: " + e.Reason }

// Deny returns a *DeniedError.
func Deny(format string, args ...any) error {
	return &DeniedError{Reason: fmt.Sprintf(format, args...)}
}

// IsDenied reports whether err is a pre-check refusal, and its reason.
func IsDenied(err error) (string, bool) {
	var d *DeniedError
	if errors.As(err, &d) {
		return d.Reason, true
	}
	return "", false
}

// retryable marks an error as worth retrying (timeouts, throttling, 5xx).
type retryable struct {
	err   error
	after time.Duration
}

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

// Retryable marks err as transient. after, when positive, is the delay the
// remote side asked for (Retry-After).
func Retryable(err error, after time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryable{err: err, after: after}
}

// IsRetryable reports whether a retry can help, and any delay asked for.
func IsRetryable(err error) (time.Duration, bool) {
	var r *retryable
	if errors.As(err, &r) {
		return r.after, true
	}
	return 0, false
}
