// Package risk scores an enriched event: a level (LOW, MEDIUM, HIGH,
// CRITICAL) from the seed rule, and a score 0..100 made of weighted,
// explained components (severity, anomaly, rarity, scope) that maps to a
// response tier (contain, page, dashboard, log).
//
// Anomaly comes from an Isolation Forest over per-entity event features,
// trained in the background on recent history; rarity from how often this
// event type has been seen for this entity class.
package risk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/event"
)

// Levels.
const (
	Low      = "LOW"
	Medium   = "MEDIUM"
	High     = "HIGH"
	Critical = "CRITICAL"
)

// History supplies recent events to train on. The store implements it.
type History interface {
	// Recent returns up to limit events that happened at or after since,
	// in any order.
	Recent(ctx context.Context, since time.Time, limit int) ([]event.Event, error)
}

// LevelConfig holds the thresholds of the level rule, evaluated in order:
//  1. internal source and threat < internal_low_below      -> LOW
//  2. threat > critical_above                               -> CRITICAL
//  3. type in brute_force_types and threat > brute_force_high_above -> HIGH
//  4. otherwise                                             -> MEDIUM
type LevelConfig struct {
	InternalLowBelow    float64  `yaml:"internal_low_below"`     // default 0.5
	CriticalAbove       float64  `yaml:"critical_above"`         // default 0.8
	BruteForceTypes     []string `yaml:"brute_force_types"`      // default [brute_force]
	BruteForceHighAbove float64  `yaml:"brute_force_high_above"` // default 0.4
}

// Weights are the score's component weights; they must sum to 1.
type Weights struct {
	Severity float64 `yaml:"severity"` // default 0.4
	Anomaly  float64 `yaml:"anomaly"`  // default 0.3
	Rarity   float64 `yaml:"rarity"`   // default 0.2
	Scope    float64 `yaml:"scope"`    // default 0.1
}

// Tier maps scores at or above Min to a response.
type Tier struct {
	Name string  `yaml:"name"`
	Min  float64 `yaml:"min"`
}

// AnomalyConfig configures the Isolation Forest.
type AnomalyConfig struct {
	Trees        int           `yaml:"trees"`         // default 100
	SampleSize   int           `yaml:"sample_size"`   // subsample per tree; default 256
	MinHistory   int           `yaml:"min_history"`   // events needed before anomaly counts; default 256
	Window       time.Duration `yaml:"window"`        // history to train on; default 168h
	Limit        int           `yaml:"limit"`         // most events to train on; default 50000
	RetrainEvery time.Duration `yaml:"retrain_every"` // default 15m
	Seed         uint64        `yaml:"seed"`          // random seed, for reproducible models; default 1
}

// Config configures the scorer.
type Config struct {
	Level   LevelConfig   `yaml:"level"`
	Weights Weights       `yaml:"weights"`
	Tiers   []Tier        `yaml:"tiers"`
	Anomaly AnomalyConfig `yaml:"anomaly"`
	// RaritySaturation is how many sightings make an event type ordinary
	// for an entity class (rarity 0). Default 100.
	RaritySaturation int `yaml:"rarity_saturation"`
	// ScopeSaturation is how many resources make the scope component 1.
	// Default 16.
	ScopeSaturation int `yaml:"scope_saturation"`
}

// DefaultConfig returns the defaults, which reproduce the seed rules.
func DefaultConfig() Config {
	return Config{
		Level:            LevelConfig{InternalLowBelow: 0.5, CriticalAbove: 0.8, BruteForceTypes: []string{"brute_force"}, BruteForceHighAbove: 0.4},
		Weights:          Weights{Severity: 0.4, Anomaly: 0.3, Rarity: 0.2, Scope: 0.1},
		Tiers:            []Tier{{"contain", 90}, {"page", 70}, {"dashboard", 40}, {"log", 0}},
		Anomaly:          AnomalyConfig{Trees: 100, SampleSize: 256, MinHistory: 256, Window: 7 * 24 * time.Hour, Limit: 50000, RetrainEvery: 15 * time.Minute, Seed: 1},
		RaritySaturation: 100,
		ScopeSaturation:  16,
	}
}

