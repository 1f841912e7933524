package guardduty

import (
	"testing"

	"github.com/quell-ir/quell/internal/source/sourcetest"
)

// FuzzParseGuardDuty: never a panic; success means every event is valid,
// failure is a FieldError naming a path.
func FuzzParseGuardDuty(f *testing.F) {
	sourcetest.Fuzz(f, Name, sourcetest.Seeds(f, "guardduty"), New(nil).Parse)
}

// BenchmarkParseGuardDuty reports events/s over all samples of the format.
func BenchmarkParseGuardDuty(b *testing.B) {
	sourcetest.Bench(b, sourcetest.Seeds(b, "guardduty"), New(nil).Parse)
}
