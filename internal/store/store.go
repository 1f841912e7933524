// Package store is quell's system of record: events with their context,
// transactions with their journal. The embedded backend is SQLite (package
// store/sqlite). Cluster mode (PostgreSQL) is not built yet.
package store

import (
	"context"
	"time"

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

// Errors shared with the transaction engine, which declares the storage it
// needs (txn.Store) on its side of the seam.
var (
	ErrNotFound = txn.ErrNotFound
	ErrConflict = txn.ErrConflict
)

// AppendOutcome says what happened to one event of a batch.
type AppendOutcome string

const (
	Created   AppendOutcome = "created"
	Duplicate AppendOutcome = "duplicate" // same id, or same fingerprint inside the window
	Updated   AppendOutcome = "updated"   // same id with a higher count (GuardDuty re-sends)
)

// AppendResult is the outcome for one event, in batch order.
type AppendResult struct {
	ID      string        `json:"id"`
	Outcome AppendOutcome `json:"outcome"`
}

// EventFilter selects events for listing.
type EventFilter struct {
	Source string
	Type   string
	Since  time.Time
	Before string // id cursor: events older than this id
	Limit  int
}

// EventRecord is a stored event with what the pipeline learned about it.
type EventRecord struct {
	Event       *event.Event   `json:"event"`
	Context     *event.Context `json:"context,omitempty"`
	ProcessedAt *time.Time     `json:"processed_at,omitempty"`
	Seq         int64          `json:"seq"`
}

// Store is the full backend interface. Consumers declare the small subset
// they use.
type Store interface {
	// AppendEvents commits a batch of normalized events durably in one
	// transaction. dedupWindow bounds fingerprint deduplication.
	AppendEvents(ctx context.Context, evs []*event.Event, dedupWindow time.Duration) ([]AppendResult, error)
	GetEvent(ctx context.Context, id string) (*EventRecord, error)
	ListEvents(ctx context.Context, f EventFilter) ([]*EventRecord, error)
	CountEvents(ctx context.Context) (int64, error)
	// SetEventContext stores enrichment/risk and marks the event processed.
	CompleteEvent(ctx context.Context, id string, c *event.Context) error
	// Unprocessed returns events accepted but not yet processed, oldest first.
	Unprocessed(ctx context.Context, limit int) ([]*event.Event, error)

	txn.Store
	Close() error
}
