// Package httprep asks HTTP reputation services about an address: a generic
// JSON endpoint (URL template and score path) and AbuseIPDB's v2 check API.
// Each provider has its own timeout, concurrency limit and cache; concurrent
// lookups of one address make one request (singleflight), and failures are
// cached briefly (negative caching) so that a provider that is down is not
// hammered by every event.
package httprep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/singleflight"
)

// Provider types.
const (
	TypeJSON      = "json"
	TypeAbuseIPDB = "abuseipdb"
)

// DefaultAbuseIPDBURL is AbuseIPDB's API base.
const DefaultAbuseIPDBURL = "https://api.abuseipdb.com"

// Config configures one provider.
type Config struct {
	Name string `yaml:"name"` // enricher name in metrics and verdicts
	Type string `yaml:"type"` // json or abuseipdb
	// URL is, for json, a template in which {{ip}} is replaced by the
	// address, e.g. http://rep.internal/api/score?ip={{ip}}; for abuseipdb,
	// the API base (default https://api.abuseipdb.com).
	URL string `yaml:"url"`
	// ScorePath is the dotted path of the score in the JSON response
	// (numeric segments index arrays). Default "score"; abuseipdb:
	// data.abuseConfidenceScore.
	ScorePath string `yaml:"score_path"`
	// Scale divides the score into 0..1. Default 1; abuseipdb: 100.
	Scale float64 `yaml:"scale"`
	// Headers are sent with every request.
	Headers map[string]string `yaml:"headers"`
	// APIKeyEnv names the environment variable holding the API key
	// (abuseipdb: sent as the Key header). Keys never live in the config.
	APIKeyEnv string `yaml:"api_key_env"`
	// MaxAgeDays is AbuseIPDB's maxAgeInDays. Default 90.
	MaxAgeDays int `yaml:"max_age_days"`
	// Timeout bounds one request. Default 2s. It runs detached from the
	// event's deadline so that a slow answer still fills the cache.
	Timeout time.Duration `yaml:"timeout"`
	// Concurrency is the most requests in flight at once. Default 8.
	Concurrency int `yaml:"concurrency"`
	// CacheTTL is how long an answer is reused. Default 60s.
	CacheTTL time.Duration `yaml:"cache_ttl"`
	// NegativeTTL is how long a failure is reused. Default 10s.
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// CacheSize bounds the cache (LRU). Default 100000.
	CacheSize int `yaml:"cache_size"`
	// FailClosed: when the provider cannot answer, mark the event
	// fail-closed (no automatic action) instead of scoring it neutral.
	FailClosed bool `yaml:"fail_closed"`
	// QueryInternal also asks about internal addresses (off by default:
	// private addresses should not leave the network).
	QueryInternal bool `yaml:"query_internal"`
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Type == TypeAbuseIPDB {
		if c.URL == "" {
			c.URL = DefaultAbuseIPDBURL
		}
		if c.ScorePath == "" {
			c.ScorePath = "data.abuseConfidenceScore"
		}
		if c.Scale == 0 {
			c.Scale = 100
		}
		if c.MaxAgeDays == 0 {
			c.MaxAgeDays = 90
		}
	}
	if c.ScorePath == "" {
		c.ScorePath = "score"
	}
	if c.Scale == 0 {
		c.Scale = 1
	}
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Second
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = 60 * time.Second
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = 10 * time.Second
	}
	if c.CacheSize == 0 {
		c.CacheSize = 100000
	}
	return c
}

// Validate checks every field (after defaults) and names the offending one.
func (c Config) Validate() error {
	if c.Name == "" {
		return errors.New("name: required")
	}
	switch c.Type {
	case TypeJSON:
		if !strings.Contains(c.URL, "{{ip}}") {
			return fmt.Errorf("url: must contain {{ip}}, got %q", c.URL)
		}
	case TypeAbuseIPDB:
		if c.APIKeyEnv == "" {
			return errors.New("api_key_env: required for abuseipdb")
		}
		if c.MaxAgeDays < 1 || c.MaxAgeDays > 365 {
			return fmt.Errorf("max_age_days: must be 1..365, got %d", c.MaxAgeDays)
		}
	default:
		return fmt.Errorf("type: must be json or abuseipdb, got %q", c.Type)
	}
	u, err := url.Parse(strings.ReplaceAll(c.URL, "{{ip}}", "192.0.2.1"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url: not an http(s) URL: %q", c.URL)
	}
	if c.Scale <= 0 {
		return fmt.Errorf("scale: must be positive, got %v", c.Scale)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"timeout", c.Timeout}, {"cache_ttl", c.CacheTTL}, {"negative_ttl", c.NegativeTTL}} {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be positive, got %s", d.name, d.v)
		}
	}
	if c.Concurrency < 1 {
		return fmt.Errorf("concurrency: must be at least 1, got %d", c.Concurrency)
	}
	if c.CacheSize < 1 {
		return fmt.Errorf("cache_size: must be at least 1, got %d", c.CacheSize)
	}
	return nil
}

