package cloudtrail

import (
	"testing"

	"github.com/quell-ir/quell/internal/source/sourcetest"
)

// FuzzParseCloudTrail: never a panic; success means every event is valid,
// failure is a FieldError naming a path.
func FuzzParseCloudTrail(f *testing.F) {
	sourcetest.Fuzz(f, Name, sourcetest.Seeds(f, "cloudtrail"), New(nil).Parse)
}

// BenchmarkParseCloudTrail reports events/s over all samples of the format.
func BenchmarkParseCloudTrail(b *testing.B) {
	sourcetest.Bench(b, sourcetest.Seeds(b, "cloudtrail"), New(nil).Parse)
}
