package txn_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/enrich/netclass"
	"github.com/quell-ir/quell/internal/store/sqlite"
	"github.com/quell-ir/quell/internal/txn"
)

// world is the test vehicle's "real system": a set of blocked addresses,
// with counters that let tests prove what ran how often.
type world struct {
	mu         sync.Mutex
	blocked    map[string]bool
	applies    atomic.Int32
	reverts    atomic.Int32
	failApply  atomic.Int32 // fail this many applies
	retryApply atomic.Int32 // fail this many applies with a retryable error
	failVerify atomic.Bool
	failRevert atomic.Bool
	denyCheck  atomic.Bool
	inApply    atomic.Int32
	maxInApply atomic.Int32
	applyDelay time.Duration
}

func newWorld() *world { return &world{blocked: map[string]bool{}} }

type blockAction struct {
	w    *world
	addr netip.Addr
}

func (a *blockAction) Key() string { return "test.block/" + a.addr.String() }
func (a *blockAction) Targets() []action.Target {
	return []action.Target{{Kind: "ip", Value: a.addr.String()}}
}
func (a *blockAction) Check(context.Context) (action.Before, error) {
	if a.w.denyCheck.Load() {
		return nil, action.Deny("would cut 42%% of flows")
	}
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	b, _ := json.Marshal(map[string]bool{"existed": a.w.blocked[a.addr.String()]})
	return b, nil
}
func (a *blockAction) Apply(ctx context.Context, _ action.Effect) error {
	n := a.w.inApply.Add(1)
	defer a.w.inApply.Add(-1)
	for {
		m := a.w.maxInApply.Load()
		if n <= m || a.w.maxInApply.CompareAndSwap(m, n) {
			break
		}
	}
	if a.w.applyDelay > 0 {
		time.Sleep(a.w.applyDelay) // simulates a slow remote call; not a synchronisation
	}
	if a.w.retryApply.Add(-1) >= 0 {
		return action.Retryable(errors.New("throttled"), 0)
	}
	if a.w.failApply.Add(-1) >= 0 {
		return errors.New("apply exploded")
	}
	a.w.applies.Add(1)
	a.w.mu.Lock()
	a.w.blocked[a.addr.String()] = true
	a.w.mu.Unlock()
	return nil
}
func (a *blockAction) Verify(context.Context, action.Effect) error {
	if a.w.failVerify.Load() {
		return errors.New("not in the kernel")
	}
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	if !a.w.blocked[a.addr.String()] {
		return errors.New("not blocked")
	}
	return nil
}
func (a *blockAction) Revert(_ context.Context, b action.Before) error {
	if a.w.failRevert.Load() {
		return errors.New("revert exploded")
	}
	var before struct{ Existed bool }
	_ = json.Unmarshal(b, &before)
	a.w.reverts.Add(1)
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	if !before.Existed {
		delete(a.w.blocked, a.addr.String())
	}
	return nil
}

func (w *world) isBlocked(s string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.blocked[s]
}

type decider struct{ d txn.Decision }

func (d decider) Decide(context.Context, txn.DecisionInput) (txn.Decision, error) { return d.d, nil }

func newEngine(t *testing.T, w *world, cfg txn.Config, dec txn.Decider, prot ...txn.Protector) (*txn.Engine, *sqlite.Store) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := action.NewRegistry()
	reg.MustRegister(action.Definition{
		Spec: action.Spec{Name: "test.block", Provider: "test", Reversible: true,
			Params: []action.Param{{Name: "address", Type: action.TypeIP, Required: true}}},
		New: func(v action.Values) (action.Action, error) { return &blockAction{w: w, addr: v.IP("address")}, nil },
	})
	if cfg.Mode == "" {
		cfg.Mode = txn.ModeEnforce
	}
	cfg.Retry.Base = time.Millisecond
	e, err := txn.New(cfg, txn.Deps{Store: st, Registry: reg, Decider: dec, Protectors: prot})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.Stop(ctx)
		st.Close()
	})
	return e, st
}

