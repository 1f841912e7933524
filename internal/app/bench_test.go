package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/txn"
)

func benchApp(b *testing.B, playbooks string) *app.App {
	b.Helper()
	cfg := config.Default()
	cfg.DataDir = b.TempDir()
	cfg.Server.Addr = "127.0.0.1:0"
	if playbooks != "" {
		p := filepath.Join(b.TempDir(), "pb.yaml")
		os.WriteFile(p, []byte(playbooks), 0o644)
		cfg.Playbooks = []string{p}
	}
	a, err := app.New(context.Background(), cfg, app.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return a
}

func eventsBody(prefix string, from, n int) []byte {
	evs := make([]map[string]any, n)
	for i := range evs {
		k := from + i
		evs[i] = map[string]any{
			"id": fmt.Sprintf("%s-%d", prefix, k), "source": "bench", "type": "brute_force", "severity_id": 3, "rule": "ssh brute force",
			"src_endpoint": map[string]any{"ip": fmt.Sprintf("198.51.%d.%d", (k/250)%250, k%250)},
		}
	}
	b, _ := json.Marshal(evs)
	return b
}

// BenchmarkIntake measures durable intake: events per second answered 202
// (committed with fsync) over loopback HTTP, 8 concurrent clients posting
// batches of 100.
func BenchmarkIntake(b *testing.B) {
	a := benchApp(b, "")
	if err := a.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer a.Stop(context.Background())
	const total, batch, clients = 100000, 100, 8
	url := "http://" + a.Addr() + "/v1/events"
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	b.ResetTimer()
	var elapsed time.Duration
	for it := 0; it < b.N; it++ {
		next := make(chan int)
		var wg sync.WaitGroup
		var failed atomic.Int32
		start := time.Now()
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for from := range next {
					resp, err := cl.Post(url, "application/json", bytes.NewReader(eventsBody(fmt.Sprint("i", it), from, batch)))
					if err != nil || resp.StatusCode != 202 {
						failed.Add(1)
					}
					if resp != nil {
						resp.Body.Close()
					}
				}
			}()
		}
		for from := 0; from < total; from += batch {
			next <- from
		}
		close(next)
		wg.Wait()
		elapsed += time.Since(start)
		if failed.Load() > 0 {
			b.Fatalf("%d requests failed", failed.Load())
		}
	}
	b.ReportMetric(float64(total*b.N)/elapsed.Seconds(), "events/s")
}

// BenchmarkDecisionLatency sends 5,000 events/s for 2 s (one request of 5
// events every millisecond) through a playbook in audit mode and reports
// the time from the POST to the transaction's terminal state.
func BenchmarkDecisionLatency(b *testing.B) {
	a := benchApp(b, `apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: note}
spec:
  match: 'event.type == "brute_force"'
  steps:
    - action: log
      params: {message: 'brute force from {{ .event.src_endpoint.ip }}', level: debug}
`)
	var mu sync.Mutex
	sent := map[string]time.Time{}
	var lat []time.Duration
	done := make(chan struct{}, 1<<16)
	a.Engine.Observe(func(t txn.Transaction, _ txn.State) {
		if !t.State.Terminal() {
			return
		}
		now := time.Now()
		mu.Lock()
		if s, ok := sent[t.EventID]; ok {
			lat = append(lat, now.Sub(s))
		}
		mu.Unlock()
		done <- struct{}{}
	})
	if err := a.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer a.Stop(context.Background())
	url := "http://" + a.Addr() + "/v1/events"
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	const perTick, ticks = 5, 2000
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		tick := time.NewTicker(time.Millisecond)
		var wg sync.WaitGroup
		for k := 0; k < ticks; k++ {
			<-tick.C
			from := k * perTick
			prefix := fmt.Sprint("d", it)
			mu.Lock()
			now := time.Now()
			for i := from; i < from+perTick; i++ {
				sent[fmt.Sprintf("%s-%d", prefix, i)] = now
			}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := cl.Post(url, "application/json", bytes.NewReader(eventsBody(prefix, from, perTick)))
				if err != nil || resp.StatusCode != 202 {
					b.Error("post failed", err)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}()
		}
		tick.Stop()
		wg.Wait()
		deadline := time.After(60 * time.Second)
		for n := 0; n < perTick*ticks; n++ {
			select {
			case <-done:
			case <-deadline:
				b.Fatalf("only %d of %d transactions finished", n, perTick*ticks)
			}
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat)), "txns")
}
