package txn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"

	"github.com/quell-ir/quell/internal/action"
)

// Observer is told about every persisted transition, after it is durable.
// Observers must not block: notifications and incident updates queue work.
type Observer func(t Transaction, from State)

// Deps are the engine's collaborators.
type Deps struct {
	Store      Store
	Registry   *action.Registry
	Decider    Decider     // nil: AllowAll
	Protectors []Protector // every target is checked against each
	Logger     *slog.Logger
	Metrics    *Metrics // nil: unregistered metrics
	Tracer     trace.TracerProvider
	Now        func() time.Time
}

// Engine runs transactions.
type Engine struct {
	cfg       Config
	store     Store
	reg       *action.Registry
	decider   Decider
	protect   []Protector
	log       *slog.Logger
	m         *Metrics
	tracer    trace.Tracer
	now       func() time.Time
	sem       chan struct{}
	limiters  map[string]*rate.Limiter
	locks     [256]sync.Mutex
	sched     *scheduler
	observers []Observer
	waiters   waiters

	mu      sync.Mutex
	ctx     context.Context // background work; cancelled by Stop
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped bool
}

// New builds an engine. Call Start to recover and begin expiring.
func New(cfg Config, d Deps) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("txn config: %w", err)
	}
	if d.Store == nil || d.Registry == nil {
		return nil, errors.New("txn: store and registry are required")
	}
	e := &Engine{
		cfg: cfg, store: d.Store, reg: d.Registry, decider: d.Decider, protect: d.Protectors,
		log: d.Logger, m: d.Metrics, now: d.Now,
		sem:      make(chan struct{}, cfg.Concurrency),
		limiters: map[string]*rate.Limiter{},
	}
	if e.decider == nil {
		e.decider = AllowAll{}
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.m == nil {
		e.m = NewMetrics(nil)
	}
	if e.now == nil {
		e.now = time.Now
	}
	tp := d.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	e.tracer = tp.Tracer("github.com/quell-ir/quell/internal/txn")
	for p, rl := range cfg.RateLimits {
		burst := rl.Burst
		if burst == 0 {
			burst = int(rl.PerSecond) + 1
		}
		e.limiters[p] = rate.NewLimiter(rate.Limit(rl.PerSecond), burst)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.sched = newScheduler(e.now, e.onTimer)
	return e, nil
}

// Mode returns the global mode.
func (e *Engine) Mode() Mode { return e.cfg.Mode }

// Observe registers an observer. Call before Start.
func (e *Engine) Observe(o Observer) { e.observers = append(e.observers, o) }

// Start recovers every non-terminal transaction and starts the expiry clock.
func (e *Engine) Start(ctx context.Context) error {
	ts, err := e.store.NonTerminal(ctx)
	if err != nil {
		return fmt.Errorf("recover transactions: %w", err)
	}
	e.log.Info("recovering transactions", "count", len(ts))
	for _, t := range ts {
		e.spawn(func(ctx context.Context) { e.recover(ctx, t) })
	}
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.sched.run(e.ctx) }()
	return nil
}

// Stop waits for in-flight runs up to ctx's deadline, then cancels them.
// A cancelled run stays in its persisted state and is recovered next start.
func (e *Engine) Stop(ctx context.Context) error {
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.inflightWait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	e.cancel()
	e.wg.Wait()
	return nil
}

func (e *Engine) inflightWait() {
	// Fill the semaphore: when we hold every slot, nothing is running.
	for i := 0; i < cap(e.sem); i++ {
		select {
		case e.sem <- struct{}{}:
		case <-e.ctx.Done():
			return
		}
	}
	for i := 0; i < cap(e.sem); i++ {
		<-e.sem
	}
}

func (e *Engine) spawn(f func(ctx context.Context)) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return false
	}
	e.wg.Add(1)
	go func() { defer e.wg.Done(); f(e.ctx) }()
	return true
}

func (e *Engine) lock(id string) func() {
	h := fnv.New32a()
	h.Write([]byte(id))
	m := &e.locks[h.Sum32()%uint32(len(e.locks))]
	m.Lock()
	return m.Unlock
}

