package risk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quell-ir/quell/internal/event"
)

// memHistory is an in-memory History, as the store supplies it.
type memHistory struct {
	mu    sync.Mutex
	evs   []event.Event
	err   error
	calls int
}

func (h *memHistory) Recent(_ context.Context, since time.Time, limit int) ([]event.Event, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.err != nil {
		return nil, h.err
	}
	var out []event.Event
	for _, e := range h.evs {
		if !e.Time.Before(since) && len(out) < limit {
			out = append(out, e)
		}
	}
	return out, nil
}

func newScorer(t testing.TB, cfg Config, h History) *Scorer {
	t.Helper()
	s, err := New(cfg, h, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func enr(internal bool, threat float64) *event.Enrichment {
	return &event.Enrichment{Internal: internal, Threat: event.Threat{Score: threat}}
}

func TestLevelSeedRule(t *testing.T) {
	s := newScorer(t, DefaultConfig(), nil)
	for _, c := range []struct {
		typ      string
		internal bool
		threat   float64
		want     string
	}{
		{"port_scan", true, 0.3, Low},
		{"port_scan", true, 0.5, Medium}, // not < 0.5
		{"port_scan", true, 0.9, Critical},
		{"brute_force", true, 0.45, Low}, // rule 1 comes before rule 3
		{"brute_force", false, 0.45, High},
		{"brute_force", false, 0.4, Medium}, // not > 0.4
		{"brute_force", false, 0.81, Critical},
		{"port_scan", false, 0.8, Medium}, // not > 0.8
		{"port_scan", false, 0.0, Medium},
	} {
		ev := &event.Event{Source: "x", Type: c.typ, Time: time.Now()}
		r := s.Score(context.Background(), ev, enr(c.internal, c.threat), 1)
		if r.Level != c.want || !strings.HasPrefix(r.Reasons[0], c.want+":") {
			t.Errorf("%s internal=%v threat=%v: level %s (%v), want %s", c.typ, c.internal, c.threat, r.Level, r.Reasons, c.want)
		}
	}
	if r := s.Score(context.Background(), &event.Event{Source: "x"}, nil, 1); r.Level != Medium {
		t.Errorf("nil enrichment: level %s", r.Level)
	}
}

func TestScoreComponentsAndTiers(t *testing.T) {
	s := newScorer(t, DefaultConfig(), nil)
	ctx := context.Background()
	ev := &event.Event{Source: "guardduty", Type: "crypto_mining", SeverityID: 5, Time: time.Now(), SrcEndpoint: &event.Endpoint{IP: "203.0.113.5"}}
	r := s.Score(ctx, ev, enr(false, 0), 1)
	// 40*1 (critical) + 30*0.5 (neutral anomaly) + 20*1 (never seen) + 10*0 (one resource)
	if r.Score != 75 || r.Tier != "page" {
		t.Fatalf("score %v tier %s, want 75 page; %+v", r.Score, r.Tier, r.Components)
	}
	want := map[string]struct{ v, w float64 }{"severity": {1, .4}, "anomaly": {.5, .3}, "rarity": {1, .2}, "scope": {0, .1}}
	for _, c := range r.Components {
		if w, ok := want[c.Name]; !ok || c.Value != w.v || c.Weight != w.w || c.Note == "" {
			t.Errorf("component %+v, want %+v", c, w)
		}
		if c.Name == "anomaly" && !strings.Contains(c.Note, "not trained") {
			t.Errorf("untrained anomaly note: %q", c.Note)
		}
	}
	// Scope 16 saturates: +10.
	r = s.Score(ctx, &event.Event{Source: "x", Type: "new_thing", SeverityID: 5, Time: time.Now()}, nil, 16)
	if r.Score != 85 || r.Tier != "page" {
		t.Errorf("scope 16: score %v tier %s", r.Score, r.Tier)
	}
	// Seen before: rarity drops, score drops.
	r2 := s.Score(ctx, ev, enr(false, 0), 1)
	if r2.Score >= 75 || !strings.Contains(r2.Components[2].Note, "seen 1 times") {
		t.Errorf("second sighting: %v %+v", r2.Score, r2.Components[2])
	}
	for i := 0; i < 200; i++ {
		s.Score(ctx, ev, nil, 1)
	}
	r3 := s.Score(ctx, ev, nil, 1)
	if r3.Components[2].Value != 0 {
		t.Errorf("rarity after 200 sightings = %v", r3.Components[2].Value)
	}
	for _, c := range []struct {
		score float64
		tier  string
	}{{100, "contain"}, {90, "contain"}, {89.9, "page"}, {70, "page"}, {69.9, "dashboard"}, {40, "dashboard"}, {39.9, "log"}, {0, "log"}} {
		if got := s.tier(c.score); got != c.tier {
			t.Errorf("tier(%v) = %s, want %s", c.score, got, c.tier)
		}
	}
}

func TestValidate(t *testing.T) {
	mod := func(f func(*Config)) Config { c := DefaultConfig(); f(&c); return c }
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{mod(func(c *Config) { c.Level.CriticalAbove = 1.5 }), "level.critical_above"},
		{mod(func(c *Config) { c.Weights.Scope = 0.2 }), "weights"},
		{mod(func(c *Config) { c.Weights.Anomaly = -0.1; c.Weights.Scope = 0.5 }), "weights.anomaly"},
		{mod(func(c *Config) { c.Tiers = nil }), "tiers"},
		{mod(func(c *Config) { c.Tiers = []Tier{{"a", 50}} }), "tiers"},
		{mod(func(c *Config) { c.Tiers = []Tier{{"a", 0}, {"a", 50}} }), "tiers[1].name"},
		{mod(func(c *Config) { c.Tiers = []Tier{{"a", 0}, {"b", 150}} }), "tiers[1].min"},
		{mod(func(c *Config) { c.Anomaly.Trees = 0 }), "anomaly.trees"},
		{mod(func(c *Config) { c.Anomaly.Limit = 10 }), "anomaly.limit"},
		{mod(func(c *Config) { c.Anomaly.RetrainEvery = 0 }), "anomaly.retrain_every"},
		{mod(func(c *Config) { c.ScopeSaturation = 1 }), "scope_saturation"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("Validate = %v, want error naming %s", err, c.field)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Error(err)
	}
}

// TestForestSeparatesOutliers: points from a tight cluster rank low, far
// points rank at the top.
func TestForestSeparatesOutliers(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var data [][]float64
	for i := 0; i < 2000; i++ {
		data = append(data, []float64{r.NormFloat64(), r.NormFloat64(), r.NormFloat64()})
	}
	f := TrainForest(data, 100, 256, rand.New(rand.NewPCG(3, 4)))
	normal := f.Score([]float64{0, 0, 0})
	for _, out := range [][]float64{{8, 0, 0}, {0, -8, 0}, {5, 5, 5}} {
		s := f.Score(out)
		if s < normal+0.15 || f.Rank(s) < 0.95 {
			t.Errorf("outlier %v: score %.3f rank %.3f (centre %.3f)", out, s, f.Rank(s), normal)
		}
	}
	if normal > 0.5 || f.Rank(normal) > 0.5 {
		t.Errorf("centre scores %.3f rank %.3f", normal, f.Rank(normal))
	}
	// Constant data cannot be split: every point is equally normal.
	c := TrainForest([][]float64{{1, 1}, {1, 1}, {1, 1}}, 10, 256, rand.New(rand.NewPCG(1, 1)))
	if s := c.Score([]float64{1, 1}); math.IsNaN(s) || c.Rank(s) != 0.5 {
		t.Errorf("constant data: score %v rank %v", s, c.Rank(s))
	}
}

// routine builds a history of routine events: a few entities with a
// steady daytime rhythm of low-severity logins.
func routine(n int, end time.Time) []event.Event {
	r := rand.New(rand.NewPCG(5, 6))
	var evs []event.Event
	for i := 0; i < n; i++ {
		day := end.Truncate(24 * time.Hour).Add(-time.Duration(r.IntN(6)) * 24 * time.Hour)
		at := day.Add(time.Duration(9*60+r.IntN(8*60)) * time.Minute)
		evs = append(evs, event.Event{Source: "falco", Type: "login", SeverityID: 2, Count: 1, Time: at,
			SrcEndpoint: &event.Endpoint{IP: fmt.Sprintf("10.0.0.%d", r.IntN(20))}})
	}
	return evs
}

func TestAnomalyTrainedOnHistory(t *testing.T) {
	now := time.Date(2025, 3, 10, 18, 0, 0, 0, time.UTC)
	h := &memHistory{evs: routine(2000, now)}
	cfg := DefaultConfig()
	s := newScorer(t, cfg, h)
	s.now = func() time.Time { return now }
	ctx := context.Background()
	if err := s.Train(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.Ready() {
		t.Fatal("not ready after training")
	}
	typical := &event.Event{Source: "falco", Type: "login", SeverityID: 2, Count: 1, Time: now.Add(-5 * time.Hour), SrcEndpoint: &event.Endpoint{IP: "10.0.0.3"}}
	rt := s.Score(ctx, typical, nil, 1)
	// A burst at 03:00 of many kinds of critical events from one entity.
	var ra *event.Risk
	for i := 0; i < 8; i++ {
		odd := &event.Event{Source: "falco", Type: fmt.Sprintf("odd_%d", i), SeverityID: 5, Count: 40,
			Time: now.Add(-15*time.Hour + time.Duration(i)*time.Second), SrcEndpoint: &event.Endpoint{IP: "10.0.0.99"}}
		ra = s.Score(ctx, odd, nil, 1)
	}
	at, aa := rt.Components[1], ra.Components[1]
	if aa.Value < 0.95 || at.Value > 0.8 || !strings.Contains(aa.Note, "isolation forest") {
		t.Fatalf("anomaly typical=%+v odd=%+v", at, aa)
	}
	if rt.Components[2].Value > 0.1 {
		t.Errorf("login after 2000 seeded sightings has rarity %v", rt.Components[2].Value)
	}
}

func TestTrainInsufficientAndErrors(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)
	h := &memHistory{evs: routine(50, now)}
	s := newScorer(t, DefaultConfig(), h)
	s.now = func() time.Time { return now }
	ctx := context.Background()
	if err := s.Train(ctx); !errors.Is(err, ErrInsufficientHistory) {
		t.Fatalf("Train = %v", err)
	}
	r := s.Score(ctx, &event.Event{Source: "x", Type: "login", Time: now}, nil, 1)
	if r.Components[1].Value != 0.5 || !strings.Contains(r.Components[1].Note, "neutral") {
		t.Errorf("anomaly before enough history: %+v", r.Components[1])
	}
	h.mu.Lock()
	h.evs = routine(500, now)
	h.mu.Unlock()
	if err := s.Train(ctx); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.err = errors.New("database is locked")
	h.mu.Unlock()
	if err := s.Train(ctx); err == nil || !strings.Contains(err.Error(), "database is locked") {
		t.Fatalf("Train with failing history = %v", err)
	}
	if !s.Ready() || s.model.Load().samples != 500 {
		t.Error("failed training dropped the previous model")
	}
	if got := testutil.ToFloat64(s.m.trainings.WithLabelValues("error")); got != 1 {
		t.Errorf("error trainings = %v", got)
	}
}

func TestStartRetrains(t *testing.T) {
	now := time.Now()
	h := &memHistory{evs: routine(10, now)}
	cfg := DefaultConfig()
	cfg.Anomaly.RetrainEvery = 10 * time.Millisecond
	s := newScorer(t, cfg, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.Start(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for h.callsSoFar() < 2 { // the first, insufficient, training happened and a retrain followed
		if time.Now().After(deadline) {
			t.Fatal("no retraining")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s.Ready() {
		t.Fatal("trained on 10 events")
	}
	h.mu.Lock()
	h.evs = routine(400, now)
	h.mu.Unlock()
	for !s.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("model never trained after history grew")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *memHistory) callsSoFar() int { h.mu.Lock(); defer h.mu.Unlock(); return h.calls }

func TestConcurrentScoring(t *testing.T) {
	now := time.Now()
	s := newScorer(t, DefaultConfig(), &memHistory{evs: routine(600, now)})
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = s.Train(ctx) }()
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				r := s.Score(ctx, &event.Event{Source: "x", Type: "login", SeverityID: 2, Time: now, SrcEndpoint: &event.Endpoint{IP: fmt.Sprintf("10.1.0.%d", i%7)}}, nil, 1)
				if r.Score < 0 || r.Score > 100 {
					t.Errorf("score %v", r.Score)
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkTrain10k(b *testing.B) {
	now := time.Now()
	h := &memHistory{evs: routine(10000, now)}
	for b.Loop() {
		s, _ := New(DefaultConfig(), h, prometheus.NewRegistry(), nil)
		if err := s.Train(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkScore(b *testing.B) {
	now := time.Now()
	s, _ := New(DefaultConfig(), &memHistory{evs: routine(10000, now)}, prometheus.NewRegistry(), nil)
	if err := s.Train(context.Background()); err != nil {
		b.Fatal(err)
	}
	ev := &event.Event{Source: "x", Type: "login", SeverityID: 2, Time: now, SrcEndpoint: &event.Endpoint{IP: "10.0.0.1"}}
	e := enr(true, 0.1)
	ctx := context.Background()
	for b.Loop() {
		s.Score(ctx, ev, e, 1)
	}
}

// BenchmarkForest measures the Isolation Forest alone: training 100 trees
// on 10,000 seven-feature rows, and scoring one row.
func BenchmarkForest(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	data := make([][]float64, 10000)
	for i := range data {
		data[i] = make([]float64, numFeatures)
		for j := range data[i] {
			data[i][j] = r.NormFloat64()
		}
	}
	b.Run("train", func(b *testing.B) {
		for b.Loop() {
			TrainForest(data, 100, 256, rand.New(rand.NewPCG(3, 4)))
		}
	})
	b.Run("score", func(b *testing.B) {
		f := TrainForest(data, 100, 256, rand.New(rand.NewPCG(3, 4)))
		i := 0
		for b.Loop() {
			f.Rank(f.Score(data[i%len(data)]))
			i++
		}
	})
}

// TestDocExample reproduces the example in docs/enrichment.md.
func TestDocExample(t *testing.T) {
	s := newScorer(t, DefaultConfig(), nil)
	ev := &event.Event{Source: "guardduty", Type: "brute_force", SeverityID: 4, Time: time.Now(), SrcEndpoint: &event.Endpoint{IP: "203.0.113.9"}}
	r := s.Score(context.Background(), ev, &event.Enrichment{Threat: event.Threat{Score: 0.9}}, 1)
	if r.Level != Critical || r.Score != 65 || r.Tier != "dashboard" ||
		r.Reasons[0] != "CRITICAL: threat 0.90 > 0.80" || r.Reasons[1] != "score 65.0: tier dashboard" ||
		r.Components[0].Note != "severity_id 4 (high)" ||
		r.Components[1].Note != "neutral: anomaly model not trained yet (needs 256 events of history)" ||
		r.Components[2].Note != "brute_force seen 0 times before for entity class ip" ||
		r.Components[3].Note != "incident touches 1 resource(s); 16 or more counts fully" {
		t.Fatalf("%+v", r)
	}
}