// Validate checks every field and names the offending one.
func (c Config) Validate() error {
	for _, t := range []struct {
		name string
		v    float64
	}{{"level.internal_low_below", c.Level.InternalLowBelow}, {"level.critical_above", c.Level.CriticalAbove}, {"level.brute_force_high_above", c.Level.BruteForceHighAbove}} {
		if !(t.v >= 0 && t.v <= 1) {
			return fmt.Errorf("%s: must be in 0..1, got %v", t.name, t.v)
		}
	}
	w := c.Weights
	for _, t := range []struct {
		name string
		v    float64
	}{{"weights.severity", w.Severity}, {"weights.anomaly", w.Anomaly}, {"weights.rarity", w.Rarity}, {"weights.scope", w.Scope}} {
		if !(t.v >= 0 && t.v <= 1) {
			return fmt.Errorf("%s: must be in 0..1, got %v", t.name, t.v)
		}
	}
	if s := w.Severity + w.Anomaly + w.Rarity + w.Scope; math.Abs(s-1) > 1e-9 {
		return fmt.Errorf("weights: must sum to 1, got %v", s)
	}
	if len(c.Tiers) == 0 {
		return errors.New("tiers: at least one tier is required")
	}
	names := map[string]bool{}
	hasZero := false
	for i, t := range c.Tiers {
		if t.Name == "" {
			return fmt.Errorf("tiers[%d].name: required", i)
		}
		if names[t.Name] {
			return fmt.Errorf("tiers[%d].name: duplicate %q", i, t.Name)
		}
		names[t.Name] = true
		if !(t.Min >= 0 && t.Min <= 100) {
			return fmt.Errorf("tiers[%d].min: must be in 0..100, got %v", i, t.Min)
		}
		hasZero = hasZero || t.Min == 0
	}
	if !hasZero {
		return errors.New("tiers: one tier must have min 0 so that every score has a tier")
	}
	a := c.Anomaly
	switch {
	case a.Trees < 1 || a.Trees > 10000:
		return fmt.Errorf("anomaly.trees: must be 1..10000, got %d", a.Trees)
	case a.SampleSize < 2:
		return fmt.Errorf("anomaly.sample_size: must be at least 2, got %d", a.SampleSize)
	case a.MinHistory < 2:
		return fmt.Errorf("anomaly.min_history: must be at least 2, got %d", a.MinHistory)
	case a.Window <= 0:
		return fmt.Errorf("anomaly.window: must be positive, got %s", a.Window)
	case a.Limit < a.MinHistory:
		return fmt.Errorf("anomaly.limit: must be at least min_history (%d), got %d", a.MinHistory, a.Limit)
	case a.RetrainEvery <= 0:
		return fmt.Errorf("anomaly.retrain_every: must be positive, got %s", a.RetrainEvery)
	}
	if c.RaritySaturation < 1 {
		return fmt.Errorf("rarity_saturation: must be at least 1, got %d", c.RaritySaturation)
	}
	if c.ScopeSaturation < 2 {
		return fmt.Errorf("scope_saturation: must be at least 2, got %d", c.ScopeSaturation)
	}
	return nil
}

type model struct {
	forest  *Forest
	samples int
	trained time.Time
}

type scorerMetrics struct {
	events    *prometheus.CounterVec
	score     prometheus.Histogram
	trainings *prometheus.CounterVec
	trainDur  prometheus.Histogram
	samples   prometheus.Gauge
}

// Scorer computes risk. It is safe for concurrent use.
type Scorer struct {
	cfg   Config
	hist  History
	log   *slog.Logger
	m     scorerMetrics
	now   func() time.Time
	tiers []Tier // sorted by Min, descending

	model atomic.Pointer[model]

	mu       sync.Mutex
	entities *entityState
	counts   map[string]map[string]int // entity class -> type key -> sightings
	seeded   bool

	trainMu sync.Mutex // one training at a time
}

