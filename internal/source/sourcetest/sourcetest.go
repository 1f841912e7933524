// Package sourcetest holds the fuzz and benchmark harness every parser
// shares: seeds from the committed samples, the properties a parse must
// keep, and parse throughput in events/s.
package sourcetest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/decode"
)

// Parse is a parser's Parse method.
type Parse func(body []byte) (decode.Result, error)

// Seeds reads internal/source/testdata/samples/<format>/*.json, relative to
// a parser package's directory (where its tests run).
func Seeds(tb testing.TB, format string) [][]byte {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("..", "testdata", "samples", format, "*.json"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no seed samples for %s: %v", format, err)
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

// Fuzz checks that parse never panics, that a failure is a FieldError
// naming a path, and that every event of a success is valid and complete
// (source, type, priority and the raw document set).
func Fuzz(f *testing.F, source string, seeds [][]byte, parse Parse) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := parse(body)
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
			if e.Source != source || e.Type == "" || e.Priority == "" || len(e.Raw) == 0 {
				t.Fatalf("event %d incomplete: source=%q type=%q priority=%q raw=%d", i, e.Source, e.Type, e.Priority, len(e.Raw))
			}
		}
	})
}

// Bench reports events/s (and bytes/s) over bodies.
func Bench(b *testing.B, bodies [][]byte, parse Parse) {
	n, size := 0, 0
	for _, s := range bodies {
		res, err := parse(s)
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
			if _, err := parse(s); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