// Submit records a request as a transaction and starts running it. It
// returns once the transaction is durable (planned, or an existing one that
// already holds the request's origin or key).
func (e *Engine) Submit(ctx context.Context, req Request) (*Transaction, error) {
	now := e.now().UTC()
	mode := e.effectiveMode(req.Mode)
	t := &Transaction{
		ID: newID(), Action: req.Action, Params: req.Params, Mode: mode, State: Planned,
		EventID: req.EventID(), IncidentID: req.IncidentID, Playbook: req.Playbook, Step: req.Step,
		Origin: req.Origin, Requester: req.Requester, TTL: req.TTL, CreatedAt: now, UpdatedAt: now,
	}
	if t.Origin == "" {
		t.Origin = "api/" + t.ID
	}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		t.TraceID = sc.TraceID().String()
	}
	a, vals, err := e.reg.Build(req.Action, req.Params)
	if err != nil {
		// Attacker-controlled values that fail their type still leave a
		// record: the refusal is a decision, with its reason.
		t.Key = "invalid/" + t.Origin
		t.State = Failed
		t.Error = err.Error()
		t.Reason = "parameters rejected before any effect: " + err.Error()
		existing, created, cerr := e.store.CreateTxn(ctx, t, e.entry(t, "", Failed, t.Reason))
		if cerr != nil {
			return nil, fmt.Errorf("record rejected %s: %w", req.Action, cerr)
		}
		if !created {
			return existing, nil
		}
		e.m.outcome(t)
		e.notify(*t, "")
		return t, nil
	}
	t.Params = vals.Raw()
	t.Key = a.Key()
	t.Targets = a.Targets()
	if mode == ModeAudit {
		// Audit records never hold a key: they must not block enforcement.
		t.Key = "audit/" + t.Origin
	}
	// Guards and policy have no side effects, so they run before the first
	// write: the request and its decision are journaled together, in one
	// commit. Nothing happens before that commit.
	r := req
	to, detail := e.decide(ctx, t, &r)
	entries := []JournalEntry{e.entry(t, "", Planned, "requested by "+t.Origin)}
	entries = append(entries, JournalEntry{TxnID: t.ID, Seq: 2, From: Planned, To: to, At: e.now().UTC(), Detail: detail})
	t.State = to
	existing, created, err := e.store.CreateTxn(ctx, t, entries...)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", req.Action, err)
	}
	if !created {
		if existing.Origin != t.Origin {
			return e.join(ctx, existing, req, a)
		}
		return existing, nil
	}
	if to.Terminal() {
		e.m.outcome(t)
		e.m.duration(t, e.now())
	}
	e.notify(*t, Planned)
	switch to {
	case AwaitingApproval:
		e.sched.add(t.ID, *t.ApprovalBy, timerApproval)
	case Guarded:
		cp := *t
		e.spawn(func(ctx context.Context) { e.run(ctx, &cp, a) })
	}
	return t, nil
}

// EventID is the id of the request's event, if any.
func (r Request) EventID() string {
	if r.Event != nil {
		return r.Event.ID
	}
	return ""
}

func (e *Engine) effectiveMode(m Mode) Mode {
	if e.cfg.Mode == ModeAudit || m == ModeAudit || m == "" {
		return ModeAudit
	}
	return ModeEnforce
}

// join handles a second request for a key already held: it confirms the
// containment and extends its expiry if the new request asks for longer.
// It never acts again.
func (e *Engine) join(ctx context.Context, held *Transaction, req Request, a action.Action) (*Transaction, error) {
	unlock := e.lock(held.ID)
	defer unlock()
	t, err := e.store.GetTxn(ctx, held.ID)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", held.ID, err)
	}
	if t.State != Active || t.ExpiresAt == nil || req.TTL <= 0 {
		e.log.Info("request joined existing transaction", "txn", t.ID, "state", t.State, "origin", req.Origin)
		return t, nil
	}
	want := e.now().UTC().Add(req.TTL)
	if !want.After(*t.ExpiresAt) {
		return t, nil
	}
	if ext, ok := a.(action.Extender); ok {
		if err := ext.Extend(ctx, action.Effect{TxnID: t.ID, IncidentID: t.IncidentID, ExpiresAt: want}); err != nil {
			e.log.Warn("extend failed; keeping the original expiry", "txn", t.ID, "err", err)
			return t, nil
		}
	}
	t.ExpiresAt = &want
	if err := e.persist(ctx, t, Active, "extended to "+want.Format(time.RFC3339)+" by "+req.Origin); err != nil {
		return nil, err
	}
	e.sched.add(t.ID, want, timerExpiry)
	return t, nil
}

