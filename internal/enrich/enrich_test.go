package enrich

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/quell-ir/quell/internal/enrich/asset"
	"github.com/quell-ir/quell/internal/enrich/httprep"
	"github.com/quell-ir/quell/internal/enrich/intel"
	"github.com/quell-ir/quell/internal/enrich/netclass"
	"github.com/quell-ir/quell/internal/event"
)

func writeMMDB(t testing.TB, dir, dbType string, nets map[string]mmdbtype.Map) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: dbType, RecordSize: 24, IncludeReservedNetworks: true})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, v := range nets {
		_, n, _ := net.ParseCIDR(cidr)
		if err := tree.Insert(n, v); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, dbType+".mmdb")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	return p
}

// fixture writes a feed, GeoIP databases and an inventory, and returns a
// config using them.
func fixture(t testing.TB) Config {
	dir := t.TempDir()
	feed := filepath.Join(dir, "drop.txt")
	os.WriteFile(feed, []byte("; Spamhaus DROP\n203.0.113.0/24 ; SBL1\n"), 0o644)
	inv := filepath.Join(dir, "assets.yaml")
	os.WriteFile(inv, []byte("assets:\n  - {cidr: 10.1.0.0/16, owner: payments, service: checkout, environment: production, criticality: critical}\n"), 0o644)
	cfg := DefaultConfig()
	// Generous: these tests check what enrichers find, not the deadline,
	// and must not flake on a loaded CI machine. The deadline test sets
	// its own.
	cfg.Deadline = 5 * time.Second
	cfg.Network.Protected = []netclass.ProtectedPrefix{{CIDR: "10.1.0.53", Reason: "DNS"}}
	cfg.Network.ProtectedResources = []netclass.ProtectedResource{{Kind: "namespace", Value: "kube-system"}}
	cfg.Intel.Feeds = []intel.FeedConfig{{Name: "spamhaus_drop", Path: feed, Format: intel.FormatNetset, Score: 0.6}}
	cfg.GeoIP.CityDB = writeMMDB(t, dir, "GeoLite2-City", map[string]mmdbtype.Map{
		"203.0.113.0/24": {"country": mmdbtype.Map{"iso_code": mmdbtype.String("NL")}, "city": mmdbtype.Map{"names": mmdbtype.Map{"en": mmdbtype.String("Amsterdam")}}},
	})
	cfg.GeoIP.ASNDB = writeMMDB(t, dir, "GeoLite2-ASN", map[string]mmdbtype.Map{
		"203.0.113.0/24": {"autonomous_system_number": mmdbtype.Uint32(64500), "autonomous_system_organization": mmdbtype.String("Example Hosting")},
	})
	cfg.Assets.Path = inv
	return cfg
}

func newPipeline(t testing.TB, cfg Config) (*Pipeline, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := New(cfg, Deps{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, reg
}

func sshBrute(src, dst string) *event.Event {
	return &event.Event{Source: "guardduty", Type: "brute_force", SeverityID: 4,
		SrcEndpoint: &event.Endpoint{IP: src}, DstEndpoint: &event.Endpoint{IP: dst, Port: 22}}
}

func TestEnrichAll(t *testing.T) {
	var asked atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Store(r.URL.Query().Get("ip"))
		fmt.Fprint(w, `{"score": 0.9}`)
	}))
	defer srv.Close()
	cfg := fixture(t)
	cfg.Combine = CombineNoisyOr
	cfg.Providers = []httprep.Config{{Name: "rep", Type: httprep.TypeJSON, URL: srv.URL + "/?ip={{ip}}"}}
	p, _ := newPipeline(t, cfg)
	ev := sshBrute("203.0.113.9", "10.1.0.53")
	ev.Kubernetes = &event.Kubernetes{Namespace: "kube-system", Pod: "coredns-0"}
	got := p.Enrich(context.Background(), ev)
	if got.Internal {
		t.Error("external source classified internal")
	}
	if asked.Load() != "203.0.113.9" {
		t.Errorf("provider asked about %v", asked.Load())
	}
	// noisy-or of 0.6 (feed) and 0.9 (provider) = 1 - 0.4*0.1 = 0.96
	if math.Abs(got.Threat.Score-0.96) > 1e-9 || len(got.Threat.Sources) != 2 ||
		got.Threat.Sources[0].Name != "rep" || got.Threat.Sources[1].Name != "spamhaus_drop" {
		t.Errorf("threat = %+v", got.Threat)
	}
	src := got.Addresses["203.0.113.9"]
	if src.Country != "NL" || src.City != "Amsterdam" || src.ASN != 64500 || src.ASOrg != "Example Hosting" || src.Internal {
		t.Errorf("source info = %+v", src)
	}
	dst := got.Addresses["10.1.0.53"]
	if !dst.Internal || !dst.Protected || dst.Owner != "payments" || dst.Asset["criticality"] != "critical" || dst.Country != "" {
		t.Errorf("destination info = %+v", dst)
	}
	wantProt := []string{"ip:10.1.0.53", "namespace:kube-system", "pod:kube-system/coredns-0"}
	sort.Strings(got.Protected)
	if !slices.Equal(got.Protected, wantProt) {
		t.Errorf("protected = %v, want %v", got.Protected, wantProt)
	}
	if len(got.Missing) != 0 || got.FailClosed {
		t.Errorf("missing = %v, fail closed = %v", got.Missing, got.FailClosed)
	}
}

