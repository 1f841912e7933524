package falco

import (
	"testing"

	"github.com/quell-ir/quell/internal/source/sourcetest"
)

// FuzzParseFalco: never a panic; success means every event is valid,
// failure is a FieldError naming a path.
func FuzzParseFalco(f *testing.F) {
	sourcetest.Fuzz(f, Name, sourcetest.Seeds(f, "falco"), New(nil).Parse)
}

// BenchmarkParseFalco reports events/s over all samples of the format.
func BenchmarkParseFalco(b *testing.B) {
	sourcetest.Bench(b, sourcetest.Seeds(b, "falco"), New(nil).Parse)
}