func (e *Engine) entry(t *Transaction, from, to State, detail string) JournalEntry {
	return JournalEntry{TxnID: t.ID, Seq: t.Version + 1, From: from, To: to, At: e.now().UTC(), Detail: detail}
}

// step is one transition to journal.
type step struct {
	to     State
	detail string
}

// persist journals a transition. It is called before the side effect the new
// state announces.
func (e *Engine) persist(ctx context.Context, t *Transaction, to State, detail string) error {
	return e.persistSteps(ctx, t, step{to, detail})
}

// persistSteps journals consecutive transitions in one commit: used where
// no side effect lies between them (pre-check passed, then applying).
func (e *Engine) persistSteps(ctx context.Context, t *Transaction, steps ...step) error {
	prev := *t
	now := e.now().UTC()
	entries := make([]JournalEntry, len(steps))
	from := t.State
	for i, st := range steps {
		entries[i] = JournalEntry{TxnID: t.ID, Seq: t.Version + int64(i) + 1, From: from, To: st.to, At: now, Detail: st.detail}
		from = st.to
	}
	t.State = from
	t.UpdatedAt = now
	// A persist must not be lost to a cancelled run context: the journal is
	// what recovery trusts.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := e.store.UpdateTxn(pctx, t, entries...); err != nil {
		*t = prev
		return fmt.Errorf("journal %s %s->%s: %w", t.ID, prev.State, t.State, err)
	}
	for _, en := range entries {
		e.log.Debug("transition", "txn", t.ID, "action", t.Action, "from", en.From, "to", en.To, "detail", en.Detail)
		view := *t
		view.State = en.To
		if en.To.Terminal() {
			e.m.outcome(&view)
			e.m.duration(&view, e.now())
		}
		e.notify(view, en.From)
	}
	return nil
}

func (e *Engine) notify(t Transaction, from State) {
	e.waiters.wake(t.ID)
	for _, o := range e.observers {
		o(t, from)
	}
}

// run drives a transaction that passed its guards to a resting state.
func (e *Engine) run(ctx context.Context, t *Transaction, a action.Action) {
	if !e.acquire(ctx) {
		return
	}
	defer e.release()
	unlock := e.lock(t.ID)
	defer unlock()
	ctx, span := e.tracer.Start(ctx, "txn.run", trace.WithAttributes(
		attribute.String("txn.id", t.ID), attribute.String("txn.action", t.Action), attribute.String("txn.mode", string(t.Mode))))
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.MaxDuration)
	defer cancel()
	e.execute(ctx, t, a)
}

func (e *Engine) fail(span trace.Span, t *Transaction, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	e.log.Error("transaction could not be journaled; it will be recovered on restart", "txn", t.ID, "err", err)
}

func (e *Engine) acquire(ctx context.Context) bool {
	start := e.now()
	select {
	case e.sem <- struct{}{}:
		e.m.inflight.Inc()
		e.m.queueWait.Observe(e.now().Sub(start).Seconds())
		return true
	case <-ctx.Done():
		return false
	}
}

func (e *Engine) release() {
	e.m.inflight.Dec()
	<-e.sem
}