// New builds a scorer. hist may be nil: anomaly then stays neutral.
func New(cfg Config, hist History, reg prometheus.Registerer, log *slog.Logger) (*Scorer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("risk config: %w", err)
	}
	if reg == nil {
		return nil, errors.New("risk: a prometheus Registerer is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scorer{cfg: cfg, hist: hist, log: log, now: time.Now,
		entities: newEntityState(100000), counts: map[string]map[string]int{}}
	s.tiers = slices.Clone(cfg.Tiers)
	sort.SliceStable(s.tiers, func(i, j int) bool { return s.tiers[i].Min > s.tiers[j].Min })
	s.m = scorerMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_risk_events_total", Help: "Events scored, by level and tier.",
		}, []string{"level", "tier"}),
		score: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_risk_score", Help: "Risk scores (0..100).", Buckets: prometheus.LinearBuckets(10, 10, 10),
		}),
		trainings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_risk_model_trainings_total", Help: "Anomaly model trainings, by result (ok, error, insufficient).",
		}, []string{"result"}),
		trainDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_risk_model_training_duration_seconds", Help: "Time to load history and train the anomaly model.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
		}),
		samples: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quell_risk_model_samples", Help: "Events the current anomaly model was trained on (0: not trained).",
		}),
	}
	for _, c := range []prometheus.Collector{s.m.events, s.m.score, s.m.trainings, s.m.trainDur, s.m.samples} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register risk metrics: %w", err)
		}
	}
	return s, nil
}