func TestInternalSourceNotSentToProvider(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, `{"score": 1}`)
	}))
	defer srv.Close()
	cfg := DefaultConfig()
	cfg.Deadline = 5 * time.Second
	cfg.Providers = []httprep.Config{{Name: "rep", Type: httprep.TypeJSON, URL: srv.URL + "/?ip={{ip}}"}}
	p, _ := newPipeline(t, cfg)
	got := p.Enrich(context.Background(), sshBrute("192.168.1.20", "10.0.0.1"))
	if !got.Internal || got.Threat.Score != 0 || hits.Load() != 0 {
		t.Fatalf("internal=%v threat=%+v requests=%d", got.Internal, got.Threat, hits.Load())
	}
}

func TestSlowProviderNeverBlocksPastDeadline(t *testing.T) {
	for _, failClosed := range []bool{false, true} {
		t.Run(fmt.Sprint("fail_closed=", failClosed), func(t *testing.T) {
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-release:
				case <-r.Context().Done():
				}
				fmt.Fprint(w, `{"score": 1}`)
			}))
			defer srv.Close()
			defer close(release)
			cfg := fixture(t)
			cfg.Deadline = 300 * time.Millisecond
			cfg.Providers = []httprep.Config{{Name: "slow", Type: httprep.TypeJSON, URL: srv.URL + "/?ip={{ip}}", FailClosed: failClosed, Timeout: 10 * time.Second}}
			p, reg := newPipeline(t, cfg)
			start := time.Now()
			got := p.Enrich(context.Background(), sshBrute("203.0.113.9", "10.1.0.1"))
			if el := time.Since(start); el > 2*time.Second {
				t.Fatalf("Enrich took %s with a 300ms deadline", el)
			}
			if !slices.Equal(got.Missing, []string{"slow"}) || !strings.Contains(got.Errors["slow"], "timeout") {
				t.Errorf("missing = %v, errors = %v", got.Missing, got.Errors)
			}
			if got.FailClosed != failClosed {
				t.Errorf("fail closed = %v, want %v", got.FailClosed, failClosed)
			}
			// The fast enrichers still answered.
			if got.Threat.Score != 0.6 || got.Addresses["203.0.113.9"].Country != "NL" || got.Addresses["10.1.0.1"].Owner != "payments" {
				t.Errorf("fast enrichers lost: %+v", got)
			}
			if n := testutil.ToFloat64(p.m.errors.WithLabelValues("slow", "timeout")); n != 1 {
				t.Errorf("timeout errors = %v", n)
			}
			if n, _ := testutil.GatherAndCount(reg, "quell_enricher_duration_seconds"); n < 3 {
				t.Errorf("duration series = %d", n)
			}
		})
	}
}

