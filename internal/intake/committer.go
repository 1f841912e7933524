// Package intake accepts normalized events: it assigns ids, validates,
// commits them durably in groups (one fsync per batch, not per event) and
// hands what it committed to the pipeline.
package intake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/store"
)

// Appender is the storage the committer needs.
type Appender interface {
	AppendEvents(ctx context.Context, evs []*event.Event, dedupWindow time.Duration) ([]store.AppendResult, error)
}

// EncodedAppender is an Appender that accepts each event's JSON document
// already encoded (docs[i] is json.Marshal(evs[i])), so that encoding runs on
// the requests' goroutines, in parallel, and not on the single writer.
type EncodedAppender interface {
	AppendEncodedEvents(ctx context.Context, evs []*event.Event, docs [][]byte, dedupWindow time.Duration) ([]store.AppendResult, error)
}

// StartAppender is an EncodedAppender that can queue a batch and return
// before it is durable: the committer then gathers the next batch while one
// commits. Batches must be written in the order they were started.
type StartAppender interface {
	StartAppendEncodedEvents(ctx context.Context, evs []*event.Event, docs [][]byte, dedupWindow time.Duration) func() ([]store.AppendResult, error)
}

// Sink receives events after they are durable (created or updated ones).
type Sink func(evs []*event.Event)

// Config tunes intake.
type Config struct {
	// DedupWindow: the same fingerprint inside it is recorded once.
	DedupWindow time.Duration `yaml:"dedup_window"`
	// MaxBatch bounds the events in one group commit.
	MaxBatch int `yaml:"max_batch"`
	// MaxBodyBytes limits one request body (413 above it).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	if c.DedupWindow == 0 {
		c.DedupWindow = 10 * time.Minute
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 2000
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	return c
}

// Validate names the bad field.
func (c Config) Validate() error {
	if c.DedupWindow < 0 {
		return errors.New("dedup_window: must not be negative")
	}
	if c.MaxBatch < 0 {
		return errors.New("max_batch: must not be negative")
	}
	if c.MaxBodyBytes < 0 {
		return errors.New("max_body_bytes: must not be negative")
	}
	return nil
}

type request struct {
	evs   []*event.Event
	docs  [][]byte // encoded evs, when the store takes them
	reply chan reply
}

type reply struct {
	res []store.AppendResult
	err error
}

// Committer groups concurrent appends into one storage transaction.
type Committer struct {
	cfg   Config
	store Appender
	sink  Sink
	log   *slog.Logger
	now   func() time.Time
	in    chan request
	done  chan struct{}
	m     *metrics
}

type metrics struct {
	events *prometheus.CounterVec
	batch  prometheus.Histogram
	commit prometheus.Histogram
	queue  prometheus.Gauge
}

// NewCommitter builds a committer; Run must be running for Append to return.
func NewCommitter(cfg Config, st Appender, sink Sink, reg prometheus.Registerer, log *slog.Logger) *Committer {
	cfg = cfg.WithDefaults()
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_events_total", Help: "Events offered to intake, by source and outcome (created, duplicate, updated, rejected, skipped).",
		}, []string{"source", "outcome"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_intake_batch_events", Help: "Events per group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_intake_commit_duration_seconds", Help: "Duration of one durable group commit.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		queue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quell_intake_pending_requests", Help: "Append requests waiting for the group committer.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.batch, m.commit, m.queue)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Committer{cfg: cfg, store: st, sink: sink, log: log, now: time.Now, in: make(chan request, 1024), done: make(chan struct{}), m: m}
}

// Count records an outcome that did not go through the store (rejected or
// skipped input), so that every offered event is counted once.
func (c *Committer) Count(source, outcome string, n int) {
	c.m.events.WithLabelValues(source, outcome).Add(float64(n))
}

// Prepare validates and normalizes events, assigning ids. The first error
// names the offending event's index and field.
func (c *Committer) Prepare(evs []*event.Event) error {
	now := c.now()
	for i, e := range evs {
		if err := e.Validate(); err != nil {
			var fe *event.FieldError
			if errors.As(err, &fe) && len(evs) > 1 {
				return &event.FieldError{Field: fmt.Sprintf("[%d].%s", i, fe.Field), Reason: fe.Reason}
			}
			return err
		}
		if e.ID == "" {
			u, err := uuid.NewV7()
			if err != nil {
				return fmt.Errorf("assign event id: %w", err)
			}
			e.ID = u.String()
		}
		e.Normalize(now)
	}
	return nil
}

