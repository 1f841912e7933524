package k8saudit

import (
	"testing"

	"github.com/quell-ir/quell/internal/source/sourcetest"
)

// FuzzParseK8sAudit: never a panic; success means every event is valid,
// failure is a FieldError naming a path.
func FuzzParseK8sAudit(f *testing.F) {
	sourcetest.Fuzz(f, Name, sourcetest.Seeds(f, "k8s-audit"), New(nil).Parse)
}

// BenchmarkParseK8sAudit reports events/s over all samples of the format.
func BenchmarkParseK8sAudit(b *testing.B) {
	sourcetest.Bench(b, sourcetest.Seeds(b, "k8s-audit"), New(nil).Parse)
}
