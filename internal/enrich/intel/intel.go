// Package intel holds local threat-intelligence feeds: plain address lists
// (FireHOL .netset, Spamhaus DROP), CSV with a score column, and STIX 2.1
// bundles of address indicators. Each feed is a bart prefix table behind an
// atomic pointer: a reload builds a new table and swaps it in; a reload that
// fails keeps the old table and logs why.
package intel

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/enrich/watch"
	"github.com/quell-ir/quell/internal/event"
)

// Formats.
const (
	FormatNetset = "netset" // FireHOL .netset/.ipset, Spamhaus DROP: address or prefix per line, '#' or ';' comments
	FormatCSV    = "csv"    // header row, address column, optional score column
	FormatSTIX   = "stix"   // STIX 2.1 bundle of indicators
	FormatJSONL  = "jsonl"  // one JSON object a line, e.g. Spamhaus DROP drop_v4.json
)

// FeedConfig configures one local feed.
type FeedConfig struct {
	Name   string `yaml:"name"`   // source name in threat verdicts, e.g. firehol_level1
	Path   string `yaml:"path"`   // file to read; watched for changes
	Format string `yaml:"format"` // netset, csv or stix
	// Score is the score of a listed address when the format has none
	// (netset, csv without score_column, STIX without confidence). Default 1.
	Score float64 `yaml:"score"`
	// IPColumn is the CSV column (jsonl: the key) holding the address or
	// prefix. Default "ip" (jsonl: "cidr", as in Spamhaus's JSON lists).
	IPColumn string `yaml:"ip_column"`
	// ScoreColumn is the CSV column holding the score; empty: use Score.
	ScoreColumn string `yaml:"score_column"`
	// ScoreScale divides CSV scores into 0..1, e.g. 100. Default 1.
	ScoreScale float64 `yaml:"score_scale"`
	// AllowEmpty accepts a file with no entries. By default an empty file
	// is a failed reload (a truncated download should not wipe a feed).
	AllowEmpty bool `yaml:"allow_empty"`
}

// Config configures the local feeds.
type Config struct {
	Feeds []FeedConfig `yaml:"feeds"`
	// Debounce is how long a file must be quiet before it is reloaded.
	Debounce time.Duration `yaml:"debounce"`
}

// DefaultConfig returns the defaults: no feeds, 500 ms debounce.
func DefaultConfig() Config { return Config{Debounce: 500 * time.Millisecond} }

// withDefaults fills zero fields.
func (f FeedConfig) withDefaults() FeedConfig {
	if f.Score == 0 {
		f.Score = 1
	}
	if f.IPColumn == "" && f.Format == FormatJSONL {
		f.IPColumn = "cidr"
	}
	if f.IPColumn == "" {
		f.IPColumn = "ip"
	}
	if f.ScoreScale == 0 {
		f.ScoreScale = 1
	}
	return f
}

// Validate checks every field and names the offending one.
func (c Config) Validate() error {
	if c.Debounce < 0 {
		return fmt.Errorf("debounce: must not be negative")
	}
	seen := map[string]bool{}
	for i, f := range c.Feeds {
		p := fmt.Sprintf("feeds[%d]", i)
		if f.Name == "" {
			return fmt.Errorf("%s.name: required", p)
		}
		if seen[f.Name] {
			return fmt.Errorf("%s.name: duplicate %q", p, f.Name)
		}
		seen[f.Name] = true
		if f.Path == "" {
			return fmt.Errorf("%s.path: required", p)
		}
		switch f.Format {
		case FormatNetset, FormatCSV, FormatSTIX, FormatJSONL:
		default:
			return fmt.Errorf("%s.format: must be netset, csv, jsonl or stix, got %q", p, f.Format)
		}
		if f.Score < 0 || f.Score > 1 {
			return fmt.Errorf("%s.score: must be in 0..1, got %v", p, f.Score)
		}
		if f.ScoreScale < 0 {
			return fmt.Errorf("%s.score_scale: must be positive, got %v", p, f.ScoreScale)
		}
		columns := f.Format == FormatCSV || f.Format == FormatJSONL
		if !columns && f.ScoreColumn != "" {
			return fmt.Errorf("%s.score_column: only for formats csv and jsonl", p)
		}
		if !columns && f.IPColumn != "" {
			return fmt.Errorf("%s.ip_column: only for formats csv and jsonl", p)
		}
	}
	return nil
}