func submit(t *testing.T, e *txn.Engine, addr string, mode txn.Mode, ttl time.Duration, origin string) *txn.Transaction {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := e.Submit(ctx, txn.Request{Action: "test.block", Params: map[string]string{"address": addr}, Mode: mode, TTL: ttl, Origin: origin, Requester: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitResting(ctx, tr.ID)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	return got
}

func states(t *testing.T, st *sqlite.Store, id string) []txn.State {
	t.Helper()
	j, err := st.Journal(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []txn.State
	for _, e := range j {
		out = append(out, e.To)
	}
	return out
}

func TestEnforceHappyPathAndTTL(t *testing.T) {
	w := newWorld()
	e, st := newEngine(t, w, txn.Config{}, nil)
	tr := submit(t, e, "203.0.113.7", txn.ModeEnforce, 300*time.Millisecond, "o1")
	if tr.State != txn.Active || !w.isBlocked("203.0.113.7") {
		t.Fatalf("state %s blocked %v, want active and blocked", tr.State, w.isBlocked("203.0.113.7"))
	}
	want := []txn.State{txn.Planned, txn.Guarded, txn.Prechecked, txn.Applying, txn.Applied, txn.Verified, txn.Active}
	if got := states(t, st, tr.ID); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("journal %v, want %v", got, want)
	}
	// The scheduler, not the test, decides when the TTL is up.
	awaitState(t, e, tr.ID, txn.Expired)
	if w.isBlocked("203.0.113.7") || w.reverts.Load() != 1 {
		t.Fatalf("after expiry blocked=%v reverts=%d", w.isBlocked("203.0.113.7"), w.reverts.Load())
	}
}

func TestAuditModeHasNoSideEffects(t *testing.T) {
	w := newWorld()
	e, _ := newEngine(t, w, txn.Config{Mode: txn.ModeAudit}, nil)
	tr := submit(t, e, "203.0.113.7", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Audited {
		t.Fatalf("state %s, want audited", tr.State)
	}
	if w.applies.Load() != 0 || w.isBlocked("203.0.113.7") {
		t.Fatal("audit mode applied the action")
	}
	if tr.Reason == "" {
		t.Fatal("audit record has no reason")
	}
}

func TestVerifyFailureRollsBack(t *testing.T) {
	w := newWorld()
	w.failVerify.Store(true)
	e, st := newEngine(t, w, txn.Config{}, nil)
	tr := submit(t, e, "203.0.113.8", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Reverted {
		t.Fatalf("state %s, want reverted", tr.State)
	}
	if w.isBlocked("203.0.113.8") || w.reverts.Load() != 1 {
		t.Fatal("rollback did not restore the previous state")
	}
	got := states(t, st, tr.ID)
	if got[len(got)-2] != txn.Reverting {
		t.Fatalf("journal %v: no reverting before reverted", got)
	}
}

func TestRevertFailureIsItsOwnState(t *testing.T) {
	w := newWorld()
	w.failVerify.Store(true)
	w.failRevert.Store(true)
	e, _ := newEngine(t, w, txn.Config{Retry: txn.RetryConfig{MaxAttempts: 2}}, nil)
	tr := submit(t, e, "203.0.113.9", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.RevertFailed {
		t.Fatalf("state %s, want revert_failed", tr.State)
	}
}

func TestPrecheckPreservesExistingEffect(t *testing.T) {
	w := newWorld()
	w.blocked["198.51.100.1"] = true // blocked before quell came
	e, _ := newEngine(t, w, txn.Config{}, nil)
	tr := submit(t, e, "198.51.100.1", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Active {
		t.Fatalf("state %s", tr.State)
	}
	ctx := context.Background()
	if _, err := e.Revert(ctx, tr.ID, "bob", "done"); err != nil {
		t.Fatal(err)
	}
	if !w.isBlocked("198.51.100.1") {
		t.Fatal("revert removed an effect that existed before the transaction")
	}
}

func TestIdempotentJoinExtendsAndNeverActsTwice(t *testing.T) {
	w := newWorld()
	e, _ := newEngine(t, w, txn.Config{}, nil)
	first := submit(t, e, "203.0.113.10", txn.ModeEnforce, time.Minute, "o1")
	second := submit(t, e, "203.0.113.10", txn.ModeEnforce, time.Hour, "o2")
	if second.ID != first.ID {
		t.Fatalf("second request created %s, want to join %s", second.ID, first.ID)
	}
	if !second.ExpiresAt.After(*first.ExpiresAt) {
		t.Fatalf("expiry not extended: %v -> %v", first.ExpiresAt, second.ExpiresAt)
	}
	again := submit(t, e, "203.0.113.10", txn.ModeEnforce, time.Hour, "o1")
	if again.ID != first.ID || w.applies.Load() != 1 {
		t.Fatalf("replayed origin acted again: applies=%d", w.applies.Load())
	}
}

func TestRetryableErrorsAreRetried(t *testing.T) {
	w := newWorld()
	w.retryApply.Store(2)
	e, _ := newEngine(t, w, txn.Config{}, nil)
	tr := submit(t, e, "203.0.113.11", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Active || tr.Attempts != 2 {
		t.Fatalf("state %s attempts %d, want active after 2 retries", tr.State, tr.Attempts)
	}
}

func TestPermanentApplyErrorRollsBack(t *testing.T) {
	w := newWorld()
	w.failApply.Store(1)
	e, _ := newEngine(t, w, txn.Config{}, nil)
	tr := submit(t, e, "203.0.113.12", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Reverted || tr.Error == "" {
		t.Fatalf("state %s error %q", tr.State, tr.Error)
	}
}

func TestProtectedTargetIsDenied(t *testing.T) {
	w := newWorld()
	prot, err := netclass.New(netclass.Config{Protected: []netclass.ProtectedPrefix{{CIDR: "10.0.0.0/24", Reason: "load balancers"}}})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := newEngine(t, w, txn.Config{}, nil, prot)
	tr := submit(t, e, "10.0.0.5", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Denied || w.applies.Load() != 0 {
		t.Fatalf("state %s applies %d: protected target not denied", tr.State, w.applies.Load())
	}
}

type brokenProtector struct{}

func (brokenProtector) Protected(context.Context, action.Target) (string, bool, error) {
	return "", false, errors.New("allowlist store unreachable")
}

func TestGuardsFailClosed(t *testing.T) {
	w := newWorld()
	e, _ := newEngine(t, w, txn.Config{}, nil, brokenProtector{})
	tr := submit(t, e, "203.0.113.13", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Denied || w.applies.Load() != 0 {
		t.Fatalf("state %s: a guard that cannot be evaluated must deny", tr.State)
	}
}

func TestPrecheckDenial(t *testing.T) {
	w := newWorld()
	w.denyCheck.Store(true)
	e, _ := newEngine(t, w, txn.Config{}, nil)
	tr := submit(t, e, "203.0.113.14", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Denied || tr.Reason == "" {
		t.Fatalf("state %s reason %q", tr.State, tr.Reason)
	}
}

func TestInvalidParamsLeaveARecord(t *testing.T) {
	w := newWorld()
	e, _ := newEngine(t, w, txn.Config{}, nil)
	tr := submit(t, e, "$(touch /tmp/pwned)", txn.ModeEnforce, time.Hour, "o1")
	if tr.State != txn.Failed || tr.Reason == "" {
		t.Fatalf("state %s reason %q", tr.State, tr.Reason)
	}
}

func TestApprovalFlow(t *testing.T) {
	w := newWorld()
	e, _ := newEngine(t, w, txn.Config{}, decider{txn.Decision{Verdict: txn.RequireApproval, Approvers: 2, Reasons: []string{"eradication"}}})
	ctx := context.Background()
	tr, err := e.Submit(ctx, txn.Request{Action: "test.block", Params: map[string]string{"address": "203.0.113.20"}, Mode: txn.ModeEnforce, Origin: "o1", Requester: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	tr = awaitState(t, e, tr.ID, txn.AwaitingApproval)
	var ie *txn.InputError
	if _, err := e.Approve(ctx, tr.ID, "alice", "me"); !errors.As(err, &ie) {
		t.Fatalf("self-approval: got %v, want an input error", err)
	}
	if _, err := e.Approve(ctx, tr.ID, "bob", "ok"); err != nil {
		t.Fatal(err)
	}
	if w.applies.Load() != 0 {
		t.Fatal("ran with one of two approvals")
	}
	if _, err := e.Approve(ctx, tr.ID, "bob", "again"); !errors.As(err, &ie) {
		t.Fatal("the same approver counted twice")
	}
	if _, err := e.Approve(ctx, tr.ID, "carol", "ok"); err != nil {
		t.Fatal(err)
	}
	tr = awaitState(t, e, tr.ID, txn.Active)
	if len(tr.Approvals) != 2 || w.applies.Load() != 1 {
		t.Fatalf("approvals %v applies %d", tr.Approvals, w.applies.Load())
	}
}

func TestRejectAndApprovalExpiry(t *testing.T) {
	w := newWorld()
	e, _ := newEngine(t, w, txn.Config{}, decider{txn.Decision{Verdict: txn.RequireApproval, ApprovalTimeout: 200 * time.Millisecond}})
	ctx := context.Background()
	a, _ := e.Submit(ctx, txn.Request{Action: "test.block", Params: map[string]string{"address": "203.0.113.21"}, Mode: txn.ModeEnforce, Origin: "o1"})
	b, _ := e.Submit(ctx, txn.Request{Action: "test.block", Params: map[string]string{"address": "203.0.113.22"}, Mode: txn.ModeEnforce, Origin: "o2"})
	awaitState(t, e, a.ID, txn.AwaitingApproval)
	if _, err := e.Reject(ctx, a.ID, "bob", "false positive"); err != nil {
		t.Fatal(err)
	}
	if got := awaitState(t, e, a.ID, txn.Rejected); got.Reason == "" {
		t.Fatal("no reason")
	}
	if got := awaitState(t, e, b.ID, txn.Rejected); got.Reason != "approval expired" {
		t.Fatalf("reason %q", got.Reason)
	}
	if w.applies.Load() != 0 {
		t.Fatal("rejected transactions ran")
	}
}

func awaitState(t *testing.T, e *txn.Engine, id string, want txn.State) *txn.Transaction {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var last *txn.Transaction
	for ctx.Err() == nil {
		tr, err := e.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if tr.State == want {
			return tr
		}
		last = tr
		e.WaitChange(ctx, id, tr.Version)
	}
	t.Fatalf("transaction %s stuck in %s, want %s", id, last.State, want)
	return nil
}

func TestConcurrencyLimit(t *testing.T) {
	w := newWorld()
	w.applyDelay = 20 * time.Millisecond
	e, _ := newEngine(t, w, txn.Config{Concurrency: 3}, nil)
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			submit(t, e, fmt.Sprintf("203.0.113.%d", 100+i), txn.ModeEnforce, time.Hour, fmt.Sprint("c", i))
		}()
	}
	wg.Wait()
	if m := w.maxInApply.Load(); m > 3 || m < 1 {
		t.Fatalf("max concurrent applies %d, limit 3", m)
	}
	if w.applies.Load() != 12 {
		t.Fatalf("applies %d, want 12", w.applies.Load())
	}
}
