package crowdsec

import (
	"testing"

	"github.com/quell-ir/quell/internal/source/sourcetest"
)

// FuzzParseCrowdSec: never a panic; success means every event is valid,
// failure is a FieldError naming a path.
func FuzzParseCrowdSec(f *testing.F) {
	sourcetest.Fuzz(f, Name, sourcetest.Seeds(f, "crowdsec"), New(nil).Parse)
}

// BenchmarkParseCrowdSec reports events/s over all samples of the format.
func BenchmarkParseCrowdSec(b *testing.B) {
	sourcetest.Bench(b, sourcetest.Seeds(b, "crowdsec"), New(nil).Parse)
}