// Metrics are the feed metrics, registered once.
type Metrics struct {
	entries  *prometheus.GaugeVec
	reloads  *prometheus.CounterVec
	lastLoad *prometheus.GaugeVec
}

// NewMetrics registers the feed metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quell_intel_feed_entries", Help: "Prefixes loaded from a local threat feed.",
		}, []string{"feed"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_intel_feed_reloads_total", Help: "Local threat feed loads, by result (ok or error).",
		}, []string{"feed", "result"}),
		lastLoad: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "quell_intel_feed_last_success_timestamp_seconds", Help: "When a local threat feed last loaded successfully.",
		}, []string{"feed"}),
	}
	for _, c := range []prometheus.Collector{m.entries, m.reloads, m.lastLoad} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register intel metrics: %w", err)
		}
	}
	return m, nil
}

type feed struct {
	cfg  FeedConfig
	note string
	abs  string
	cur  atomic.Pointer[table]
	mu   sync.Mutex // serializes loads of this feed
	gen  atomic.Uint64
	fail atomic.Uint64
}

// Feeds is the set of local feeds.
type Feeds struct {
	cfg   Config
	feeds []*feed
	log   *slog.Logger
	m     *Metrics
	now   func() time.Time
}

// New loads every feed. A feed that fails its first load is an error: a
// configured feed that silently matches nothing is worse than a refusal to
// start.
func New(cfg Config, m *Metrics, log *slog.Logger, now func() time.Time) (*Feeds, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("intel config: %w", err)
	}
	if now == nil {
		now = time.Now
	}
	fs := &Feeds{cfg: cfg, log: log, m: m, now: now}
	for _, fc := range cfg.Feeds {
		abs, err := filepath.Abs(fc.Path)
		if err != nil {
			return nil, fmt.Errorf("feed %s: %w", fc.Name, err)
		}
		f := &feed{cfg: fc.withDefaults(), abs: abs, note: "listed in local feed " + fc.Name}
		if err := fs.load(f); err != nil {
			return nil, err
		}
		fs.feeds = append(fs.feeds, f)
	}
	return fs, nil
}

func (fs *Feeds) load(f *feed) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := time.Now()
	t, err := readFeed(f.cfg)
	if err != nil {
		f.fail.Add(1)
		fs.m.reloads.WithLabelValues(f.cfg.Name, "error").Inc()
		return fmt.Errorf("load feed %s from %s: %w", f.cfg.Name, f.cfg.Path, err)
	}
	t.loaded = fs.now()
	f.cur.Store(t)
	f.gen.Add(1)
	fs.m.reloads.WithLabelValues(f.cfg.Name, "ok").Inc()
	fs.m.entries.WithLabelValues(f.cfg.Name).Set(float64(t.size()))
	fs.m.lastLoad.WithLabelValues(f.cfg.Name).Set(float64(time.Now().Unix()))
	fs.log.Info("threat feed loaded", "feed", f.cfg.Name, "entries", t.size(), "skipped", t.skipped, "took", time.Since(start))
	return nil
}

