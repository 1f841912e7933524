package txn

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

type timerKind int

const (
	timerExpiry timerKind = iota
	timerApproval
)

// scheduler fires one callback per transaction at its deadline. Deadlines
// live in the store; the scheduler is rebuilt from it at start, so expiry
// survives restarts.
type scheduler struct {
	now  func() time.Time
	fire func(id string, kind timerKind)

	mu   sync.Mutex
	h    timerHeap
	byID map[string]*timerItem
	wake chan struct{}
}

type timerItem struct {
	id    string
	at    time.Time
	kind  timerKind
	index int
}

type timerHeap []*timerItem

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *timerHeap) Push(x any)        { it := x.(*timerItem); it.index = len(*h); *h = append(*h, it) }
func (h *timerHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	it.index = -1
	return it
}

func newScheduler(now func() time.Time, fire func(string, timerKind)) *scheduler {
	return &scheduler{now: now, fire: fire, byID: map[string]*timerItem{}, wake: make(chan struct{}, 1)}
}

func (s *scheduler) add(id string, at time.Time, kind timerKind) {
	s.mu.Lock()
	if it, ok := s.byID[id]; ok {
		it.at, it.kind = at, kind
		heap.Fix(&s.h, it.index)
	} else {
		it := &timerItem{id: id, at: at, kind: kind}
		heap.Push(&s.h, it)
		s.byID[id] = it
	}
	s.mu.Unlock()
	s.poke()
}

func (s *scheduler) remove(id string) {
	s.mu.Lock()
	if it, ok := s.byID[id]; ok {
		heap.Remove(&s.h, it.index)
		delete(s.byID, id)
	}
	s.mu.Unlock()
	s.poke()
}

func (s *scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pending is for tests and metrics.
func (s *scheduler) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.h)
}

func (s *scheduler) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		var due []*timerItem
		now := s.now()
		for len(s.h) > 0 && !s.h[0].at.After(now) {
			it := heap.Pop(&s.h).(*timerItem)
			delete(s.byID, it.id)
			due = append(due, it)
		}
		wait := time.Hour
		if len(s.h) > 0 {
			wait = s.h[0].at.Sub(now)
		}
		s.mu.Unlock()
		for _, it := range due {
			s.fire(it.id, it.kind)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
		}
	}
}