// Error kinds, the kind label of quell_enricher_errors_total.
const (
	KindTimeout = "timeout"
	KindNetwork = "network"
	KindStatus  = "status"
	KindDecode  = "decode"
	KindSchema  = "schema"
)

// Error is a provider failure with its kind.
type Error struct {
	Kind string
	Err  error
}

func (e *Error) Error() string { return e.Kind + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// KindOf returns err's kind, or "error" when it has none.
func KindOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return KindTimeout
	}
	return "error"
}

// Metrics are shared by every provider and registered once.
type Metrics struct {
	cache    *prometheus.CounterVec
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewMetrics registers the provider metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_enrich_cache_requests_total", Help: "Enrichment cache lookups, by enricher and result (hit or miss).",
		}, []string{"enricher", "result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_enrich_provider_requests_total", Help: "Requests to reputation providers, by result (ok or the error kind).",
		}, []string{"enricher", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quell_enrich_provider_request_duration_seconds", Help: "Reputation provider request latency.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"enricher"}),
	}
	for _, c := range []prometheus.Collector{m.cache, m.requests, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register httprep metrics: %w", err)
		}
	}
	return m, nil
}

// Deps are a provider's collaborators.
type Deps struct {
	Client  *http.Client         // default: a client with no timeout of its own (the provider's applies)
	Metrics *Metrics             // required
	Tracer  trace.TracerProvider // default: no-op
	Now     func() time.Time     // default: time.Now; tests inject a clock to expire the cache
	Getenv  func(string) string  // default: os.Getenv
}

type entry struct {
	score   float64
	err     error
	expires time.Time
}

// Result is a provider's answer about one address.
type Result struct {
	Score  float64 // 0..1
	Cached bool
}

// Provider is one reputation service.
type Provider struct {
	cfg    Config
	client *http.Client
	m      *Metrics
	tracer trace.Tracer
	now    func() time.Time
	apiKey string
	sem    chan struct{}
	sf     singleflight.Group
	cache  *lru.Cache[netip.Addr, entry]
	path   []string
}

// New builds a provider from cfg (defaults applied).
func New(cfg Config, d Deps) (*Provider, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("provider %s: %w", cfg.Name, err)
	}
	if d.Metrics == nil {
		return nil, fmt.Errorf("provider %s: metrics are required", cfg.Name)
	}
	if d.Client == nil {
		d.Client = &http.Client{}
	}
	if d.Tracer == nil {
		d.Tracer = noop.NewTracerProvider()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Getenv == nil {
		d.Getenv = os.Getenv
	}
	p := &Provider{
		cfg: cfg, client: d.Client, m: d.Metrics, now: d.Now,
		tracer: d.Tracer.Tracer("github.com/quell-ir/quell/internal/enrich/httprep"),
		sem:    make(chan struct{}, cfg.Concurrency),
		path:   strings.Split(cfg.ScorePath, "."),
	}
	if cfg.APIKeyEnv != "" {
		p.apiKey = d.Getenv(cfg.APIKeyEnv)
		if p.apiKey == "" {
			return nil, fmt.Errorf("provider %s: api_key_env: environment variable %s is empty", cfg.Name, cfg.APIKeyEnv)
		}
	}
	c, err := lru.New[netip.Addr, entry](cfg.CacheSize)
	if err != nil {
		return nil, fmt.Errorf("provider %s: cache: %w", cfg.Name, err)
	}
	p.cache = c
	return p, nil
}

// Name is the provider's enricher name.
func (p *Provider) Name() string { return p.cfg.Name }

// Config returns the provider's effective configuration.
func (p *Provider) Config() Config { return p.cfg }

// Lookup returns the provider's score for addr. It returns as soon as ctx
// ends, but the request itself runs on under the provider's own timeout and
// fills the cache, so the next event about this address is answered at once.
func (p *Provider) Lookup(ctx context.Context, addr netip.Addr) (Result, error) {
	addr = addr.Unmap().WithZone("")
	now := p.now()
	if e, ok := p.cache.Get(addr); ok && now.Before(e.expires) {
		p.m.cache.WithLabelValues(p.cfg.Name, "hit").Inc()
		return Result{Score: e.score, Cached: true}, e.err
	}
	p.m.cache.WithLabelValues(p.cfg.Name, "miss").Inc()
	ch := p.sf.DoChan(addr.String(), func() (any, error) {
		// Detached: the caller's deadline must not cancel a request
		// others share and whose answer the cache wants.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.Timeout)
		defer cancel()
		score, err := p.fetch(rctx, addr)
		ttl := p.cfg.CacheTTL
		if err != nil {
			ttl = p.cfg.NegativeTTL
			var ra retryAfter
			if errors.As(err, &ra) && time.Duration(ra) > ttl {
				ttl = min(time.Duration(ra), 10*time.Minute)
			}
		}
		p.cache.Add(addr, entry{score: score, err: err, expires: p.now().Add(ttl)})
		return score, err
	})
	select {
	case r := <-ch:
		s, _ := r.Val.(float64)
		return Result{Score: s}, r.Err
	case <-ctx.Done():
		return Result{}, &Error{Kind: KindTimeout, Err: fmt.Errorf("lookup %s: %w", addr, ctx.Err())}
	}
}

