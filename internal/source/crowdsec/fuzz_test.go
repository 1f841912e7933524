package crowdsec

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

func seeds(tb testing.TB) [][]byte {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "samples", "crowdsec", "*.json"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no seed samples: %v", err)
	}
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzParseCrowdSec: never a panic; success means every event is valid,
// failure is a FieldError naming a path.
func FuzzParseCrowdSec(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	p := New(nil)
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := p.Parse(body)
		if err != nil {
			var fe *event.FieldError
			if !errors.As(err, &fe) || fe.Field == "" {
				t.Fatalf("error is not a FieldError with a path: %v", err)
			}
			return
		}
		for i, e := range res.Events {
			if err := e.Validate(); err != nil {
				t.Fatalf("event %d invalid: %v", i, err)
			}
			if e.Source != Name || e.Type == "" || e.Priority == "" || len(e.Raw) == 0 {
				t.Fatalf("event %d incomplete: source=%q type=%q priority=%q raw=%d", i, e.Source, e.Type, e.Priority, len(e.Raw))
			}
		}
	})
}

// BenchmarkParseCrowdSec reports events/s over all samples of the format.
func BenchmarkParseCrowdSec(b *testing.B) {
	bodies := seeds(b)
	p := New(nil)
	n, size := 0, 0
	for _, s := range bodies {
		res, err := p.Parse(s)
		if err != nil {
			b.Fatal(err)
		}
		n += len(res.Events) + len(res.Skipped)
		size += len(s)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for _, s := range bodies {
			if _, err := p.Parse(s); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
