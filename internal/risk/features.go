package risk

import (
	"math"
	"time"

	lru "github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/quell-ir/quell/internal/event"
)

// Feature vector of one event, computed against what its entity did
// before it:
//
//	0 severity_id (99 "other" counts as 3)
//	1 log1p(count): how many times the source saw it
//	2,3 hour of day on the unit circle (sin, cos), so 23:00 is near 00:00
//	4 log1p(events of this entity in the previous hour)
//	5 distinct event types of this entity in the previous hour
//	6 log1p(seconds since this entity's previous event), capped at a day
const numFeatures = 7

const recentPerEntity = 64

type sighting struct {
	at  time.Time
	typ string
}

// entityState remembers each entity's recent events, bounded by LRU.
type entityState struct {
	lru *lru.LRU[string, []sighting]
}

func newEntityState(size int) *entityState {
	l, _ := lru.NewLRU[string, []sighting](max(size, 1), nil)
	return &entityState{lru: l}
}

func (st *entityState) observe(ev *event.Event) {
	k := ev.PartitionKey()
	prev, _ := st.lru.Get(k)
	if len(prev) >= recentPerEntity {
		prev = append(prev[:0:0], prev[1:]...)
	}
	st.lru.Add(k, append(prev, sighting{at: ev.Time, typ: typeKey(ev)}))
}

func (st *entityState) features(ev *event.Event) []float64 {
	x := make([]float64, numFeatures)
	sev := ev.SeverityID
	if sev == 99 {
		sev = 3
	}
	x[0] = float64(sev)
	x[1] = math.Log1p(float64(max(ev.Count, 1)))
	t := ev.Time.UTC()
	h := (float64(t.Hour()) + float64(t.Minute())/60) / 24 * 2 * math.Pi
	x[2], x[3] = math.Sin(h), math.Cos(h)
	prev, _ := st.lru.Peek(ev.PartitionKey())
	hourAgo := ev.Time.Add(-time.Hour)
	n := 0
	types := map[string]bool{}
	for _, s := range prev {
		if !s.at.Before(hourAgo) && !s.at.After(ev.Time) {
			n++
			types[s.typ] = true
		}
	}
	x[4] = math.Log1p(float64(n))
	x[5] = float64(len(types))
	gap := 86400.0
	for i := len(prev) - 1; i >= 0; i-- {
		// The latest earlier sighting: history may hold events that
		// arrived out of order.
		if d := ev.Time.Sub(prev[i].at).Seconds(); d >= 0 {
			gap = min(gap, d)
			break
		}
	}
	x[6] = math.Log1p(gap)
	return x
}
