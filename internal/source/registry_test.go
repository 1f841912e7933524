package source_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/source"
	"github.com/quell-ir/quell/internal/source/generic"
)

func TestOverridesFromConfig(t *testing.T) {
	cfg := source.Config{
		Classification: classify.Config{Overrides: map[string]classify.Override{
			"Terminal shell in container": {Priority: "P2"},
		}},
		Generic: map[string]generic.Mapping{
			"suricata": {Source: "suricata", Fields: map[string]string{"rule": "$.alert.signature", "source_ip": "$.src_ip"}, Type: "suspicious_connection"},
		},
	}
	reg := prometheus.NewRegistry()
	r, err := source.New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := os.ReadFile("testdata/samples/falco/falco-website_terminal-shell-in-container.json")
	res, err := r.Parse(context.Background(), "falco", body)
	if err != nil || res.Events[0].Priority != "P2" {
		t.Fatalf("override not applied: %v %+v", err, res.Events)
	}
	res, err = r.Parse(context.Background(), "suricata", []byte(`{"alert":{"signature":"ET SCAN"},"src_ip":"192.0.2.1"}`))
	if err != nil || res.Events[0].Source != "suricata" || res.Events[0].Type != "suspicious_connection" {
		t.Fatalf("named mapping: %v %+v", err, res.Events)
	}
	body, _ = os.ReadFile("testdata/samples/falco/falco-website_internal-metrics-snapshot.json")
	if _, err := r.Parse(context.Background(), "falco", body); err != nil {
		t.Fatal(err)
	}
	r.Parse(context.Background(), "falco", []byte(`{"rule":`))
	if got := testutil.ToFloat64(mustCounter(t, reg, "quell_source_events_total", "falco")); got != 1 {
		t.Fatalf("events counter %v", got)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "quell_source_skipped_total", "falco")); got != 1 {
		t.Fatalf("skipped counter %v", got)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "quell_source_parse_errors_total", "falco")); got != 1 {
		t.Fatalf("errors counter %v", got)
	}
}

// mustCounter finds one labelled counter in a registry.
func mustCounter(t *testing.T, reg *prometheus.Registry, name, src string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "source" && l.GetValue() == src {
					return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return m.GetCounter().GetValue() })
				}
			}
		}
	}
	t.Fatalf("metric %s{source=%q} not found", name, src)
	return nil
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  source.Config
		want string
	}{
		{source.Config{Generic: map[string]generic.Mapping{"falco": {Fields: map[string]string{"rule": "$.r"}}}}, `generic["falco"]: name is taken`},
		{source.Config{Generic: map[string]generic.Mapping{"Bad Name": {Fields: map[string]string{"rule": "$.r"}}}}, `generic["Bad Name"]: name must match`},
		{source.Config{Generic: map[string]generic.Mapping{"x": {Fields: map[string]string{"nope": "$.r"}}}}, `generic["x"].fields.nope`},
		{source.Config{Classification: classify.Config{Overrides: map[string]classify.Override{"r": {Type: "bad"}}}}, `classification.overrides["r"].type`},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("error %v, want prefix %q", err, tc.want)
		}
	}
	if err := source.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentParse runs every sample through one registry from many
// goroutines; with -race it proves parsers share no mutable state.
func TestConcurrentParse(t *testing.T) {
	r := newRegistry(t)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, tc := range sampleCases {
				body, err := os.ReadFile(filepath.Join("testdata/samples", tc.file))
				if err != nil {
					t.Error(err)
					return
				}
				res, err := r.Parse(context.Background(), tc.parser, body)
				if err != nil || len(res.Events) != tc.events {
					t.Errorf("%s: %v, %d events", tc.file, err, len(res.Events))
				}
			}
		}()
	}
	wg.Wait()
}
