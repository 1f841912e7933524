// Package pipeline carries each durable event through the stages that
// decide what to do about it: enrich, score, correlate, match playbooks,
// submit transactions. Events are partitioned by entity so that one
// entity's events are decided in order; a backlog sweeper picks up anything
// accepted but not yet processed (after a crash, or when queues overflow),
// so nothing accepted is ever dropped.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

// Enricher gathers context about an event's entities.
type Enricher interface {
	Enrich(ctx context.Context, ev *event.Event) *event.Enrichment
}

// Scorer scores an event's risk.
type Scorer interface {
	Score(ctx context.Context, ev *event.Event, en *event.Enrichment, scope int) *event.Risk
}

// Correlator attaches an event to an incident and returns its id and how
// many distinct resources the incident touches.
type Correlator interface {
	Correlate(ctx context.Context, ev *event.Event, ec *event.Context) (incidentID string, scope int, err error)
}

// Step is one planned playbook step.
type Step struct {
	Playbook string
	Step     int
	StepName string
	Action   string
	Params   map[string]string
	TTL      time.Duration
	Mode     txn.Mode
	Approval bool
}

// Planner matches playbooks: for each matching playbook, its steps in order.
type Planner interface {
	Plan(ctx context.Context, ev *event.Event, ec *event.Context) (plans [][]Step, errs []error)
}

// Submitter runs transactions.
type Submitter interface {
	Submit(ctx context.Context, req txn.Request) (*txn.Transaction, error)
	WaitResting(ctx context.Context, id string) (*txn.Transaction, error)
}

// Store is the event storage the pipeline needs.
type Store interface {
	CompleteEvent(ctx context.Context, id string, c *event.Context) error
	Unprocessed(ctx context.Context, limit int) ([]*event.Event, error)
}

// Config tunes the pipeline.
type Config struct {
	Partitions int `yaml:"partitions"`
	QueueSize  int `yaml:"queue_size"`
	// StepTimeout bounds how long a multi-step playbook waits for one step
	// to settle before it stops (the event is then retried by the sweeper).
	StepTimeout time.Duration `yaml:"step_timeout"`
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	if c.Partitions == 0 {
		c.Partitions = 64
	}
	if c.QueueSize == 0 {
		c.QueueSize = 4096
	}
	if c.StepTimeout == 0 {
		c.StepTimeout = 2 * time.Hour
	}
	return c
}

// Validate names the bad field.
func (c Config) Validate() error {
	if c.Partitions < 0 || c.QueueSize < 0 || c.StepTimeout < 0 {
		return errors.New("pipeline: partitions, queue_size and step_timeout must not be negative")
	}
	return nil
}

// Deps are the stages; nil stages are skipped.
type Deps struct {
	Store      Store
	Enricher   Enricher
	Scorer     Scorer
	Correlator Correlator
	Planner    Planner
	Submitter  Submitter
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Tracer     trace.TracerProvider
}

// Pipeline processes events.
type Pipeline struct {
	cfg    Config
	d      Deps
	log    *slog.Logger
	tracer trace.Tracer
	queues []chan *event.Event
	kick   chan struct{}

	mu        sync.Mutex
	inflight  map[string]bool
	plannerMu sync.RWMutex

	wg sync.WaitGroup
	m  pmetrics
}

type pmetrics struct {
	depth     prometheus.GaugeFunc
	age       prometheus.Histogram
	processed *prometheus.CounterVec
	stage     *prometheus.HistogramVec
	overflow  prometheus.Counter
}

// New builds a pipeline.
func New(cfg Config, d Deps) *Pipeline {
	cfg = cfg.WithDefaults()
	p := &Pipeline{cfg: cfg, d: d, log: d.Logger, inflight: map[string]bool{}, kick: make(chan struct{}, 1)}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	tp := d.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	p.tracer = tp.Tracer("github.com/quell-ir/quell/internal/pipeline")
	for i := 0; i < cfg.Partitions; i++ {
		p.queues = append(p.queues, make(chan *event.Event, cfg.QueueSize))
	}
	p.m = pmetrics{
		depth: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "quell_pipeline_queue_depth", Help: "Events waiting in the pipeline's partition queues.",
		}, func() float64 { return float64(p.Depth()) }),
		age: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_pipeline_event_age_seconds", Help: "Time from an event's receipt to the end of its processing.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 12),
		}),
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_pipeline_events_processed_total", Help: "Events processed, by result (ok, error).",
		}, []string{"result"}),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quell_pipeline_stage_duration_seconds", Help: "Duration of each pipeline stage.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 12),
		}, []string{"stage"}),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quell_pipeline_overflow_total", Help: "Events left to the backlog sweeper because their queue was full.",
		}),
	}
	if d.Registerer != nil {
		d.Registerer.MustRegister(p.m.depth, p.m.age, p.m.processed, p.m.stage, p.m.overflow)
	}
	return p
}

