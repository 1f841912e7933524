// Package source turns the documents security tools send into quell
// events. Each format has its own parser package; this package holds the
// Parser interface, the Registry that maps source names to parsers, and
// the configuration that builds it.
package source

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/alertmanager"
	"github.com/quell-ir/quell/internal/source/cloudtrail"
	"github.com/quell-ir/quell/internal/source/crowdsec"
	"github.com/quell-ir/quell/internal/source/decode"
	"github.com/quell-ir/quell/internal/source/falco"
	"github.com/quell-ir/quell/internal/source/generic"
	"github.com/quell-ir/quell/internal/source/guardduty"
	"github.com/quell-ir/quell/internal/source/k8saudit"
)

// Result is what a parser makes of one body: events, and documents
// recognised on purpose as not being alerts.
type Result = decode.Result

// Skip is one document skipped on purpose, with its reason.
type Skip = decode.Skip

// Parser turns one request body into events. Implementations are pure
// (no I/O), safe for concurrent use, and return an *event.FieldError naming
// the JSON path of the problem for malformed input.
type Parser interface {
	Name() string
	Parse(body []byte) (Result, error)
}

// Built-in source names.
const (
	Falco        = falco.Name
	GuardDuty    = guardduty.Name
	CloudTrail   = cloudtrail.Name
	Alertmanager = alertmanager.Name
	CrowdSec     = crowdsec.Name
	K8sAudit     = k8saudit.Name
	Generic      = generic.Name
)

// Config configures the registry.
type Config struct {
	// Classification holds the per-rule type/priority overrides.
	Classification classify.Config `yaml:"classification,omitempty" json:"classification,omitempty"`
	// Generic holds declarative mappings. The key "generic" replaces the
	// default generic mapping; any other key adds a parser of that name
	// (mounted like the built-ins, e.g. POST /v1/sources/suricata).
	Generic map[string]generic.Mapping `yaml:"generic,omitempty" json:"generic,omitempty"`
}

// DefaultConfig has no overrides and the default generic mapping.
func DefaultConfig() Config { return Config{} }

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	if err := c.Classification.Validate(); err != nil {
		return fmt.Errorf("classification.%w", err)
	}
	names := make([]string, 0, len(c.Generic))
	for n := range c.Generic {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !nameRE.MatchString(n) {
			return fmt.Errorf("generic[%q]: name must match %s", n, nameRE)
		}
		if n != Generic && builtin(n) {
			return fmt.Errorf("generic[%q]: name is taken by a built-in parser", n)
		}
		if err := c.Generic[n].Validate(); err != nil {
			return fmt.Errorf("generic[%q].%w", n, err)
		}
	}
	return nil
}

func builtin(n string) bool {
	switch n {
	case Falco, GuardDuty, CloudTrail, Alertmanager, CrowdSec, K8sAudit, Generic:
		return true
	}
	return false
}

// Registry maps source names to parsers and instruments parsing. It is
// immutable after New and safe for concurrent use.
type Registry struct {
	parsers map[string]Parser
	tracer  trace.Tracer
	m       *metrics
}

// Option configures a Registry.
type Option func(*Registry)

// WithTracerProvider traces Parse calls.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(r *Registry) { r.tracer = tp.Tracer("github.com/quell-ir/quell/internal/source") }
}

// New builds the registry from a Config; reg receives the metrics (nil:
// not registered).
func New(c Config, reg prometheus.Registerer, opts ...Option) (*Registry, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("source config: %w", err)
	}
	cls, err := classify.New(c.Classification)
	if err != nil {
		return nil, err
	}
	r := &Registry{parsers: map[string]Parser{}, tracer: noop.NewTracerProvider().Tracer("")}
	for _, p := range []Parser{falco.New(cls), guardduty.New(cls), cloudtrail.New(cls), alertmanager.New(cls), crowdsec.New(cls), k8saudit.New(cls)} {
		r.parsers[p.Name()] = p
	}
	gm := map[string]generic.Mapping{Generic: generic.DefaultMapping()}
	for n, m := range c.Generic {
		gm[n] = m
	}
	for n, m := range gm {
		p, err := generic.New(n, m, cls)
		if err != nil {
			return nil, err
		}
		r.parsers[n] = p
	}
	for _, o := range opts {
		o(r)
	}
	r.m, err = newMetrics(reg, r.Names())
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Names lists the registered source names, sorted.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.parsers))
	for n := range r.parsers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Get returns the parser for a name.
func (r *Registry) Get(name string) (Parser, bool) {
	p, ok := r.parsers[name]
	return p, ok
}

// Known reports whether name has a parser.
func (r *Registry) Known(name string) bool { _, ok := r.parsers[name]; return ok }

// ErrUnknownSource is returned by Parse for a name with no parser.
var ErrUnknownSource = errors.New("unknown source")

// Parse parses body with the named parser, counting and tracing it. Every
// event gets ReceivedAt = now when the parser did not set it.
func (r *Registry) Parse(ctx context.Context, name string, body []byte) (Result, error) {
	p, ok := r.parsers[name]
	if !ok {
		return Result{}, fmt.Errorf("parse %q: %w", name, ErrUnknownSource)
	}
	_, span := r.tracer.Start(ctx, "source.Parse", trace.WithAttributes(
		attribute.String("quell.source", name), attribute.Int("quell.body_bytes", len(body))))
	defer span.End()
	start := time.Now()
	res, err := p.Parse(body)
	r.m.duration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	if err != nil {
		r.m.errors.WithLabelValues(name).Inc()
		span.RecordError(err)
		span.SetStatus(codes.Error, "parse failed")
		return Result{}, fmt.Errorf("parse %s: %w", name, err)
	}
	r.m.events.WithLabelValues(name).Add(float64(len(res.Events)))
	r.m.skipped.WithLabelValues(name).Add(float64(len(res.Skipped)))
	for i := range res.Events {
		if res.Events[i].ReceivedAt.IsZero() {
			res.Events[i].ReceivedAt = start.UTC()
		}
	}
	span.SetAttributes(attribute.Int("quell.events", len(res.Events)), attribute.Int("quell.skipped", len(res.Skipped)))
	return res, nil
}

// FieldError extracts the field error of a failed Parse, for API answers.
func FieldError(err error) (*event.FieldError, bool) {
	var fe *event.FieldError
	ok := errors.As(err, &fe)
	return fe, ok
}

type metrics struct {
	events, skipped, errors *prometheus.CounterVec
	duration                *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, names []string) (*metrics, error) {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_source_events_total", Help: "Events parsed, by source.",
		}, []string{"source"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_source_skipped_total", Help: "Documents recognised as not alerts (e.g. Falco internal metrics), by source.",
		}, []string{"source"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_source_parse_errors_total", Help: "Bodies rejected as malformed, by source.",
		}, []string{"source"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quell_source_parse_duration_seconds", Help: "Time to parse one body, by source.",
			Buckets: prometheus.ExponentialBuckets(1e-5, 4, 10),
		}, []string{"source"}),
	}
	// Pre-create the label values so dashboards see zeros.
	for _, n := range names {
		m.events.WithLabelValues(n)
		m.skipped.WithLabelValues(n)
		m.errors.WithLabelValues(n)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.events, m.skipped, m.errors, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register source metrics: %w", err)
			}
		}
	}
	return m, nil
}
