package firewall

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

func TestFlowSnapshots(t *testing.T) {
	var dumps atomic.Int32
	dump := func() ([]conntrack.Flow, error) {
		dumps.Add(1)
		return make([]conntrack.Flow, int(dumps.Load())), nil
	}
	t.Run("off dumps every time", func(t *testing.T) {
		dumps.Store(0)
		s := newFlowSnapshots(dump, 0)
		defer s.stop()
		s.get()
		s.get()
		if dumps.Load() != 2 {
			t.Fatalf("dumps %d, want 2", dumps.Load())
		}
	})
	t.Run("fresh snapshot is reused", func(t *testing.T) {
		dumps.Store(0)
		s := newFlowSnapshots(dump, time.Hour)
		defer s.stop()
		// The background refresh takes the first snapshot at start.
		deadline := time.Now().Add(5 * time.Second)
		for dumps.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		before := dumps.Load()
		for i := 0; i < 10; i++ {
			if _, err := s.get(); err != nil {
				t.Fatal(err)
			}
		}
		if dumps.Load() != before {
			t.Fatalf("a fresh snapshot was dumped again: %d -> %d", before, dumps.Load())
		}
	})
	t.Run("stale snapshot is replaced", func(t *testing.T) {
		dumps.Store(0)
		s := newFlowSnapshots(dump, time.Hour)
		defer s.stop()
		for deadline := time.Now().Add(5 * time.Second); dumps.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond) // the start-up refresh; the next one is half an hour away
		}
		s.mu.Lock()
		s.flows, s.at = nil, time.Now().Add(-2*time.Hour)
		s.mu.Unlock()
		n := dumps.Load()
		if _, err := s.get(); err != nil {
			t.Fatal(err)
		}
		if dumps.Load() != n+1 {
			t.Fatalf("stale snapshot used: dumps %d -> %d", n, dumps.Load())
		}
	})
}