// Start trains once now, then again every anomaly.retrain_every, until ctx
// ends. It returns at once; training runs in the background.
func (s *Scorer) Start(ctx context.Context) {
	go func() {
		t := time.NewTicker(s.cfg.Anomaly.RetrainEvery)
		defer t.Stop()
		for {
			switch err := s.Train(ctx); {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, ErrInsufficientHistory):
				// Normal on a fresh install: anomaly stays neutral.
				s.log.Info("risk model not trained yet", "reason", err)
			default:
				s.log.Warn("risk model training failed; keeping the previous model", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// ErrInsufficientHistory is returned by Train when history is too short.
var ErrInsufficientHistory = errors.New("not enough history")

// Train loads recent history and trains a new model, swapped in atomically.
// The first successful load also seeds the rarity counts and per-entity
// state, so that a restart does not make every event look new.
func (s *Scorer) Train(ctx context.Context) error {
	if s.hist == nil {
		return nil
	}
	s.trainMu.Lock()
	defer s.trainMu.Unlock()
	start := time.Now()
	a := s.cfg.Anomaly
	evs, err := s.hist.Recent(ctx, s.now().Add(-a.Window), a.Limit)
	if err != nil {
		s.m.trainings.WithLabelValues("error").Inc()
		return fmt.Errorf("load risk history: %w", err)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
	s.mu.Lock()
	if !s.seeded {
		for i := range evs {
			s.countLocked(&evs[i])
			s.entities.observe(&evs[i])
		}
		s.seeded = true
	}
	s.mu.Unlock()
	if len(evs) < a.MinHistory {
		s.m.trainings.WithLabelValues("insufficient").Inc()
		return fmt.Errorf("train risk model: %w (%d of %d events)", ErrInsufficientHistory, len(evs), a.MinHistory)
	}
	// Features are computed against a fresh state replayed in time order,
	// so each event sees only what came before it, as live scoring does.
	replay := newEntityState(len(evs) + 1)
	data := make([][]float64, len(evs))
	for i := range evs {
		data[i] = replay.features(&evs[i])
		replay.observe(&evs[i])
	}
	seed := a.Seed
	rng := rand.New(rand.NewPCG(seed, uint64(len(evs))))
	f := TrainForest(data, a.Trees, a.SampleSize, rng)
	s.model.Store(&model{forest: f, samples: len(evs), trained: s.now()})
	s.m.trainings.WithLabelValues("ok").Inc()
	s.m.trainDur.Observe(time.Since(start).Seconds())
	s.m.samples.Set(float64(len(evs)))
	s.log.Info("risk model trained", "events", len(evs), "trees", a.Trees, "took", time.Since(start))
	return nil
}

// Ready reports whether the anomaly model is trained.
func (s *Scorer) Ready() bool { return s.model.Load() != nil }

func typeKey(ev *event.Event) string {
	if ev.Type != "" {
		return ev.Type
	}
	if ev.Rule != "" {
		return "rule:" + ev.Rule
	}
	return "source:" + ev.Source
}

// entityClass is the kind of the event's partition entity: ip, pod,
// access_key, ...
func entityClass(ev *event.Event) string {
	k, _, _ := strings.Cut(ev.PartitionKey(), ":")
	return k
}

func (s *Scorer) countLocked(ev *event.Event) int {
	cl, tk := entityClass(ev), typeKey(ev)
	m := s.counts[cl]
	if m == nil {
		m = map[string]int{}
		s.counts[cl] = m
	}
	n := m[tk]
	// Bounded: type keys come from events; past this many per class, new
	// ones are scored as unseen but not remembered.
	if n > 0 || len(m) < 10000 {
		m[tk] = n + 1
	}
	return n
}

var severityValue = map[int]float64{0: 0.5, 1: 0.1, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1, 6: 1, 99: 0.5}

// Score computes the risk of ev given its enrichment (may be nil) and the
// number of distinct resources its incident touches (scope; < 1 means 1).
func (s *Scorer) Score(_ context.Context, ev *event.Event, enr *event.Enrichment, scope int) *event.Risk {
	r := &event.Risk{}
	threat, internal := 0.0, false
	if enr != nil {
		threat, internal = enr.Threat.Score, enr.Internal
	}
	r.Level, r.Reasons = s.level(ev, threat, internal)
	if enr != nil && enr.FailClosed {
		r.Reasons = append(r.Reasons, "enrichment incomplete (fail-closed): "+strings.Join(enr.Missing, ", "))
	}

	w := s.cfg.Weights
	sev, ok := severityValue[ev.SeverityID]
	if !ok {
		sev = 0.5
	}
	comps := []event.RiskComponent{{Name: "severity", Value: sev, Weight: w.Severity,
		Note: fmt.Sprintf("severity_id %d (%s)", ev.SeverityID, event.SeverityName(ev.SeverityID))}}

	s.mu.Lock()
	x := s.entities.features(ev)
	s.entities.observe(ev)
	seen := s.countLocked(ev)
	s.mu.Unlock()

	an := event.RiskComponent{Name: "anomaly", Value: 0.5, Weight: w.Anomaly}
	if m := s.model.Load(); m != nil && m.forest != nil {
		ps := m.forest.Score(x)
		an.Value = m.forest.Rank(ps)
		an.Note = fmt.Sprintf("isolation forest: more isolated than %.0f%% of %d recent events (path score %.2f)", an.Value*100, m.samples, ps)
	} else {
		an.Note = fmt.Sprintf("neutral: anomaly model not trained yet (needs %d events of history)", s.cfg.Anomaly.MinHistory)
	}
	comps = append(comps, an)

	sat := float64(s.cfg.RaritySaturation)
	rar := 1 - math.Min(1, math.Log1p(float64(seen))/math.Log1p(sat))
	comps = append(comps, event.RiskComponent{Name: "rarity", Value: rar, Weight: w.Rarity,
		Note: fmt.Sprintf("%s seen %d times before for entity class %s", typeKey(ev), seen, entityClass(ev))})

	if scope < 1 {
		scope = 1
	}
	sc := math.Min(1, math.Log2(float64(scope))/math.Log2(float64(s.cfg.ScopeSaturation)))
	comps = append(comps, event.RiskComponent{Name: "scope", Value: sc, Weight: w.Scope,
		Note: fmt.Sprintf("incident touches %d resource(s); %d or more counts fully", scope, s.cfg.ScopeSaturation)})

	total := 0.0
	for _, c := range comps {
		total += c.Value * c.Weight
	}
	r.Score = math.Round(total*1000) / 10 // 0..100, one decimal
	r.Components = comps
	r.Tier = s.tier(r.Score)
	r.Reasons = append(r.Reasons, fmt.Sprintf("score %.1f: tier %s", r.Score, r.Tier))
	s.m.events.WithLabelValues(r.Level, r.Tier).Inc()
	s.m.score.Observe(r.Score)
	return r
}

func (s *Scorer) level(ev *event.Event, threat float64, internal bool) (string, []string) {
	l := s.cfg.Level
	switch {
	case internal && threat < l.InternalLowBelow:
		return Low, []string{fmt.Sprintf("LOW: internal source and threat %.2f < %.2f", threat, l.InternalLowBelow)}
	case threat > l.CriticalAbove:
		return Critical, []string{fmt.Sprintf("CRITICAL: threat %.2f > %.2f", threat, l.CriticalAbove)}
	case slices.Contains(l.BruteForceTypes, ev.Type) && threat > l.BruteForceHighAbove:
		return High, []string{fmt.Sprintf("HIGH: %s and threat %.2f > %.2f", ev.Type, threat, l.BruteForceHighAbove)}
	}
	return Medium, []string{fmt.Sprintf("MEDIUM: no other level rule matched (threat %.2f)", threat)}
}

func (s *Scorer) tier(score float64) string {
	for _, t := range s.tiers {
		if score >= t.Min {
			return t.Name
		}
	}
	return s.tiers[len(s.tiers)-1].Name
}