// SetPlanner swaps the planner (playbook reload) without stopping.
func (p *Pipeline) SetPlanner(pl Planner) {
	p.plannerMu.Lock()
	p.d.Planner = pl
	p.plannerMu.Unlock()
}

func (p *Pipeline) planner() Planner {
	p.plannerMu.RLock()
	defer p.plannerMu.RUnlock()
	return p.d.Planner
}

// Depth is the number of queued events.
func (p *Pipeline) Depth() int {
	n := 0
	for _, q := range p.queues {
		n += len(q)
	}
	return n
}

// Enqueue hands durable events to the pipeline without blocking: an event
// that does not fit stays unprocessed in the store for the sweeper.
func (p *Pipeline) Enqueue(evs []*event.Event) {
	overflow := false
	for _, e := range evs {
		if !p.claim(e.ID) {
			continue
		}
		select {
		case p.queues[p.partition(e)] <- e:
		default:
			p.release(e.ID)
			p.m.overflow.Inc()
			overflow = true
		}
	}
	if overflow {
		p.Kick()
	}
}

// Kick asks the sweeper to look for unprocessed events now.
func (p *Pipeline) Kick() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Pipeline) claim(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inflight[id] {
		return false
	}
	p.inflight[id] = true
	return true
}

func (p *Pipeline) release(id string) {
	p.mu.Lock()
	delete(p.inflight, id)
	p.mu.Unlock()
}

func (p *Pipeline) partition(e *event.Event) int {
	h := fnv.New32a()
	h.Write([]byte(e.PartitionKey()))
	return int(h.Sum32() % uint32(len(p.queues)))
}

// Start runs the workers and the sweeper until ctx ends. It sweeps once at
// start, so events accepted before a crash are processed.
func (p *Pipeline) Start(ctx context.Context) {
	for _, q := range p.queues {
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.worker(ctx, q) }()
	}
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.sweeper(ctx) }()
	p.Kick()
}

// Wait blocks until the workers have stopped.
func (p *Pipeline) Wait() { p.wg.Wait() }

func (p *Pipeline) worker(ctx context.Context, q chan *event.Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-q:
			p.process(ctx, e)
		}
	}
}

func (p *Pipeline) sweeper(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-t.C:
		}
		for {
			evs, err := p.d.Store.Unprocessed(ctx, 1000)
			if err != nil {
				if ctx.Err() == nil {
					p.log.Error("sweep unprocessed events", "err", err)
				}
				break
			}
			queued := 0
			for _, e := range evs {
				if !p.claim(e.ID) {
					continue
				}
				select {
				case p.queues[p.partition(e)] <- e:
					queued++
				case <-ctx.Done():
					p.release(e.ID)
					return
				}
			}
			if len(evs) < 1000 || queued == 0 {
				break
			}
		}
	}
}

func (p *Pipeline) timed(stage string, start time.Time) {
	p.m.stage.WithLabelValues(stage).Observe(time.Since(start).Seconds())
}

// process runs the stages for one event and releases its claim when done.
// A failure leaves the event unprocessed, so the sweeper retries it; every
// stage is idempotent. Later steps of multi-step playbooks continue in the
// background (they may wait for an approval) and the event is completed,
// and released, only when all its steps were submitted: after a crash it
// is processed again and picks up where it was.
func (p *Pipeline) process(ctx context.Context, e *event.Event) {
	ctx, span := p.tracer.Start(ctx, "event.process", trace.WithAttributes(
		attribute.String("event.id", e.ID), attribute.String("event.source", e.Source), attribute.String("event.type", e.Type)))
	finish := func(err error) {
		defer span.End()
		defer p.release(e.ID)
		if err != nil {
			span.RecordError(err)
			p.m.processed.WithLabelValues("error").Inc()
			if ctx.Err() == nil {
				p.log.Error("process event; it stays unprocessed and will be retried", "event", e.ID, "err", err)
			}
			return
		}
		p.m.processed.WithLabelValues("ok").Inc()
		p.m.age.Observe(time.Since(e.ReceivedAt).Seconds())
	}
	ec, rest, err := p.decide(ctx, e)
	if err != nil {
		finish(err)
		return
	}
	if len(rest) == 0 {
		// Marking the event processed is bookkeeping: the worker moves on
		// while it commits. Until then the event stays claimed.
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			finish(p.complete(ctx, e, ec))
		}()
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		finish(p.continueAll(ctx, e, ec, rest))
	}()
}

type continuation struct {
	prev *txn.Transaction
	rest []Step
}

func (p *Pipeline) complete(ctx context.Context, e *event.Event, ec *event.Context) error {
	start := time.Now()
	defer p.timed("complete", start)
	return p.d.Store.CompleteEvent(ctx, e.ID, ec)
}

