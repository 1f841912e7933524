package httprep

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// clock is a manual clock for cache expiry.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newProvider(t *testing.T, cfg Config) (*Provider, *Metrics, *clock) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	p, err := New(cfg, Deps{Metrics: m, Now: clk.Now, Getenv: func(k string) string {
		if k == "ABUSEIPDB_KEY" {
			return "test-key-123"
		}
		return ""
	}})
	if err != nil {
		t.Fatal(err)
	}
	return p, m, clk
}

var ip = netip.MustParseAddr("198.51.100.23")

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestJSONProviderCacheExpiry(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Method != http.MethodGet || r.URL.Path != "/api/score" || r.URL.Query().Get("ip") != ip.String() {
			t.Errorf("unexpected request %s %s", r.Method, r.URL)
			http.Error(w, "bad", 400)
			return
		}
		if r.Header.Get("X-Tenant") != "blue" {
			t.Errorf("configured header missing: %v", r.Header)
		}
		fmt.Fprint(w, `{"result": {"verdicts": [{"score": 93}]}}`)
	}))
	defer srv.Close()
	p, m, clk := newProvider(t, Config{Name: "rep", Type: TypeJSON, URL: srv.URL + "/api/score?ip={{ip}}",
		ScorePath: "result.verdicts.0.score", Scale: 100, Headers: map[string]string{"X-Tenant": "blue"}})
	ctx := context.Background()
	r, err := p.Lookup(ctx, ip)
	if err != nil || r.Score != 0.93 || r.Cached {
		t.Fatalf("first lookup = %+v, %v", r, err)
	}
	clk.Advance(59 * time.Second)
	r, err = p.Lookup(ctx, ip)
	if err != nil || r.Score != 0.93 || !r.Cached || hits.Load() != 1 {
		t.Fatalf("within TTL = %+v, %v, %d requests", r, err, hits.Load())
	}
	clk.Advance(2 * time.Second) // past the 60 s default TTL
	r, err = p.Lookup(ctx, ip)
	if err != nil || r.Cached || hits.Load() != 2 {
		t.Fatalf("after TTL = %+v, %v, %d requests", r, err, hits.Load())
	}
	if h := testutil.ToFloat64(m.cache.WithLabelValues("rep", "hit")); h != 1 {
		t.Errorf("cache hits = %v, want 1", h)
	}
	if h := testutil.ToFloat64(m.cache.WithLabelValues("rep", "miss")); h != 2 {
		t.Errorf("cache misses = %v, want 2", h)
	}
}

func TestIPv6QueryEscaped(t *testing.T) {
	v6 := netip.MustParseAddr("2001:db8::7")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.URL.Query().Get("ip"); got != v6.String() {
			t.Errorf("ip = %q", got)
		}
		fmt.Fprint(w, `{"score": "0.5"}`)
	}))
	defer srv.Close()
	p, _, _ := newProvider(t, Config{Name: "rep", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}"})
	if r, err := p.Lookup(context.Background(), v6); err != nil || r.Score != 0.5 {
		t.Fatalf("lookup = %+v, %v", r, err)
	}
}

func TestSingleflight(t *testing.T) {
	var hits atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
		fmt.Fprint(w, `{"score": 0.4}`)
	}))
	defer srv.Close()
	p, m, _ := newProvider(t, Config{Name: "rep", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}"})
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := p.Lookup(context.Background(), ip)
			if err == nil && r.Score != 0.4 {
				err = fmt.Errorf("score %v", r.Score)
			}
			errs <- err
		}()
	}
	// All 50 must be waiting (cache misses counted) before the answer.
	waitFor(t, "50 waiting lookups", func() bool { return testutil.ToFloat64(m.cache.WithLabelValues("rep", "miss")) == 50 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if hits.Load() != 1 {
		t.Fatalf("%d requests for one address, want 1", hits.Load())
	}
}

func TestSlowProviderDeadlineThenCacheFills(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
		fmt.Fprint(w, `{"score": 0.8}`)
	}))
	defer srv.Close()
	defer close(release)
	p, m, _ := newProvider(t, Config{Name: "slow", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}", Timeout: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Lookup(ctx, ip)
	if KindOf(err) != KindTimeout {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("lookup blocked %s past its deadline", el)
	}
	// The request goes on detached and fills the cache.
	release <- struct{}{}
	waitFor(t, "request to finish", func() bool {
		return testutil.ToFloat64(m.requests.WithLabelValues("slow", "ok")) == 1
	})
	r, err := p.Lookup(context.Background(), ip)
	if err != nil || !r.Cached || r.Score != 0.8 || hits.Load() != 1 {
		t.Fatalf("after fill = %+v, %v, %d requests", r, err, hits.Load())
	}
}

func TestProviderTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	p, m, _ := newProvider(t, Config{Name: "slow", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}", Timeout: 50 * time.Millisecond})
	_, err := p.Lookup(context.Background(), ip)
	if KindOf(err) != KindTimeout {
		t.Fatalf("err = %v, want the provider timeout", err)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("slow", KindTimeout)); got != 1 {
		t.Errorf("timeout requests = %v", got)
	}
}

func TestDownProviderNegativeCache(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	p, _, clk := newProvider(t, Config{Name: "down", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}", NegativeTTL: 5 * time.Second})
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		if _, err := p.Lookup(ctx, ip); KindOf(err) != KindStatus {
			t.Fatalf("lookup %d: err = %v, want status", i, err)
		}
	}
	if hits.Load() != 1 {
		t.Fatalf("%d requests while negatively cached, want 1", hits.Load())
	}
	clk.Advance(6 * time.Second)
	_, _ = p.Lookup(ctx, ip)
	if hits.Load() != 2 {
		t.Fatalf("%d requests after negative TTL, want 2", hits.Load())
	}

	// A closed port is a network error, also cached.
	addr := srv.Listener.Addr().String()
	srv.Close()
	q, _, _ := newProvider(t, Config{Name: "gone", Type: TypeJSON, URL: "http://" + addr + "/?ip={{ip}}"})
	if _, err := q.Lookup(ctx, ip); KindOf(err) != KindNetwork {
		t.Fatalf("closed port: err = %v, want network", err)
	}
}

func TestRetryAfterExtendsNegativeCache(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	p, _, clk := newProvider(t, Config{Name: "rl", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}"})
	_, err := p.Lookup(context.Background(), ip)
	if KindOf(err) != KindStatus || !strings.Contains(err.Error(), "429") {
		t.Fatalf("err = %v", err)
	}
	clk.Advance(60 * time.Second) // past the 10 s negative TTL, within Retry-After
	_, _ = p.Lookup(context.Background(), ip)
	if hits.Load() != 1 {
		t.Fatalf("%d requests within Retry-After, want 1", hits.Load())
	}
	clk.Advance(61 * time.Second)
	_, _ = p.Lookup(context.Background(), ip)
	if hits.Load() != 2 {
		t.Fatalf("%d requests after Retry-After, want 2", hits.Load())
	}
}

func TestWrongAnswers(t *testing.T) {
	for _, c := range []struct {
		body, path, kind string
	}{
		{`<html>oops</html>`, "score", KindDecode},
		{`{"verdict": "bad"}`, "score", KindSchema},
		{`{"score": "high"}`, "score", KindSchema},
		{`{"score": 1.5}`, "score", KindSchema},
		{`{"score": -0.1}`, "score", KindSchema},
		{`{"score": null}`, "score", KindSchema},
		{`{"data": []}`, "data.0", KindSchema},
		{`{"data": 3}`, "data.x", KindSchema},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, c.body) }))
		p, _, _ := newProvider(t, Config{Name: "wrong", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}", ScorePath: c.path})
		_, err := p.Lookup(context.Background(), ip)
		if KindOf(err) != c.kind {
			t.Errorf("body %s: err = %v, want kind %s", c.body, err, c.kind)
		}
		srv.Close()
	}
}