func TestDownProviderFailOpen(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 502) }))
	defer srv.Close()
	cfg := fixture(t)
	cfg.Providers = []httprep.Config{{Name: "down", Type: httprep.TypeJSON, URL: srv.URL + "/?ip={{ip}}"}}
	p, _ := newPipeline(t, cfg)
	got := p.Enrich(context.Background(), sshBrute("203.0.113.9", "10.1.0.1"))
	if !slices.Equal(got.Missing, []string{"down"}) || got.FailClosed || !strings.Contains(got.Errors["down"], "502") {
		t.Fatalf("missing=%v failclosed=%v errors=%v", got.Missing, got.FailClosed, got.Errors)
	}
	if n := testutil.ToFloat64(p.m.errors.WithLabelValues("down", httprep.KindStatus)); n != 1 {
		t.Errorf("status errors = %v", n)
	}
	// Neutral: the down provider contributes nothing, the feed still does.
	if got.Threat.Score != 0.6 || len(got.Threat.Sources) != 1 {
		t.Errorf("threat = %+v", got.Threat)
	}
}

type panicky struct{}

func (panicky) Lookup(context.Context, netip.Addr) (asset.Info, bool) { panic("boom") }

func TestPanickingEnricherIsAFailure(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Deadline = 5 * time.Second
	cfg.Assets.FailClosed = true
	p, err := New(cfg, Deps{Registerer: prometheus.NewRegistry(), Assets: []asset.Source{panicky{}}})
	if err != nil {
		t.Fatal(err)
	}
	got := p.Enrich(context.Background(), sshBrute("203.0.113.9", ""))
	if !got.FailClosed || !slices.Equal(got.Missing, []string{"asset"}) {
		t.Fatalf("got %+v", got)
	}
}

func TestAddressesBoundedAndObservables(t *testing.T) {
	ev := &event.Event{Source: "x"}
	for i := 0; i < 100; i++ {
		ev.Observables = append(ev.Observables, event.Observable{Type: "ip", Value: fmt.Sprintf("198.51.100.%d", i)})
	}
	ev.Observables = append(ev.Observables, event.Observable{Type: "ip", Value: "not-an-ip"})
	subj, addrs := addresses(ev)
	if subj.String() != "198.51.100.0" || len(addrs) != MaxAddresses {
		t.Fatalf("subject %s, %d addresses", subj, len(addrs))
	}
}