// decide runs the guards and the policy without persisting anything: they
// have no side effects. It fills t's decision, mode, TTL and reason and
// returns the state the transaction moves to (Guarded, AwaitingApproval,
// Denied or Audited) with the journal detail.
func (e *Engine) decide(ctx context.Context, t *Transaction, req *Request) (State, string) {
	_, span := e.tracer.Start(ctx, "txn.guard")
	defer span.End()
	spec, _ := e.reg.Lookup(t.Action)
	for _, target := range t.Targets {
		for _, p := range e.protect {
			reason, protected, err := p.Protected(ctx, target)
			if err != nil {
				// Guards fail closed.
				t.Reason = fmt.Sprintf("protected-target guard could not be evaluated for %s: %v", target, err)
				return Denied, t.Reason
			}
			if protected {
				t.Reason = fmt.Sprintf("target %s is protected: %s", target, reason)
				return Denied, t.Reason
			}
		}
	}
	if req != nil && req.Context != nil && req.Context.Enrichment != nil && req.Context.Enrichment.FailClosed && t.Mode == ModeEnforce {
		t.Reason = "a fail-closed enricher could not answer (" + strings.Join(req.Context.Enrichment.Missing, ", ") + "): no automatic action"
		return Denied, t.Reason
	}
	in := DecisionInput{Spec: spec.Spec, Targets: t.Targets, Key: t.Key, Mode: t.Mode, Time: e.now().UTC()}
	if req != nil {
		in.Request = *req
	} else {
		in.Request = Request{Action: t.Action, Params: t.Params, Mode: t.Mode, TTL: t.TTL, IncidentID: t.IncidentID, Playbook: t.Playbook, Step: t.Step, Origin: t.Origin, Requester: t.Requester}
	}
	start := e.now()
	d, err := e.decider.Decide(ctx, in)
	d.Latency = e.now().Sub(start)
	e.m.decisionLatency.Observe(d.Latency.Seconds())
	if d.DecidedAt.IsZero() {
		d.DecidedAt = e.now().UTC()
	}
	if err != nil {
		d.Verdict = Deny
		d.Reasons = append(d.Reasons, "policy could not be evaluated: "+err.Error())
	}
	t.Decision = &d
	switch d.Verdict {
	case Allow, RequireApproval:
	default:
		t.Reason = "policy denied: " + strings.Join(d.Reasons, "; ")
		return Denied, t.Reason
	}
	if d.ForceAudit {
		t.Mode = ModeAudit
	}
	if d.MaxTTL > 0 && (t.TTL == 0 || t.TTL > d.MaxTTL) {
		t.TTL = d.MaxTTL
	}
	if t.TTL == 0 && spec.Spec.Reversible {
		t.TTL = e.cfg.DefaultTTL
	}
	needApproval := d.Verdict == RequireApproval || (req != nil && req.Approval)
	if t.Mode == ModeAudit {
		t.Reason = fmt.Sprintf("audit mode: would run %s on %s", t.Action, targetList(t.Targets))
		if needApproval {
			t.Reason += " after approval"
		}
		return Audited, t.Reason
	}
	if needApproval && !approved(t) {
		timeout := d.ApprovalTimeout
		if timeout == 0 {
			timeout = e.cfg.ApprovalTimeout
		}
		by := e.now().UTC().Add(timeout)
		t.ApprovalBy = &by
		return AwaitingApproval, "waiting for approval until " + by.Format(time.RFC3339)
	}
	return Guarded, "guards passed: " + strings.Join(d.Reasons, "; ")
}

func targetList(ts []action.Target) string {
	if len(ts) == 0 {
		return "no target"
	}
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, ", ")
}

func approved(t *Transaction) bool {
	need := 1
	if t.Decision != nil && t.Decision.Approvers > 1 {
		need = t.Decision.Approvers
	}
	who := map[string]bool{}
	for _, a := range t.Approvals {
		if a.Approved {
			who[a.By] = true
		}
	}
	return len(who) >= need
}

