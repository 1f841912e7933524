package alertmanager

import (
	"testing"

	"github.com/quell-ir/quell/internal/source/sourcetest"
)

// FuzzParseAlertmanager: never a panic; success means every event is valid,
// failure is a FieldError naming a path.
func FuzzParseAlertmanager(f *testing.F) {
	sourcetest.Fuzz(f, Name, sourcetest.Seeds(f, "alertmanager"), New(nil).Parse)
}

// BenchmarkParseAlertmanager reports events/s over all samples of the format.
func BenchmarkParseAlertmanager(b *testing.B) {
	sourcetest.Bench(b, sourcetest.Seeds(b, "alertmanager"), New(nil).Parse)
}