func readFeed(c FeedConfig) (*table, error) {
	fh, err := os.Open(c.Path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var t *table
	switch c.Format {
	case FormatNetset:
		t, err = parseNetset(fh, c.Score)
	case FormatCSV:
		t, err = parseCSV(fh, c.IPColumn, c.ScoreColumn, c.ScoreScale, c.Score)
	case FormatSTIX:
		t, err = parseSTIX(fh, c.Score)
	case FormatJSONL:
		t, err = parseJSONL(fh, c.IPColumn, c.ScoreColumn, c.ScoreScale, c.Score)
	}
	if err != nil {
		return nil, err
	}
	if t.size() == 0 && !c.AllowEmpty {
		return nil, fmt.Errorf("no entries (set allow_empty to accept an empty feed)")
	}
	return t, nil
}

// Reload re-reads every feed now. Feeds that fail keep their previous table;
// the errors are returned joined by feed.
func (fs *Feeds) Reload() error {
	var errs []error
	for _, f := range fs.feeds {
		if err := fs.load(f); err != nil {
			fs.log.Warn("threat feed reload failed; keeping the previous table", "feed", f.cfg.Name, "err", err)
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("reload feeds: %v", errs)
	}
	return nil
}

// Watch reloads a feed whenever its file changes, until ctx ends.
func (fs *Feeds) Watch(ctx context.Context) error {
	if len(fs.feeds) == 0 {
		<-ctx.Done()
		return nil
	}
	byPath := map[string][]*feed{}
	paths := make([]string, 0, len(fs.feeds))
	for _, f := range fs.feeds {
		byPath[f.abs] = append(byPath[f.abs], f)
		paths = append(paths, f.abs)
	}
	return watch.Files(ctx, fs.log, fs.cfg.Debounce, paths, func(p string) {
		for _, f := range byPath[p] {
			if err := fs.load(f); err != nil {
				fs.log.Warn("threat feed reload failed; keeping the previous table", "feed", f.cfg.Name, "err", err)
			}
		}
	})
}

// Generation returns how many times feed name has loaded successfully and
// failed to; tests and the admin API use it to see a reload happen.
func (fs *Feeds) Generation(name string) (ok, failed uint64) {
	for _, f := range fs.feeds {
		if f.cfg.Name == name {
			return f.gen.Load(), f.fail.Load()
		}
	}
	return 0, 0
}

// Size returns the number of prefixes loaded, over all feeds.
func (fs *Feeds) Size() int {
	n := 0
	for _, f := range fs.feeds {
		n += f.cur.Load().size()
	}
	return n
}

// Lookup returns one source per feed that lists addr (longest prefix
// match, honouring STIX validity windows at the current time).
func (fs *Feeds) Lookup(addr netip.Addr) []event.ThreatSource {
	if !addr.IsValid() {
		return nil
	}
	addr = addr.Unmap().WithZone("")
	var out []event.ThreatSource
	for _, f := range fs.feeds {
		if in, ok := lookup(f.cur.Load(), addr, fs.now); ok {
			out = append(out, event.ThreatSource{Name: f.cfg.Name, Score: in.score, Note: f.note})
		}
	}
	return out
}

func lookup(t *table, addr netip.Addr, clock func() time.Time) (indicator, bool) {
	var host indicator
	var isHost bool
	if addr.Is4() {
		host, isHost = t.hosts4[addr.As4()]
	} else {
		host, isHost = t.hosts6[addr.As16()]
	}
	if isHost && host.from == 0 && host.until == 0 {
		return host, true // no window: skip reading the clock
	}
	if t.t.Size() == 0 && !isHost {
		return indicator{}, false
	}
	now := int64(0)
	if isHost {
		if now = clock().Unix(); host.validAt(now) {
			return host, true
		}
	}
	in, ok := t.t.Lookup(addr)
	if !ok {
		return in, false
	}
	if in.from == 0 && in.until == 0 {
		return in, true
	}
	if now == 0 {
		now = clock().Unix()
	}
	if in.validAt(now) {
		return in, true
	}
	// The most specific entry is out of its window; a covering prefix may
	// still be valid. Rare, so the slower walk is fine here.
	best, found := indicator{}, false
	for _, v := range t.t.Supernets(netip.PrefixFrom(addr, addr.BitLen())) {
		if v.validAt(now) && (!found || v.score > best.score) {
			best, found = v, true
		}
	}
	return best, found
}