// execute runs Check, Apply, Verify and commits; on failure it rolls back.
// t is in Guarded (or later, when recovering).
func (e *Engine) execute(ctx context.Context, t *Transaction, a action.Action) {
	spec, _ := e.reg.Lookup(t.Action)
	provider := spec.Spec.Provider
	if t.State == Guarded {
		before, err := e.phase(ctx, t, "check", provider, func(ctx context.Context) (action.Before, error) { return a.Check(ctx) })
		if err != nil {
			if reason, ok := action.IsDenied(err); ok {
				t.Reason = "pre-check refused: " + reason
				_ = e.persist(ctx, t, Denied, t.Reason)
				e.log.Warn("transaction denied by pre-check", "txn", t.ID, "action", t.Action, "reason", reason)
				return
			}
			t.Error = err.Error()
			t.Reason = "pre-check failed; nothing was changed"
			_ = e.persist(ctx, t, Failed, t.Reason+": "+err.Error())
			return
		}
		t.Before = before
		if t.TTL > 0 {
			exp := e.now().UTC().Add(t.TTL)
			t.ExpiresAt = &exp
		}
		// Nothing happens between the two: one commit journals both,
		// still before Apply.
		if err := e.persistSteps(ctx, t, step{Prechecked, "pre-check passed"}, step{Applying, "applying"}); err != nil {
			return
		}
	}
	if t.State == Prechecked { // recovered from a journal written before the merge
		if t.TTL > 0 {
			exp := e.now().UTC().Add(t.TTL)
			t.ExpiresAt = &exp
		}
		if err := e.persist(ctx, t, Applying, "applying"); err != nil {
			return
		}
	}
	if t.State == Applying {
		if _, err := e.phase(ctx, t, "apply", provider, func(ctx context.Context) (action.Before, error) { return nil, a.Apply(ctx, e.effect(t)) }); err != nil {
			t.Error = err.Error()
			e.rollback(ctx, t, a, "apply failed: "+err.Error())
			return
		}
		if err := e.persist(ctx, t, Applied, "applied"); err != nil {
			return
		}
	}
	if t.State == Applied {
		if _, err := e.phase(ctx, t, "verify", provider, func(ctx context.Context) (action.Before, error) { return nil, a.Verify(ctx, e.effect(t)) }); err != nil {
			t.Error = err.Error()
			e.rollback(ctx, t, a, "verify failed: "+err.Error())
			return
		}
		if err := e.persist(ctx, t, Verified, "verified against the real system"); err != nil {
			return
		}
	}
	if t.State == Verified {
		e.commit(ctx, t, spec.Spec)
	}
}

func (e *Engine) commit(ctx context.Context, t *Transaction, spec action.Spec) {
	if !spec.Reversible {
		t.Reason = "done"
		_ = e.persist(ctx, t, Completed, "one-shot action completed")
		return
	}
	detail := "active without expiry"
	if t.ExpiresAt != nil {
		detail = "active until " + t.ExpiresAt.Format(time.RFC3339)
	}
	t.Reason = ""
	if err := e.persist(ctx, t, Active, detail); err != nil {
		return
	}
	e.m.outcome(t)
	if t.ExpiresAt != nil {
		e.sched.add(t.ID, *t.ExpiresAt, timerExpiry)
	}
}

func (e *Engine) effect(t *Transaction) action.Effect {
	eff := action.Effect{TxnID: t.ID, IncidentID: t.IncidentID}
	if t.ExpiresAt != nil {
		eff.ExpiresAt = *t.ExpiresAt
	}
	return eff
}

// phase runs one action call with tracing, rate limiting, metrics and
// retries of retryable errors.
func (e *Engine) phase(ctx context.Context, t *Transaction, name, provider string, f func(context.Context) (action.Before, error)) (action.Before, error) {
	ctx, span := e.tracer.Start(ctx, "txn."+name, trace.WithAttributes(attribute.String("txn.id", t.ID), attribute.String("txn.action", t.Action)))
	defer span.End()
	var lastErr error
	for attempt := 1; attempt <= e.cfg.Retry.MaxAttempts; attempt++ {
		if lim := e.limiters[provider]; lim != nil {
			if err := lim.Wait(ctx); err != nil {
				lastErr = fmt.Errorf("%s: rate limit wait: %w", name, err)
				break
			}
		}
		start := e.now()
		out, err := f(ctx)
		e.m.actionDuration.WithLabelValues(t.Action, name).Observe(e.now().Sub(start).Seconds())
		if err == nil {
			return out, nil
		}
		lastErr = err
		after, retry := action.IsRetryable(err)
		if !retry || attempt == e.cfg.Retry.MaxAttempts {
			break
		}
		t.Attempts++
		e.m.retries.WithLabelValues(t.Action, name).Inc()
		wait := e.backoff(attempt, after)
		e.log.Warn("retrying action", "txn", t.ID, "action", t.Action, "phase", name, "attempt", attempt, "wait", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			lastErr = fmt.Errorf("%s: %w (after %v)", name, ctx.Err(), err)
			attempt = e.cfg.Retry.MaxAttempts
		}
	}
	span.RecordError(lastErr)
	span.SetStatus(codes.Error, lastErr.Error())
	return nil, lastErr
}

