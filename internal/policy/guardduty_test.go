package policy

import (
	"os"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/guardduty"
)

// guardDutyEvent parses a real GuardDuty finding with quell's own parser,
// as intake does, and normalizes it.
func guardDutyEvent(t testing.TB, path string) *event.Event {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read sample: %v", err)
	}
	res, err := guardduty.New(nil).Parse(raw)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	if len(res.Events) != 1 {
		t.Fatalf("parse %s: %d events, want 1", path, len(res.Events))
	}
	ev := res.Events[0]
	ev.Normalize(time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC))
	if err := ev.Validate(); err != nil {
		t.Fatalf("sample event invalid: %v", err)
	}
	return &ev
}