func (p *Pipeline) continueAll(ctx context.Context, e *event.Event, ec *event.Context, rest []continuation) error {
	var wg sync.WaitGroup
	errs := make([]error, len(rest))
	for i, c := range rest {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.continueSteps(ctx, e, ec, c.prev, c.rest)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return p.complete(ctx, e, ec)
}

// Process runs every stage for one event synchronously, including the
// later steps of multi-step playbooks. Tests and `quell simulate` use it.
func (p *Pipeline) Process(ctx context.Context, e *event.Event) error {
	ec, rest, err := p.decide(ctx, e)
	if err != nil {
		return err
	}
	return p.continueAll(ctx, e, ec, rest)
}

// decide runs enrichment, correlation and risk, matches playbooks and
// submits each playbook's first step. It returns what remains to do.
func (p *Pipeline) decide(ctx context.Context, e *event.Event) (*event.Context, []continuation, error) {
	ec := &event.Context{}
	if p.d.Enricher != nil {
		start := time.Now()
		cctx, span := p.tracer.Start(ctx, "event.enrich")
		ec.Enrichment = p.d.Enricher.Enrich(cctx, e)
		span.End()
		p.timed("enrich", start)
	}
	scope := 1
	if p.d.Correlator != nil {
		start := time.Now()
		id, n, err := p.d.Correlator.Correlate(ctx, e, ec)
		p.timed("correlate", start)
		if err != nil {
			return nil, nil, fmt.Errorf("correlate: %w", err)
		}
		ec.IncidentID, scope = id, n
	}
	if p.d.Scorer != nil {
		start := time.Now()
		cctx, span := p.tracer.Start(ctx, "event.risk")
		ec.Risk = p.d.Scorer.Score(cctx, e, ec.Enrichment, scope)
		span.End()
		p.timed("risk", start)
	}
	if pl := p.planner(); pl != nil && p.d.Submitter != nil && e.Status != event.StatusResolved {
		start := time.Now()
		cctx, span := p.tracer.Start(ctx, "event.decide")
		plans, errs := pl.Plan(cctx, e, ec)
		for _, err := range errs {
			p.log.Warn("playbook evaluation error", "event", e.ID, "err", err)
		}
		rest, err := p.submitFirst(cctx, e, ec, plans)
		span.End()
		p.timed("decide", start)
		return ec, rest, err
	}
	return ec, nil, nil
}

// submitFirst submits the first step of every matched playbook, in
// playbook order, and returns the continuations.
func (p *Pipeline) submitFirst(ctx context.Context, e *event.Event, ec *event.Context, plans [][]Step) ([]continuation, error) {
	var rest []continuation
	for _, steps := range plans {
		if len(steps) == 0 {
			continue
		}
		t, err := p.d.Submitter.Submit(ctx, p.request(e, ec, steps[0]))
		if err != nil {
			return nil, fmt.Errorf("submit %s step %d: %w", steps[0].Playbook, steps[0].Step, err)
		}
		if len(steps) > 1 {
			rest = append(rest, continuation{prev: t, rest: steps[1:]})
		}
	}
	return rest, nil
}

func (p *Pipeline) continueSteps(ctx context.Context, e *event.Event, ec *event.Context, prev *txn.Transaction, rest []Step) error {
	for _, s := range rest {
		wctx, cancel := context.WithTimeout(ctx, p.cfg.StepTimeout)
		settled, err := p.d.Submitter.WaitResting(wctx, prev.ID)
		cancel()
		if err != nil {
			return fmt.Errorf("wait for %s step %d (%s): %w", s.Playbook, s.Step-1, prev.ID, err)
		}
		switch settled.State {
		case txn.Active, txn.Completed, txn.Audited:
		default:
			p.log.Info("playbook stopped: previous step did not succeed", "event", e.ID, "playbook", s.Playbook,
				"step", s.Step, "previous", prev.ID, "state", settled.State)
			return nil
		}
		t, err := p.d.Submitter.Submit(ctx, p.request(e, ec, s))
		if err != nil {
			return fmt.Errorf("submit %s step %d: %w", s.Playbook, s.Step, err)
		}
		prev = t
	}
	return nil
}

func (p *Pipeline) request(e *event.Event, ec *event.Context, s Step) txn.Request {
	return txn.Request{
		Action: s.Action, Params: s.Params, Mode: s.Mode, TTL: s.TTL, Approval: s.Approval,
		Event: e, Context: ec, IncidentID: incidentOf(e, ec), Playbook: s.Playbook, Step: s.Step,
		Origin:    fmt.Sprintf("evt/%s/%s/%d", e.ID, s.Playbook, s.Step),
		Requester: "playbook:" + s.Playbook,
	}
}

// incidentOf is the incident a transaction belongs to. Until correlation
// groups events (no Correlator configured), each event is its own
// incident, "event/<id>": the steps of one event's playbooks share it, so
// that policy can see the evidence an earlier step captured.
func incidentOf(e *event.Event, ec *event.Context) string {
	if ec.IncidentID != "" {
		return ec.IncidentID
	}
	return "event/" + e.ID
}
