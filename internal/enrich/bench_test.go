package enrich

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/enrich/httprep"
)

// BenchmarkEnrich measures one event through every enricher (netclass,
// a local feed, a loopback HTTP provider, GeoIP City+ASN, the inventory).
// cached: the provider's answer is in its cache; uncached: every event has
// a new source address, so each one makes a real HTTP request.
func BenchmarkEnrich(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"score": 0.3}`)
	}))
	defer srv.Close()
	cfg := fixture(b)
	cfg.Deadline = time.Second // measure the work, not the cut-off
	cfg.Providers = []httprep.Config{{Name: "rep", Type: httprep.TypeJSON, URL: srv.URL + "/?ip={{ip}}", Concurrency: 64, CacheSize: 1 << 20}}
	for _, mode := range []string{"cached", "uncached"} {
		b.Run(mode, func(b *testing.B) {
			p, err := New(cfg, Deps{Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx := context.Background()
			ev := sshBrute("203.0.113.9", "10.1.0.1")
			p.Enrich(ctx, ev) // warm the cache for "cached"
			var lat []time.Duration
			i := 0
			for b.Loop() {
				if mode == "uncached" {
					i++
					ev.SrcEndpoint.IP = netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}).String()
					if i >= 1<<16 {
						b.Fatal("uncached run exhausted its address space")
					}
				}
				start := time.Now()
				e := p.Enrich(ctx, ev)
				lat = append(lat, time.Since(start))
				if len(e.Missing) > 0 {
					b.Fatalf("missing %v: %v", e.Missing, e.Errors)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50_µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99_µs")
		})
	}
}