type retryAfter time.Duration

func (retryAfter) Error() string { return "retry after" }

func (p *Provider) requestURL(addr netip.Addr) string {
	if p.cfg.Type == TypeAbuseIPDB {
		q := url.Values{}
		q.Set("ipAddress", addr.String())
		q.Set("maxAgeInDays", strconv.Itoa(p.cfg.MaxAgeDays))
		return strings.TrimRight(p.cfg.URL, "/") + "/api/v2/check?" + q.Encode()
	}
	// The address is a parsed netip.Addr, so the substitution cannot
	// inject anything; escaping handles IPv6 colons in a query.
	return strings.ReplaceAll(p.cfg.URL, "{{ip}}", url.QueryEscape(addr.String()))
}

func (p *Provider) fetch(ctx context.Context, addr netip.Addr) (score float64, err error) {
	ctx, span := p.tracer.Start(ctx, "httprep.lookup", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("quell.enricher", p.cfg.Name)))
	start := time.Now()
	defer func() {
		p.m.latency.WithLabelValues(p.cfg.Name).Observe(time.Since(start).Seconds())
		if err != nil {
			p.m.requests.WithLabelValues(p.cfg.Name, KindOf(err)).Inc()
			span.RecordError(err)
			span.SetStatus(codes.Error, KindOf(err))
		} else {
			p.m.requests.WithLabelValues(p.cfg.Name, "ok").Inc()
		}
		span.End()
	}()
	select {
	case p.sem <- struct{}{}:
		defer func() { <-p.sem }()
	case <-ctx.Done():
		return 0, &Error{Kind: KindTimeout, Err: fmt.Errorf("waiting for a request slot: %w", ctx.Err())}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.requestURL(addr), nil)
	if err != nil {
		return 0, &Error{Kind: KindNetwork, Err: err}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "quell")
	for k, v := range p.cfg.Headers {
		req.Header.Set(k, v)
	}
	if p.cfg.Type == TypeAbuseIPDB {
		req.Header.Set("Key", p.apiKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, &Error{Kind: KindTimeout, Err: fmt.Errorf("GET %s: %w", addr, ctx.Err())}
		}
		return 0, &Error{Kind: KindNetwork, Err: fmt.Errorf("GET %s: %w", addr, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		if ctx.Err() != nil {
			return 0, &Error{Kind: KindTimeout, Err: fmt.Errorf("read %s: %w", addr, ctx.Err())}
		}
		return 0, &Error{Kind: KindNetwork, Err: fmt.Errorf("read %s: %w", addr, err)}
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Kind: KindStatus, Err: fmt.Errorf("GET %s: HTTP %d", addr, resp.StatusCode)}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			return 0, errors.Join(e, retryAfter(time.Duration(s)*time.Second))
		}
		return 0, e
	}
	return p.parse(body)
}

// parse finds the score at the configured path and scales it into 0..1.
func (p *Provider) parse(body []byte) (float64, error) {
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return 0, &Error{Kind: KindDecode, Err: fmt.Errorf("response is not JSON: %w", err)}
	}
	for _, seg := range p.path {
		switch node := v.(type) {
		case map[string]any:
			next, ok := node[seg]
			if !ok {
				return 0, &Error{Kind: KindSchema, Err: fmt.Errorf("score path %s: no key %q", p.cfg.ScorePath, seg)}
			}
			v = next
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(node) {
				return 0, &Error{Kind: KindSchema, Err: fmt.Errorf("score path %s: no index %q", p.cfg.ScorePath, seg)}
			}
			v = node[i]
		default:
			return 0, &Error{Kind: KindSchema, Err: fmt.Errorf("score path %s: %q is not an object or array", p.cfg.ScorePath, seg)}
		}
	}
	var raw float64
	switch s := v.(type) {
	case json.Number:
		f, err := s.Float64()
		if err != nil {
			return 0, &Error{Kind: KindSchema, Err: fmt.Errorf("score path %s: %w", p.cfg.ScorePath, err)}
		}
		raw = f
	case string:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, &Error{Kind: KindSchema, Err: fmt.Errorf("score path %s: not a number: %q", p.cfg.ScorePath, s)}
		}
		raw = f
	default:
		return 0, &Error{Kind: KindSchema, Err: fmt.Errorf("score path %s: not a number: %T", p.cfg.ScorePath, v)}
	}
	score := raw / p.cfg.Scale
	if !(score >= 0 && score <= 1) { // also rejects NaN
		return 0, &Error{Kind: KindSchema, Err: fmt.Errorf("score path %s: %v outside 0..%v", p.cfg.ScorePath, raw, p.cfg.Scale)}
	}
	return score, nil
}