func (e *Engine) backoff(attempt int, after time.Duration) time.Duration {
	d := e.cfg.Retry.Base << (attempt - 1)
	if d > e.cfg.Retry.Max || d <= 0 {
		d = e.cfg.Retry.Max
	}
	d = time.Duration(rand.Int64N(int64(d)) + 1) // full jitter
	if after > d {
		d = after
	}
	return d
}

// rollback undoes a failed apply or verify: it restores what Check saw.
func (e *Engine) rollback(ctx context.Context, t *Transaction, a action.Action, cause string) {
	e.m.rollbacks.WithLabelValues(t.Action, "failure").Inc()
	t.RevertCause = "failure"
	if err := e.persist(ctx, t, Reverting, "rolling back: "+cause); err != nil {
		return
	}
	e.revert(ctx, t, a)
}

// revert runs Revert for a transaction already journaled as Reverting.
func (e *Engine) revert(ctx context.Context, t *Transaction, a action.Action) {
	spec, _ := e.reg.Lookup(t.Action)
	// Revert must outlive the run's deadline: a containment must not be
	// stranded because the forward path ran out of time.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.MaxDuration)
	defer cancel()
	_, err := e.phase(rctx, t, "revert", spec.Spec.Provider, func(ctx context.Context) (action.Before, error) { return nil, a.Revert(ctx, t.Before) })
	if err != nil {
		t.Error = "revert: " + err.Error()
		t.Reason = "revert failed: a human must restore " + targetList(t.Targets)
		e.m.revertFailures.WithLabelValues(t.Action).Inc()
		e.log.Error("REVERT FAILED: containment may be left in place; page a human", "txn", t.ID, "action", t.Action, "targets", targetList(t.Targets), "err", err)
		_ = e.persist(ctx, t, RevertFailed, t.Reason+": "+err.Error())
		return
	}
	final := Reverted
	switch t.RevertCause {
	case "ttl":
		final = Expired
		t.Reason = "expired at the end of its TTL"
	case "failure":
		t.Reason = "rolled back after failure: " + t.Error
	default:
		if t.Reason == "" {
			t.Reason = "reverted on request"
		}
	}
	_ = e.persist(ctx, t, final, t.Reason)
}

// Revert undoes an active transaction on request.
func (e *Engine) Revert(ctx context.Context, id, by, comment string) (*Transaction, error) {
	return e.humanAction(ctx, id, func(t *Transaction, a action.Action) error {
		switch t.State {
		case Active, Verified, Applied:
		case AwaitingApproval:
			t.Reason = "withdrawn by " + by
			return e.persist(ctx, t, Rejected, t.Reason+": "+comment)
		default:
			return &StateError{ID: id, State: t.State, Op: "revert"}
		}
		t.RevertCause = "request"
		t.Reason = "reverted by " + by
		if comment != "" {
			t.Reason += ": " + comment
		}
		e.m.rollbacks.WithLabelValues(t.Action, "request").Inc()
		if err := e.persist(ctx, t, Reverting, t.Reason); err != nil {
			return err
		}
		e.sched.remove(t.ID)
		e.revert(ctx, t, a)
		return nil
	})
}

// Approve records an approval; when enough distinct people approved, the
// transaction runs.
func (e *Engine) Approve(ctx context.Context, id, by, comment string) (*Transaction, error) {
	return e.ApproveAs(ctx, id, Approver{Name: by}, comment)
}

// Approver is who approves. Verified is set when the identity and groups
// come from an authenticated credential (an API token), not from a claim.
type Approver struct {
	Name     string
	Groups   []string
	Verified bool
}

