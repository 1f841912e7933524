package generic

import (
	"errors"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

var genericSeeds = []string{
	`{"id":"a1","rule":"SSH brute force","severity":"high","time":"2024-01-02T03:04:05Z","source_ip":"203.0.113.9","tags":["ssh"]}`,
	`[{"alert":{"name":"x"},"client":{"addr":"10.0.0.1:443"},"level":"warn"},{"alert":{"name":"y"}}]`,
	`{"alerts":[{"name":"dns tunnel","ts":1700000000}]}` + "\n" + `{"alerts":[]}`,
}

func testMapping() Mapping {
	return Mapping{
		Source: "myids",
		Fields: map[string]string{
			"id": "$.id", "rule": "$.rule | $.alert.name", "severity": "$.severity | $.level",
			"time": "$.time | $.ts", "source_ip": "$.source_ip | $.client.addr", "tags": "$.tags[*]",
			"namespace": "$.ns", "count": "$.count",
		},
		SeverityMap: map[string]string{"warn": "medium"},
		Labels:      map[string]string{"sensor": "$.sensor['name']"},
	}
}

// FuzzParseGeneric: never a panic; success means valid events; failure is
// a FieldError.
func FuzzParseGeneric(f *testing.F) {
	for _, s := range genericSeeds {
		f.Add([]byte(s))
	}
	p, err := New("myids", testMapping(), nil)
	if err != nil {
		f.Fatal(err)
	}
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
		}
	})
}

// BenchmarkParseGeneric reports events/s for a mapped document.
func BenchmarkParseGeneric(b *testing.B) {
	p, err := New("myids", testMapping(), nil)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(genericSeeds[0])
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Parse(body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