func TestCombine(t *testing.T) {
	src := []event.ThreatSource{{Score: 0.5}, {Score: 0.5}, {Score: 0.2}}
	for _, c := range []struct {
		rule string
		src  []event.ThreatSource
		want float64
	}{
		{CombineMax, src, 0.5},
		{CombineNoisyOr, src, 1 - 0.5*0.5*0.8},
		{CombineMax, nil, 0},
		{CombineNoisyOr, nil, 0},
		{CombineMax, []event.ThreatSource{{Score: 1.7}, {Score: math.NaN()}}, 1},
		{CombineNoisyOr, []event.ThreatSource{{Score: 1}}, 1},
	} {
		if got := Combine(c.rule, c.src); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("Combine(%s, %v) = %v, want %v", c.rule, c.src, got, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	mod := func(f func(*Config)) Config { c := DefaultConfig(); f(&c); return c }
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{mod(func(c *Config) { c.Deadline = 0 }), "deadline"},
		{mod(func(c *Config) { c.Combine = "sum" }), "combine"},
		{mod(func(c *Config) { c.Network.InternalCIDRs = []string{"x"} }), "network.internal_cidrs[0]"},
		{mod(func(c *Config) { c.Intel.Feeds = []intel.FeedConfig{{Name: "f", Path: "p", Format: "xml"}} }), "intel.feeds[0].format"},
		{mod(func(c *Config) {
			c.Providers = []httprep.Config{{Name: "r", Type: "json", URL: "http://x/{{ip}}"}, {Name: "r", Type: "json", URL: "http://x/{{ip}}"}}
		}), "providers[1].name"},
		{mod(func(c *Config) { c.Providers = []httprep.Config{{Name: "r", Type: "json", URL: "http://x/"}} }), "providers[0].url"},
		{mod(func(c *Config) { c.Assets.Path = "a.txt" }), "assets.path"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("Validate = %v, want error naming %s", err, c.field)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Error(err)
	}
}

func TestStartReloadsFeedsAndClose(t *testing.T) {
	cfg := fixture(t)
	cfg.Intel.Debounce = 10 * time.Millisecond
	p, _ := newPipeline(t, cfg)
	p.Start(context.Background())
	ev := sshBrute("198.51.100.77", "10.1.0.1")
	if got := p.Enrich(context.Background(), ev); got.Threat.Score != 0 {
		t.Fatalf("unlisted address scored %v", got.Threat.Score)
	}
	path := cfg.Intel.Feeds[0].Path
	deadline := time.Now().Add(10 * time.Second)
	for p.Enrich(context.Background(), ev).Threat.Score != 0.6 {
		if time.Now().After(deadline) {
			t.Fatal("feed change never reached the pipeline")
		}
		os.WriteFile(path, []byte("203.0.113.0/24\n198.51.100.77\n"), 0o644)
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestProtectedAddressesAlwaysFlagged: over random protected prefixes and
// random events, every event address inside a protected prefix is listed
// in Enrichment.Protected and marked in Addresses, and no other is.
func TestProtectedAddressesAlwaysFlagged(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	randAddr := func() netip.Addr {
		if r.IntN(2) == 0 {
			return netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.UintN(256)), byte(r.UintN(256))})
		}
		var b [16]byte
		b[0], b[1], b[2] = 0x20, 0x01, byte(r.IntN(4))
		for i := 3; i < 16; i++ {
			b[i] = byte(r.UintN(256))
		}
		return netip.AddrFrom16(b)
	}
	cfg := DefaultConfig()
	var ref []netip.Prefix
	for i := 0; i < 300; i++ {
		a := randAddr()
		bits := a.BitLen() - r.IntN(a.BitLen()/2)
		p := netip.PrefixFrom(a, bits).Masked()
		ref = append(ref, p)
		cfg.Network.Protected = append(cfg.Network.Protected, netclass.ProtectedPrefix{CIDR: p.String()})
	}
	p, _ := newPipeline(t, cfg)
	for i := 0; i < 3000; i++ {
		src, dst := randAddr(), randAddr()
		if i%2 == 0 { // half the events aim inside a protected prefix
			q := ref[r.IntN(len(ref))]
			b := q.Addr().AsSlice()
			for bit := q.Bits(); bit < len(b)*8; bit++ {
				if r.IntN(2) == 1 {
					b[bit/8] |= 1 << (7 - bit%8)
				}
			}
			dst, _ = netip.AddrFromSlice(b)
		}
		got := p.Enrich(context.Background(), sshBrute(src.String(), dst.String()))
		for _, a := range []netip.Addr{src, dst} {
			want := slices.ContainsFunc(ref, func(q netip.Prefix) bool { return q.Contains(a) })
			listed := slices.Contains(got.Protected, "ip:"+a.String())
			if listed != want || got.Addresses[a.String()].Protected != want {
				t.Fatalf("event %d: %s protected=%v listed=%v marked=%v", i, a, want, listed, got.Addresses[a.String()].Protected)
			}
		}
	}
}

func TestSharedNetworkTable(t *testing.T) {
	tb, err := netclass.New(netclass.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(DefaultConfig(), Deps{Registerer: prometheus.NewRegistry(), Network: tb})
	if err != nil {
		t.Fatal(err)
	}
	if p.Protector() != tb {
		t.Fatal("pipeline built its own table")
	}
	// An entry the engine adds later is seen by enrichment at once.
	tb.Add("host", netclass.Entry{Prefix: netip.MustParsePrefix("192.0.2.10/32"), Reason: "quell host"})
	got := p.Enrich(context.Background(), sshBrute("198.51.100.1", "192.0.2.10"))
	if !slices.Equal(got.Protected, []string{"ip:192.0.2.10"}) {
		t.Fatalf("protected = %v", got.Protected)
	}
}

func TestSpans(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"score": 0.2}`) }))
	defer srv.Close()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	cfg := fixture(t)
	cfg.Providers = []httprep.Config{{Name: "rep", Type: httprep.TypeJSON, URL: srv.URL + "/?ip={{ip}}"}}
	p, err := New(cfg, Deps{Registerer: prometheus.NewRegistry(), TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Enrich(context.Background(), sshBrute("203.0.113.9", "10.1.0.1"))
	names := map[string]bool{}
	for _, s := range rec.Ended() {
		names[s.Name()] = true
	}
	for _, want := range []string{"enrich", "enrich.intel", "enrich.rep", "enrich.geoip", "enrich.asset", "httprep.lookup"} {
		if !names[want] {
			t.Errorf("no span %q (got %v)", want, names)
		}
	}
}