func TestConcurrencyLimit(t *testing.T) {
	var inflight, peak atomic.Int32
	gate := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-gate
		inflight.Add(-1)
		fmt.Fprint(w, `{"score": 0}`)
	}))
	defer srv.Close()
	p, _, _ := newProvider(t, Config{Name: "lim", Type: TypeJSON, URL: srv.URL + "/?ip={{ip}}", Concurrency: 2})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = p.Lookup(context.Background(), netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
		}()
	}
	// Let requests through one at a time; the server records the peak.
	for i := 0; i < 8; i++ {
		waitFor(t, "a request in flight", func() bool { return inflight.Load() > 0 })
		gate <- struct{}{}
	}
	wg.Wait()
	if got := peak.Load(); got != 2 {
		t.Fatalf("peak concurrent requests = %d, want exactly the limit 2", got)
	}
}

// TestAbuseIPDB checks the request strictly against AbuseIPDB's v2 check
// API and reads a response shaped like theirs.
func TestAbuseIPDB(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch {
		case r.Method != http.MethodGet, r.URL.Path != "/api/v2/check":
			t.Errorf("request %s %s", r.Method, r.URL.Path)
		case q.Get("ipAddress") != ip.String() || q.Get("maxAgeInDays") != "90" || len(q) != 2:
			t.Errorf("query %v", q)
		case r.Header.Get("Key") != "test-key-123":
			t.Errorf("Key header %q", r.Header.Get("Key"))
		case r.Header.Get("Accept") != "application/json":
			t.Errorf("Accept header %q", r.Header.Get("Accept"))
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"data":{"ipAddress":"%s","isPublic":true,"ipVersion":4,"isWhitelisted":false,
"abuseConfidenceScore":87,"countryCode":"NL","usageType":"Data Center/Web Hosting/Transit","isp":"Example",
"domain":"example.net","hostnames":[],"isTor":false,"totalReports":412,"numDistinctUsers":63,
"lastReportedAt":"2025-01-01T10:00:00+00:00"}}`, ip)
			return
		}
		http.Error(w, `{"errors":[{"detail":"bad request","status":422}]}`, 422)
	}))
	defer srv.Close()
	p, _, _ := newProvider(t, Config{Name: "abuseipdb", Type: TypeAbuseIPDB, URL: srv.URL, APIKeyEnv: "ABUSEIPDB_KEY"})
	r, err := p.Lookup(context.Background(), ip)
	if err != nil || r.Score != 0.87 {
		t.Fatalf("lookup = %+v, %v", r, err)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{Config{Type: TypeJSON, URL: "http://x/{{ip}}"}, "name"},
		{Config{Name: "a", Type: "soap"}, "type"},
		{Config{Name: "a", Type: TypeJSON, URL: "http://x/"}, "url"},
		{Config{Name: "a", Type: TypeJSON, URL: "ftp://x/{{ip}}"}, "url"},
		{Config{Name: "a", Type: TypeAbuseIPDB}, "api_key_env"},
		{Config{Name: "a", Type: TypeJSON, URL: "http://x/{{ip}}", Scale: -1}, "scale"},
		{Config{Name: "a", Type: TypeJSON, URL: "http://x/{{ip}}", Timeout: -1}, "timeout"},
		{Config{Name: "a", Type: TypeJSON, URL: "http://x/{{ip}}", Concurrency: -1}, "concurrency"},
	} {
		if err := c.cfg.WithDefaults().Validate(); err == nil || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("Validate(%+v) = %v, want error naming %s", c.cfg, err, c.field)
		}
	}
	m, _ := NewMetrics(prometheus.NewRegistry())
	if _, err := New(Config{Name: "a", Type: TypeAbuseIPDB, APIKeyEnv: "QUELL_TEST_UNSET_KEY"}, Deps{Metrics: m, Getenv: func(string) string { return "" }}); err == nil {
		t.Error("abuseipdb with an empty key accepted")
	}
}
