package txn

import (
	"context"
	"sync"
)

// Resting reports whether a transaction has settled for a waiter: it is
// terminal or active. awaiting_approval is not resting: it will move.
func (s State) Resting() bool { return s.Terminal() || s == Active }

// waiters wakes goroutines waiting for a transaction to settle.
type waiters struct {
	mu sync.Mutex
	m  map[string][]chan struct{}
}

func (w *waiters) add(id string) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string][]chan struct{}{}
	}
	c := make(chan struct{})
	w.m[id] = append(w.m[id], c)
	return c
}

func (w *waiters) wake(id string) {
	w.mu.Lock()
	cs := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	for _, c := range cs {
		close(c)
	}
}

// WaitResting blocks until the transaction is terminal or active.
func (e *Engine) WaitResting(ctx context.Context, id string) (*Transaction, error) {
	for {
		c := e.waiters.add(id) // before reading, so no transition is missed
		t, err := e.store.GetTxn(ctx, id)
		if err != nil {
			return nil, err
		}
		if t.State.Resting() {
			return t, nil
		}
		select {
		case <-c:
		case <-ctx.Done():
			return t, ctx.Err()
		}
	}
}

// Get returns a transaction.
func (e *Engine) Get(ctx context.Context, id string) (*Transaction, error) {
	return e.store.GetTxn(ctx, id)
}

// WaitChange blocks until the transaction's version differs from v or ctx
// ends.
func (e *Engine) WaitChange(ctx context.Context, id string, v int64) {
	for {
		c := e.waiters.add(id)
		t, err := e.store.GetTxn(ctx, id)
		if err != nil || t.Version != v {
			return
		}
		select {
		case <-c:
		case <-ctx.Done():
			return
		}
	}
}