// ApproveAs is Approve with the approver's groups: when the decision names
// an approver group and the identity is verified, the approver must be in
// it. An unverified identity (an open API on loopback) is recorded as such.
func (e *Engine) ApproveAs(ctx context.Context, id string, who Approver, comment string) (*Transaction, error) {
	by := who.Name
	var run bool
	t, err := e.humanAction(ctx, id, func(t *Transaction, a action.Action) error {
		if t.State != AwaitingApproval {
			return &StateError{ID: id, State: t.State, Op: "approve"}
		}
		if by == "" {
			return &InputError{Field: "by", Reason: "approver identity is required"}
		}
		if g := t.Decision.approverGroup(); g != "" {
			switch {
			case who.Verified && !slices.Contains(who.Groups, g):
				return &InputError{Field: "by", Reason: fmt.Sprintf("%s is not in the approver group %s the policy requires", by, g)}
			case !who.Verified:
				comment = strings.TrimSpace(comment + " [group " + g + " not verified: unauthenticated API]")
			}
		}
		if t.Requester != "" && by == t.Requester {
			return &InputError{Field: "by", Reason: "the requester cannot approve their own request"}
		}
		for _, ap := range t.Approvals {
			if ap.By == by {
				return &InputError{Field: "by", Reason: by + " has already approved"}
			}
		}
		t.Approvals = append(t.Approvals, Approval{By: by, Approved: true, Comment: comment, At: e.now().UTC()})
		if !approved(t) {
			return e.persist(ctx, t, AwaitingApproval, "approved by "+by+"; more approvals needed")
		}
		e.sched.remove(t.ID)
		run = true
		return e.persist(ctx, t, Guarded, "approved by "+by)
	})
	if err != nil || !run {
		return t, err
	}
	cp := *t
	a, _, berr := e.reg.Build(cp.Action, cp.Params)
	if berr != nil {
		return t, berr
	}
	e.spawn(func(ctx context.Context) {
		if !e.acquire(ctx) {
			return
		}
		defer e.release()
		unlock := e.lock(cp.ID)
		defer unlock()
		cur, err := e.store.GetTxn(ctx, cp.ID)
		if err != nil || cur.State != Guarded {
			return
		}
		ctx, cancel := context.WithTimeout(ctx, e.cfg.MaxDuration)
		defer cancel()
		e.execute(ctx, cur, a)
	})
	return t, nil
}

// Reject ends a transaction waiting for approval.
func (e *Engine) Reject(ctx context.Context, id, by, comment string) (*Transaction, error) {
	return e.humanAction(ctx, id, func(t *Transaction, a action.Action) error {
		if t.State != AwaitingApproval {
			return &StateError{ID: id, State: t.State, Op: "reject"}
		}
		if by == "" {
			return &InputError{Field: "by", Reason: "identity is required"}
		}
		t.Approvals = append(t.Approvals, Approval{By: by, Approved: false, Comment: comment, At: e.now().UTC()})
		t.Reason = "rejected by " + by
		e.sched.remove(t.ID)
		return e.persist(ctx, t, Rejected, t.Reason+": "+comment)
	})
}

func (e *Engine) humanAction(ctx context.Context, id string, f func(*Transaction, action.Action) error) (*Transaction, error) {
	unlock := e.lock(id)
	defer unlock()
	t, err := e.store.GetTxn(ctx, id)
	if err != nil {
		return nil, err
	}
	a, _, err := e.reg.Build(t.Action, t.Params)
	if err != nil {
		return nil, fmt.Errorf("rebuild %s: %w", t.Action, err)
	}
	if err := f(t, a); err != nil {
		return nil, err
	}
	return t, nil
}

func (d *Decision) approverGroup() string {
	if d == nil {
		return ""
	}
	return d.ApproverGroup
}

// StateError says an operation does not apply to a transaction's state.
type StateError struct {
	ID    string
	State State
	Op    string
}

func (e *StateError) Error() string {
	return fmt.Sprintf("cannot %s transaction %s: it is %s", e.Op, e.ID, e.State)
}

// InputError names a bad field of a human request.
type InputError struct{ Field, Reason string }

func (e *InputError) Error() string { return e.Field + ": " + e.Reason }