// Append commits evs durably and returns once they are on disk.
func (c *Committer) Append(ctx context.Context, evs []*event.Event) ([]store.AppendResult, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	r := request{evs: evs, reply: make(chan reply, 1)}
	if c.encodes() {
		r.docs = make([][]byte, len(evs))
		for i, e := range evs {
			doc, err := json.Marshal(e)
			if err != nil {
				return nil, fmt.Errorf("encode event %s: %w", e.ID, err)
			}
			r.docs[i] = doc
		}
	}
	c.m.queue.Inc()
	select {
	case c.in <- r:
	case <-ctx.Done():
		c.m.queue.Dec()
		return nil, ctx.Err()
	case <-c.done:
		c.m.queue.Dec()
		return nil, errors.New("intake is shutting down")
	}
	// Once queued, the commit happens whatever the caller does: wait for it
	// so the answer is truthful.
	rep := <-r.reply
	return rep.res, rep.err
}

// maxInFlight bounds the batches queued to the store and not yet durable.
const maxInFlight = 1

// batch is a group commit on its way to the store.
type batch struct {
	reqs  []request
	all   []*event.Event
	start time.Time
	wait  func() ([]store.AppendResult, error)
}

// Run commits until ctx is cancelled, then drains what was queued.
// Batches are queued to the store in order and answered in the same order
// by one goroutine, so the sink sees events in commit order.
func (c *Committer) Run(ctx context.Context) {
	defer close(c.done)
	inflight := make(chan batch, maxInFlight)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for b := range inflight {
			c.finish(b)
		}
	}()
	defer func() {
		close(inflight)
		<-finished
	}()
	for {
		select {
		case r := <-c.in:
			inflight <- c.commit(r)
		case <-ctx.Done():
			for {
				select {
				case r := <-c.in:
					inflight <- c.commit(r)
				default:
					return
				}
			}
		}
	}
}

// commit gathers a batch and queues it to the store.
func (c *Committer) commit(first request) batch {
	reqs := []request{first}
	n := len(first.evs)
	c.m.queue.Dec()
	for n < c.cfg.MaxBatch {
		select {
		case r := <-c.in:
			c.m.queue.Dec()
			reqs = append(reqs, r)
			n += len(r.evs)
			continue
		default:
		}
		break
	}
	all := make([]*event.Event, 0, n)
	var docs [][]byte
	if c.encodes() {
		docs = make([][]byte, 0, n)
	}
	for _, r := range reqs {
		all = append(all, r.evs...)
		docs = append(docs, r.docs...)
	}
	b := batch{reqs: reqs, all: all, start: time.Now()}
	// The commit must complete even during shutdown: callers are waiting.
	bg := context.Background()
	switch st := c.store.(type) {
	case StartAppender:
		b.wait = st.StartAppendEncodedEvents(bg, all, docs, c.cfg.DedupWindow)
	case EncodedAppender:
		b.wait = func() ([]store.AppendResult, error) { return st.AppendEncodedEvents(bg, all, docs, c.cfg.DedupWindow) }
	default:
		b.wait = func() ([]store.AppendResult, error) { return c.store.AppendEvents(bg, all, c.cfg.DedupWindow) }
	}
	return b
}

func (c *Committer) encodes() bool {
	switch c.store.(type) {
	case StartAppender, EncodedAppender:
		return true
	}
	return false
}

// finish waits for a batch to be durable, answers its requests and hands
// what it committed to the sink.
func (c *Committer) finish(b batch) {
	reqs, all := b.reqs, b.all
	res, err := b.wait()
	c.m.commit.Observe(time.Since(b.start).Seconds())
	c.m.batch.Observe(float64(len(all)))
	if err != nil {
		c.log.Error("group commit failed", "events", len(all), "err", err)
		for _, r := range reqs {
			r.reply <- reply{err: fmt.Errorf("commit events: %w", err)}
		}
		return
	}
	var fresh []*event.Event
	off := 0
	for _, r := range reqs {
		part := res[off : off+len(r.evs)]
		for i, ar := range part {
			c.m.events.WithLabelValues(r.evs[i].Source, string(ar.Outcome)).Inc()
			if ar.Outcome != store.Duplicate {
				fresh = append(fresh, r.evs[i])
			}
		}
		off += len(r.evs)
		r.reply <- reply{res: part}
	}
	if c.sink != nil && len(fresh) > 0 {
		c.sink(fresh)
	}
}