// onTimer fires for TTL expiry and approval deadlines.
func (e *Engine) onTimer(id string, kind timerKind) {
	e.spawn(func(ctx context.Context) {
		unlock := e.lock(id)
		defer unlock()
		t, err := e.store.GetTxn(ctx, id)
		if err != nil {
			e.log.Error("timer: load transaction", "txn", id, "err", err)
			return
		}
		switch {
		case kind == timerApproval && t.State == AwaitingApproval:
			t.Reason = "approval expired"
			_ = e.persist(ctx, t, Rejected, t.Reason)
		case kind == timerExpiry && t.State == Active:
			if t.ExpiresAt != nil && t.ExpiresAt.After(e.now()) {
				e.sched.add(id, *t.ExpiresAt, timerExpiry) // extended meanwhile
				return
			}
			a, _, err := e.reg.Build(t.Action, t.Params)
			if err != nil {
				e.log.Error("timer: rebuild action", "txn", id, "err", err)
				return
			}
			t.RevertCause = "ttl"
			e.m.rollbacks.WithLabelValues(t.Action, "ttl").Inc()
			if err := e.persist(ctx, t, Reverting, "TTL reached"); err != nil {
				return
			}
			e.revert(ctx, t, a)
		}
	})
}

// recover brings a non-terminal transaction found at start to a correct
// resting state. Every step is idempotent; Verify decides whether an
// interrupted Apply took effect, so nothing is applied twice.
func (e *Engine) recover(ctx context.Context, t *Transaction) {
	if !e.acquire(ctx) {
		return
	}
	defer e.release()
	unlock := e.lock(t.ID)
	defer unlock()
	ctx, span := e.tracer.Start(ctx, "txn.recover", trace.WithAttributes(attribute.String("txn.id", t.ID), attribute.String("txn.state", string(t.State))))
	defer span.End()
	a, _, err := e.reg.Build(t.Action, t.Params)
	if err != nil {
		t.Error = err.Error()
		if t.State == Planned || t.State == Guarded || t.State == Prechecked || t.State == AwaitingApproval {
			_ = e.persist(ctx, t, Failed, "recovery: action unavailable: "+err.Error())
		} else {
			e.m.revertFailures.WithLabelValues(t.Action).Inc()
			_ = e.persist(ctx, t, RevertFailed, "recovery: action unavailable, effect may remain: "+err.Error())
		}
		return
	}
	e.log.Info("recovering transaction", "txn", t.ID, "action", t.Action, "state", t.State)
	rctx, cancel := context.WithTimeout(ctx, e.cfg.MaxDuration)
	defer cancel()
	switch t.State {
	case Planned:
		to, detail := e.decide(rctx, t, nil)
		if err := e.persist(rctx, t, to, detail); err != nil {
			return
		}
		switch to {
		case AwaitingApproval:
			e.sched.add(t.ID, *t.ApprovalBy, timerApproval)
		case Guarded:
			e.execute(rctx, t, a)
		}
	case AwaitingApproval:
		if t.ApprovalBy != nil {
			e.sched.add(t.ID, *t.ApprovalBy, timerApproval)
		}
	case Guarded, Prechecked, Applied, Verified:
		e.execute(rctx, t, a)
	case Applying:
		// Did the interrupted Apply take effect? Verify tells; if not, Apply
		// again (it is idempotent) and carry on.
		if err := a.Verify(rctx, e.effect(t)); err == nil {
			if e.persist(rctx, t, Applied, "recovery: interrupted apply had taken effect") == nil {
				e.execute(rctx, t, a)
			}
			return
		}
		e.execute(rctx, t, a)
	case Active:
		if err := a.Verify(rctx, e.effect(t)); err != nil {
			e.log.Warn("active containment missing from the system; re-applying", "txn", t.ID, "err", err)
			if aerr := a.Apply(rctx, e.effect(t)); aerr != nil || a.Verify(rctx, e.effect(t)) != nil {
				t.Error = fmt.Sprintf("re-apply after restart failed: %v", aerr)
				e.rollback(rctx, t, a, t.Error)
				return
			}
		}
		if t.ExpiresAt != nil {
			e.sched.add(t.ID, *t.ExpiresAt, timerExpiry)
		}
	case Reverting:
		e.revert(rctx, t, a)
	}
}

// ActiveFor is used by providers' reconcilers: the active transactions of
// one action, with their expiry.
func (e *Engine) ActiveFor(ctx context.Context, actionName string) ([]*Transaction, error) {
	return e.store.ListTxns(ctx, Filter{States: []State{Active}, Action: actionName, Limit: 1000})
}

func newID() string {
	u, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return u.String()
}

// InputHash is a stable hash of a canonical JSON document.
func InputHash(doc []byte) string {
	s := sha256.Sum256(doc)
	return hex.EncodeToString(s[:])
}
