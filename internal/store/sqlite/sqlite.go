// Package sqlite is the embedded store: one SQLite database in WAL mode
// (modernc.org/sqlite, pure Go), one writer connection, a pool of readers.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/store"
	"github.com/quell-ir/quell/internal/txn"
)

// Store is the SQLite backend.
type Store struct {
	w      *sql.DB // one connection: SQLite has one writer; serializing here avoids SQLITE_BUSY
	r      *sql.DB
	ck     *sql.DB // one connection for background checkpoints
	ops    chan writeOp
	stmts  map[string]*sql.Stmt // prepared on the writer connection; used only by the writer goroutine
	closed chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	cmu       sync.Mutex    // guards the completions below
	cpending  []*completion // waiting for the next completion batch
	cflushing bool          // a flushCompletions goroutine is running
}

// wtx is a write transaction whose statements are prepared once on the
// writer connection and reused: parsing SQL dominated the write path.
type wtx struct {
	*sql.Tx
	s *Store
}

// stmt returns the prepared statement for q. Hot statements are prepared
// at open, before any transaction: the writer pool has one connection, and
// preparing on the pool inside a transaction would wait for it forever.
func (t *wtx) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := t.s.stmts[q]; ok {
		return t.Tx.StmtContext(ctx, st), nil
	}
	return t.Tx.PrepareContext(ctx, q)
}

func (t *wtx) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st, ok := t.s.stmts[q]; ok {
		return t.Tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, q, args...)
}

func (t *wtx) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	if st, ok := t.s.stmts[q]; ok {
		return t.Tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, q, args...)
}

// Hot write statements, prepared once at open.
const (
	qSavepoint      = `SAVEPOINT op`
	qRollbackTo     = `ROLLBACK TO op`
	qRelease        = `RELEASE op`
	qEventsByIDs    = `SELECT e.id, e.count, json_extract(e.doc, '$.status') FROM json_each(?) AS k JOIN events AS e ON e.id = k.value`
	qEventsByFPs    = `SELECT e.fingerprint, e.id, e.received_at FROM json_each(?) AS k JOIN events AS e ON e.fingerprint = k.value AND e.received_at >= ? ORDER BY e.received_at, e.seq`
	qInsertEvent    = `INSERT INTO events(id, source, type, time, received_at, fingerprint, count, doc) VALUES (?,?,?,?,?,?,?,?)`
	qUpdateEventDoc = `UPDATE events SET count = ?, doc = ?, processed_at = NULL WHERE id = ?`
	qCompleteEvent  = `UPDATE events SET context = ?, processed_at = ? WHERE id = ?`
	qTxnByOriginKey = `SELECT doc FROM transactions WHERE origin = ? OR (key = ? AND holds = 1) ORDER BY origin = ? DESC LIMIT 1`
	qInsertTxn      = `INSERT INTO transactions(id, key, origin, action, state, holds, event_id, created_at, updated_at, version, doc) VALUES (?,?,?,?,?,?,?,?,?,?,?)`
	qInsertJournal  = `INSERT INTO journal(txn_id, seq, from_state, to_state, at, detail) VALUES (?,?,?,?,?,?)`
	qUpdateTxn      = `UPDATE transactions SET state = ?, holds = ?, updated_at = ?, version = ?, doc = ? WHERE id = ? AND version = ?`
)

func (s *Store) prepare(ctx context.Context) error {
	for _, q := range []string{qSavepoint, qRollbackTo, qRelease, qEventsByIDs, qEventsByFPs, qInsertEvent, qUpdateEventDoc,
		qCompleteEvent, qTxnByOriginKey, qInsertTxn, qInsertJournal, qUpdateTxn} {
		st, err := s.w.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare %q: %w", q, err)
		}
		s.stmts[q] = st
	}
	return nil
}

// writeOp is one unit of work for the group-commit writer.
type writeOp struct {
	ctx  context.Context
	fn   func(ctx context.Context, tx *wtx) error
	done chan error
}

// maxGroup bounds the operations that share one commit.
const maxGroup = 256

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database in dir and migrates it.
func Open(ctx context.Context, dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "quell.db")
	// synchronous=FULL: a 202 means the event survived even a power cut, not
	// just a process kill. Group commit pays the fsync once per batch.
	//
	// Checkpoints run on their own connection (checkpointer), so that the
	// writer does not copy pages into the database file between two group
	// commits; its own automatic checkpoint stays as a backstop that bounds
	// the WAL should the checkpointer fall behind. A larger page cache keeps
	// the index pages the intake lookups and inserts touch.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(ON)&_txlock=immediate" +
		"&_pragma=wal_autocheckpoint(4000)&_pragma=cache_size(-65536)"
	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	r, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=query_only(ON)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(8)
	ck, err := sql.Open("sqlite", "file:"+path+"?_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)")
	if err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open %s for checkpoints: %w", path, err)
	}
	ck.SetMaxOpenConns(1)
	s := &Store{w: w, r: r, ck: ck, ops: make(chan writeOp, 1024), closed: make(chan struct{}), stmts: map[string]*sql.Stmt{}}
	if err := s.migrate(ctx); err != nil {
		w.Close()
		r.Close()
		ck.Close()
		return nil, err
	}
	if err := s.prepare(ctx); err != nil {
		w.Close()
		r.Close()
		ck.Close()
		return nil, err
	}
	s.wg.Add(2)
	go s.writer()
	go s.checkpointer()
	return s, nil
}

// Close stops the writer and closes both pools.
func (s *Store) Close() error {
	s.once.Do(func() { close(s.closed) })
	s.wg.Wait()
	for _, st := range s.stmts {
		st.Close()
	}
	return errors.Join(s.w.Close(), s.r.Close(), s.ck.Close())
}

// checkpointer copies committed WAL frames into the database file in the
// background (PASSIVE: it never blocks the writer or readers). Committed
// data is durable in the WAL already; this only keeps the WAL short.
func (s *Store) checkpointer() {
	defer s.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		_, _ = s.ck.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
	}
}

// write runs fn inside a write transaction shared with other concurrent
// writes: one commit, one fsync for the whole group. One failing operation
// does not undo the others: the group is then rolled back and run again with
// each operation under its own savepoint. So fn may run more than once and
// must be re-runnable: it may only set its results from what it reads in tx
// (every run starts from the same database state). write returns when the
// group is durable.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, tx *wtx) error) error {
	return s.startWrite(ctx, fn)()
}

// startWrite queues fn for the writer (operations run in the order they
// were queued) and returns a function that waits for its outcome.
func (s *Store) startWrite(ctx context.Context, fn func(ctx context.Context, tx *wtx) error) func() error {
	op := writeOp{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case s.ops <- op:
	case <-s.closed:
		return func() error { return errors.New("store is closed") }
	case <-ctx.Done():
		err := ctx.Err()
		return func() error { return err }
	}
	// Once queued the operation will run; wait for its true outcome.
	return func() error { return <-op.done }
}

func (s *Store) writer() {
	defer s.wg.Done()
	for {
		var first writeOp
		select {
		case first = <-s.ops:
		case <-s.closed:
			for {
				select {
				case op := <-s.ops:
					s.commitGroup([]writeOp{op})
				default:
					return
				}
			}
		}
		group := []writeOp{first}
	drain:
		for len(group) < maxGroup {
			select {
			case op := <-s.ops:
				group = append(group, op)
			default:
				break drain
			}
		}
		s.commitGroup(group)
	}
}

func (s *Store) commitGroup(group []writeOp) {
	// Most groups fail nowhere: run them without per-operation savepoints
	// (a savepoint makes SQLite copy every page it touches to a
	// sub-journal first). If an operation fails, the whole transaction is
	// rolled back and the group runs again, each operation isolated in its
	// own savepoint, so that only the failing one fails.
	if len(group) > 1 {
		if s.commitOptimistic(group) {
			return
		}
	}
	s.commitIsolated(group)
}

// commitOptimistic runs the group in one transaction without savepoints.
// It returns false, having rolled back and answered nobody, if an
// operation failed or the transaction could not start; then the group must
// run again through commitIsolated.
func (s *Store) commitOptimistic(group []writeOp) bool {
	ctx := context.Background()
	stx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false
	}
	tx := &wtx{Tx: stx, s: s}
	for _, op := range group {
		if err := op.fn(op.ctx, tx); err != nil {
			tx.Rollback()
			return false
		}
	}
	if err := tx.Commit(); err != nil {
		// The outcome of a failed COMMIT is reported to every operation,
		// as before: do not run them again.
		err = fmt.Errorf("commit: %w", err)
		for _, op := range group {
			op.done <- err
		}
		return true
	}
	for _, op := range group {
		op.done <- nil
	}
	return true
}

func (s *Store) commitIsolated(group []writeOp) {
	ctx := context.Background()
	fail := func(err error) {
		for _, op := range group {
			op.done <- err
		}
	}
	stx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		fail(fmt.Errorf("begin write: %w", err))
		return
	}
	tx := &wtx{Tx: stx, s: s}
	errs := make([]error, len(group))
	for i, op := range group {
		if len(group) > 1 {
			if _, err := tx.exec(ctx, qSavepoint); err != nil {
				tx.Rollback()
				fail(fmt.Errorf("savepoint: %w", err))
				return
			}
		}
		errs[i] = op.fn(op.ctx, tx)
		if len(group) > 1 {
			if errs[i] != nil {
				if _, err := tx.exec(ctx, qRollbackTo); err != nil {
					tx.Rollback()
					fail(fmt.Errorf("rollback to savepoint: %w", err))
					return
				}
			}
			if _, err := tx.exec(ctx, qRelease); err != nil {
				tx.Rollback()
				fail(fmt.Errorf("release savepoint: %w", err))
				return
			}
		} else if errs[i] != nil {
			tx.Rollback()
			group[0].done <- errs[i]
			return
		}
	}
	if err := tx.Commit(); err != nil {
		fail(fmt.Errorf("commit: %w", err))
		return
	}
	for i, op := range group {
		op.done <- errs[i]
	}
}

// migrations are applied in order, each once, recorded in schema_version.
// Never edit a released migration: add a new one.
var migrations = []string{
	`CREATE TABLE events (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		id TEXT NOT NULL UNIQUE,
		source TEXT NOT NULL,
		type TEXT NOT NULL DEFAULT '',
		time INTEGER NOT NULL,
		received_at INTEGER NOT NULL,
		fingerprint TEXT NOT NULL,
		count INTEGER NOT NULL DEFAULT 1,
		doc BLOB NOT NULL,
		context BLOB,
		processed_at INTEGER
	);
	CREATE INDEX events_fingerprint ON events(fingerprint, received_at);
	CREATE INDEX events_unprocessed ON events(seq) WHERE processed_at IS NULL;
	CREATE INDEX events_source ON events(source, seq);
	CREATE TABLE transactions (
		id TEXT PRIMARY KEY,
		key TEXT NOT NULL,
		origin TEXT NOT NULL UNIQUE,
		action TEXT NOT NULL,
		state TEXT NOT NULL,
		holds INTEGER NOT NULL,
		event_id TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL,
		version INTEGER NOT NULL,
		doc BLOB NOT NULL
	);
	CREATE UNIQUE INDEX transactions_key_holder ON transactions(key) WHERE holds = 1;
	CREATE INDEX transactions_state ON transactions(state);
	CREATE INDEX transactions_event ON transactions(event_id);
	CREATE TABLE journal (
		txn_id TEXT NOT NULL REFERENCES transactions(id),
		seq INTEGER NOT NULL,
		from_state TEXT NOT NULL,
		to_state TEXT NOT NULL,
		at INTEGER NOT NULL,
		detail TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (txn_id, seq)
	);`,
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: create schema_version: %w", err)
	}
	var v int
	err := s.w.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		if _, err := s.w.ExecContext(ctx, `INSERT INTO schema_version(version) VALUES (0)`); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("migrate: database schema %d is newer than this binary (%d): refusing to run an older quell on it", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate to %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate to %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, i+1); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate to %d: %w", i+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate to %d: commit: %w", i+1, err)
		}
	}
	return nil
}

func nanos(t time.Time) int64 { return t.UnixNano() }

// AppendEvents writes the batch in one transaction: one fsync for all.
func (s *Store) AppendEvents(ctx context.Context, evs []*event.Event, window time.Duration) ([]store.AppendResult, error) {
	docs := make([][]byte, len(evs))
	for i, e := range evs {
		doc, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("append event %s: encode: %w", e.ID, err)
		}
		docs[i] = doc
	}
	return s.AppendEncodedEvents(ctx, evs, docs, window)
}

// AppendEncodedEvents is AppendEvents for callers that already encoded each
// event's document (docs[i] is json.Marshal(evs[i])): the encoding then runs
// on the callers' goroutines, not on the single writer.
func (s *Store) AppendEncodedEvents(ctx context.Context, evs []*event.Event, docs [][]byte, window time.Duration) ([]store.AppendResult, error) {
	return s.StartAppendEncodedEvents(ctx, evs, docs, window)()
}

// StartAppendEncodedEvents queues the batch for the writer and returns at
// once; the returned function waits for the batch to be durable and returns
// its outcomes. Batches started one after the other are written in that
// order, so a caller can queue the next batch while one is committing.
func (s *Store) StartAppendEncodedEvents(ctx context.Context, evs []*event.Event, docs [][]byte, window time.Duration) func() ([]store.AppendResult, error) {
	fail := func(err error) func() ([]store.AppendResult, error) {
		return func() ([]store.AppendResult, error) { return nil, err }
	}
	if len(docs) != len(evs) {
		return fail(fmt.Errorf("append events: %d documents for %d events", len(docs), len(evs)))
	}
	// The lookup keys are encoded here too, off the writer.
	ids := make([]string, 0, len(evs))
	fps := make([]string, 0, len(evs))
	uniq := make(map[string]struct{}, 2*len(evs))
	var since int64
	for i, e := range evs {
		if _, ok := uniq["i"+e.ID]; !ok {
			uniq["i"+e.ID] = struct{}{}
			ids = append(ids, e.ID)
		}
		if _, ok := uniq["f"+e.Fingerprint]; !ok {
			uniq["f"+e.Fingerprint] = struct{}{}
			fps = append(fps, e.Fingerprint)
		}
		if b := nanos(e.ReceivedAt.Add(-window)); i == 0 || b < since {
			since = b
		}
	}
	idKeys, err := json.Marshal(ids)
	if err != nil {
		return fail(fmt.Errorf("append events: encode ids: %w", err))
	}
	fpKeys, err := json.Marshal(fps)
	if err != nil {
		return fail(fmt.Errorf("append events: encode fingerprints: %w", err))
	}
	var out []store.AppendResult
	wait := s.startWrite(ctx, func(ctx context.Context, tx *wtx) error {
		var err error
		out, err = appendEvents(ctx, tx, evs, docs, idKeys, fpKeys, since, window)
		return err
	})
	return func() ([]store.AppendResult, error) {
		if err := wait(); err != nil {
			return nil, err
		}
		return out, nil
	}
}

type storedID struct {
	count  int
	status string
}

type storedFP struct {
	id       string
	received int64
}

// appendEvents looks up every id and fingerprint of the batch with two
// queries, then decides each event in batch order against what is stored
// plus what the batch itself wrote before it: the outcome is the one a
// lookup per event would give.
func appendEvents(ctx context.Context, tx *wtx, evs []*event.Event, docs [][]byte, idKeys, fpKeys []byte, since int64, window time.Duration) ([]store.AppendResult, error) {
	byIDs, err := tx.stmt(ctx, qEventsByIDs)
	if err != nil {
		return nil, fmt.Errorf("append events: %w", err)
	}
	ins, err := tx.stmt(ctx, qInsertEvent)
	if err != nil {
		return nil, fmt.Errorf("append events: %w", err)
	}
	upd, err := tx.stmt(ctx, qUpdateEventDoc)
	if err != nil {
		return nil, fmt.Errorf("append events: %w", err)
	}
	known := map[string]storedID{}
	rows, err := byIDs.QueryContext(ctx, string(idKeys))
	if err != nil {
		return nil, fmt.Errorf("append events: look up ids: %w", err)
	}
	for rows.Next() {
		var id string
		var count int
		var status sql.NullString
		if err := rows.Scan(&id, &count, &status); err != nil {
			rows.Close()
			return nil, fmt.Errorf("append events: look up ids: %w", err)
		}
		known[id] = storedID{count: count, status: status.String}
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("append events: look up ids: %w", err)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("append events: look up ids: %w", err)
	}
	// Fingerprints seen inside the widest window of the batch, oldest
	// first (the order of the fingerprint index).
	seen := map[string][]storedFP{}
	if window > 0 {
		byFPs, err := tx.stmt(ctx, qEventsByFPs)
		if err != nil {
			return nil, fmt.Errorf("append events: %w", err)
		}
		rows, err := byFPs.QueryContext(ctx, string(fpKeys), since)
		if err != nil {
			return nil, fmt.Errorf("append events: look up fingerprints: %w", err)
		}
		for rows.Next() {
			var fp, id string
			var received int64
			if err := rows.Scan(&fp, &id, &received); err != nil {
				rows.Close()
				return nil, fmt.Errorf("append events: look up fingerprints: %w", err)
			}
			seen[fp] = append(seen[fp], storedFP{id: id, received: received})
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("append events: look up fingerprints: %w", err)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("append events: look up fingerprints: %w", err)
		}
	}

	out := make([]store.AppendResult, len(evs))
	for i, e := range evs {
		if st, ok := known[e.ID]; ok {
			// An update is news: a higher count (GuardDuty re-sends a
			// finding), or the resolution of an open event (Alertmanager).
			if e.Count > st.count || (e.Status == event.StatusResolved && st.status != event.StatusResolved) {
				if _, err := upd.ExecContext(ctx, e.Count, docs[i], e.ID); err != nil {
					return nil, fmt.Errorf("append event %s: update: %w", e.ID, err)
				}
				known[e.ID] = storedID{count: e.Count, status: e.Status}
				out[i] = store.AppendResult{ID: e.ID, Outcome: store.Updated}
			} else {
				out[i] = store.AppendResult{ID: e.ID, Outcome: store.Duplicate}
			}
			continue
		}
		received := nanos(e.ReceivedAt)
		if window > 0 {
			bound := nanos(e.ReceivedAt.Add(-window))
			dup := ""
			var best int64
			for _, f := range seen[e.Fingerprint] {
				if f.received >= bound && (dup == "" || f.received < best) {
					dup, best = f.id, f.received
				}
			}
			if dup != "" {
				out[i] = store.AppendResult{ID: dup, Outcome: store.Duplicate}
				continue
			}
		}
		if _, err := ins.ExecContext(ctx, e.ID, e.Source, e.Type, nanos(e.Time), received, e.Fingerprint, e.Count, docs[i]); err != nil {
			return nil, fmt.Errorf("append event %s: insert: %w", e.ID, err)
		}
		known[e.ID] = storedID{count: e.Count, status: e.Status}
		if window > 0 {
			seen[e.Fingerprint] = append(seen[e.Fingerprint], storedFP{id: e.ID, received: received})
		}
		out[i] = store.AppendResult{ID: e.ID, Outcome: store.Created}
	}
	return out, nil
}

func scanEvent(doc, ctxDoc []byte, processed sql.NullInt64, seq int64) (*store.EventRecord, error) {
	rec := &store.EventRecord{Event: &event.Event{}, Seq: seq}
	if err := json.Unmarshal(doc, rec.Event); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	if len(ctxDoc) > 0 {
		rec.Context = &event.Context{}
		if err := json.Unmarshal(ctxDoc, rec.Context); err != nil {
			return nil, fmt.Errorf("decode event context: %w", err)
		}
	}
	if processed.Valid {
		t := time.Unix(0, processed.Int64).UTC()
		rec.ProcessedAt = &t
	}
	return rec, nil
}

// GetEvent returns one event.
func (s *Store) GetEvent(ctx context.Context, id string) (*store.EventRecord, error) {
	var doc, cdoc []byte
	var processed sql.NullInt64
	var seq int64
	err := s.r.QueryRowContext(ctx, `SELECT seq, doc, context, processed_at FROM events WHERE id = ?`, id).Scan(&seq, &doc, &cdoc, &processed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("event %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get event %s: %w", id, err)
	}
	return scanEvent(doc, cdoc, processed, seq)
}

// ListEvents lists events newest first.
func (s *Store) ListEvents(ctx context.Context, f store.EventFilter) ([]*store.EventRecord, error) {
	q := `SELECT seq, doc, context, processed_at FROM events WHERE 1=1`
	var args []any
	if f.Source != "" {
		q += ` AND source = ?`
		args = append(args, f.Source)
	}
	if f.Type != "" {
		q += ` AND type = ?`
		args = append(args, f.Type)
	}
	if !f.Since.IsZero() {
		q += ` AND received_at >= ?`
		args = append(args, nanos(f.Since))
	}
	if f.Before != "" {
		q += ` AND seq < (SELECT seq FROM events WHERE id = ?)`
		args = append(args, f.Before)
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, limit(f.Limit))
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	var out []*store.EventRecord
	for rows.Next() {
		var doc, cdoc []byte
		var processed sql.NullInt64
		var seq int64
		if err := rows.Scan(&seq, &doc, &cdoc, &processed); err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		rec, err := scanEvent(doc, cdoc, processed, seq)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, rows.Err()
}

func limit(n int) int {
	if n <= 0 || n > 1000 {
		return 100
	}
	return n
}

// CountEvents counts stored events.
func (s *Store) CountEvents(ctx context.Context) (int64, error) {
	var n int64
	err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
	return n, err
}

// CompleteEvent stores the event's context and marks it processed.
// Completions arriving together share one write operation: marking events
// processed is bookkeeping that every event needs, and one operation per
// event crowded the single writer.
func (s *Store) CompleteEvent(ctx context.Context, id string, c *event.Context) error {
	doc, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("complete event %s: encode: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	it := &completion{id: id, doc: doc, at: nanos(time.Now()), done: make(chan error, 1)}
	s.cmu.Lock()
	s.cpending = append(s.cpending, it)
	lead := !s.cflushing
	s.cflushing = true
	s.cmu.Unlock()
	if lead {
		go s.flushCompletions()
	}
	// Once queued the completion will be written; wait for its true outcome.
	return <-it.done
}

type completion struct {
	id   string
	doc  []byte
	at   int64
	err  error
	done chan error
}

// maxCompletions bounds the completions in one write operation.
const maxCompletions = 2048

// flushCompletions writes pending completions, a batch per operation,
// until none is left.
func (s *Store) flushCompletions() {
	for {
		s.cmu.Lock()
		batch := s.cpending
		if len(batch) > maxCompletions {
			batch = batch[:maxCompletions:maxCompletions]
			s.cpending = s.cpending[maxCompletions:]
		} else {
			s.cpending = nil
		}
		if len(batch) == 0 {
			s.cflushing = false
			s.cmu.Unlock()
			return
		}
		s.cmu.Unlock()
		err := s.write(context.Background(), func(ctx context.Context, tx *wtx) error {
			st, err := tx.stmt(ctx, qCompleteEvent)
			if err != nil {
				return fmt.Errorf("complete events: %w", err)
			}
			for _, it := range batch {
				it.err = nil
				res, err := st.ExecContext(ctx, it.doc, it.at, it.id)
				if err != nil {
					return fmt.Errorf("complete event %s: %w", it.id, err)
				}
				if n, _ := res.RowsAffected(); n == 0 {
					it.err = fmt.Errorf("complete event %s: %w", it.id, store.ErrNotFound)
				}
			}
			return nil
		})
		for _, it := range batch {
			if err != nil {
				it.done <- err
			} else {
				it.done <- it.err
			}
		}
	}
}

// Unprocessed returns accepted events not yet processed, oldest first.
func (s *Store) Unprocessed(ctx context.Context, n int) ([]*event.Event, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT doc FROM events WHERE processed_at IS NULL ORDER BY seq LIMIT ?`, n)
	if err != nil {
		return nil, fmt.Errorf("list unprocessed events: %w", err)
	}
	defer rows.Close()
	var out []*event.Event
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("list unprocessed events: %w", err)
		}
		e := &event.Event{}
		if err := json.Unmarshal(doc, e); err != nil {
			return nil, fmt.Errorf("decode event: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// CreateTxn inserts a transaction unless its origin or its key is taken.
func (s *Store) CreateTxn(ctx context.Context, t *txn.Transaction, e ...txn.JournalEntry) (*txn.Transaction, bool, error) {
	var existing *txn.Transaction
	created := false
	err := s.write(ctx, func(ctx context.Context, tx *wtx) error {
		var err error
		existing, created, err = createTxn(ctx, tx, t, e)
		return err
	})
	if err != nil {
		t.Version = 0
		return nil, false, err
	}
	return existing, created, nil
}

func createTxn(ctx context.Context, tx *wtx, t *txn.Transaction, entries []txn.JournalEntry) (*txn.Transaction, bool, error) {
	var doc []byte
	err := tx.queryRow(ctx, qTxnByOriginKey, t.Origin, t.Key, t.Origin).Scan(&doc)
	if err == nil {
		existing := &txn.Transaction{}
		if err := json.Unmarshal(doc, existing); err != nil {
			return nil, false, fmt.Errorf("create txn: decode existing: %w", err)
		}
		return existing, false, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, false, fmt.Errorf("create txn: look up: %w", err)
	}
	t.Version = int64(len(entries))
	if err := insertTxn(ctx, tx, t); err != nil {
		return nil, false, err
	}
	for _, e := range entries {
		if err := insertJournal(ctx, tx, e); err != nil {
			return nil, false, err
		}
	}
	return nil, true, nil
}

func holds(st txn.State) int {
	if st.Holds() {
		return 1
	}
	return 0
}

func insertTxn(ctx context.Context, tx *wtx, t *txn.Transaction) error {
	doc, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("create txn %s: encode: %w", t.ID, err)
	}
	_, err = tx.exec(ctx, qInsertTxn,
		t.ID, t.Key, t.Origin, t.Action, string(t.State), holds(t.State), t.EventID, nanos(t.CreatedAt), nanos(t.UpdatedAt), t.Version, doc)
	if err != nil {
		return fmt.Errorf("create txn %s: insert: %w", t.ID, err)
	}
	return nil
}

func insertJournal(ctx context.Context, tx *wtx, e txn.JournalEntry) error {
	_, err := tx.exec(ctx, qInsertJournal,
		e.TxnID, e.Seq, string(e.From), string(e.To), nanos(e.At), e.Detail)
	if err != nil {
		return fmt.Errorf("journal txn %s #%d: %w", e.TxnID, e.Seq, err)
	}
	return nil
}

// UpdateTxn persists a transition with optimistic concurrency.
func (s *Store) UpdateTxn(ctx context.Context, t *txn.Transaction, entries ...txn.JournalEntry) error {
	err := s.write(ctx, func(ctx context.Context, tx *wtx) error { return updateTxn(ctx, tx, t, entries) })
	if err != nil {
		return err
	}
	t.Version += int64(len(entries))
	return nil
}

func updateTxn(ctx context.Context, tx *wtx, t *txn.Transaction, entries []txn.JournalEntry) error {
	next := *t
	next.Version = t.Version + int64(len(entries))
	doc, err := json.Marshal(&next)
	if err != nil {
		return fmt.Errorf("update txn %s: encode: %w", t.ID, err)
	}
	res, err := tx.exec(ctx, qUpdateTxn,
		string(t.State), holds(t.State), nanos(t.UpdatedAt), next.Version, doc, t.ID, t.Version)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE") {
			return fmt.Errorf("update txn %s: key %s is held by another transaction: %w", t.ID, t.Key, store.ErrConflict)
		}
		return fmt.Errorf("update txn %s: %w", t.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("update txn %s at version %d: %w", t.ID, t.Version, store.ErrConflict)
	}
	for _, e := range entries {
		if err := insertJournal(ctx, tx, e); err != nil {
			return err
		}
	}
	return nil
}

func decodeTxns(rows *sql.Rows) ([]*txn.Transaction, error) {
	defer rows.Close()
	var out []*txn.Transaction
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("read transactions: %w", err)
		}
		t := &txn.Transaction{}
		if err := json.Unmarshal(doc, t); err != nil {
			return nil, fmt.Errorf("decode transaction: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// GetTxn returns one transaction.
func (s *Store) GetTxn(ctx context.Context, id string) (*txn.Transaction, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT doc FROM transactions WHERE id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("get txn %s: %w", id, err)
	}
	ts, err := decodeTxns(rows)
	if err != nil {
		return nil, err
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("transaction %s: %w", id, store.ErrNotFound)
	}
	return ts[0], nil
}

// ListTxns lists transactions newest first.
func (s *Store) ListTxns(ctx context.Context, f txn.Filter) ([]*txn.Transaction, error) {
	q := `SELECT doc FROM transactions WHERE 1=1`
	var args []any
	if len(f.States) > 0 {
		q += ` AND state IN (?` + strings.Repeat(",?", len(f.States)-1) + `)`
		for _, st := range f.States {
			args = append(args, string(st))
		}
	}
	if f.EventID != "" {
		q += ` AND event_id = ?`
		args = append(args, f.EventID)
	}
	if f.IncidentID != "" {
		q += ` AND json_extract(doc, '$.incident_id') = ?`
		args = append(args, f.IncidentID)
	}
	if f.Action != "" {
		q += ` AND action = ?`
		args = append(args, f.Action)
	}
	q += ` ORDER BY created_at DESC, id DESC LIMIT ?`
	args = append(args, limit(f.Limit))
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list transactions: %w", err)
	}
	return decodeTxns(rows)
}

// NonTerminal returns every transaction not yet in a terminal state.
func (s *Store) NonTerminal(ctx context.Context) ([]*txn.Transaction, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT doc FROM transactions WHERE holds = 1 ORDER BY created_at`)
	if err != nil {
		return nil, fmt.Errorf("list non-terminal transactions: %w", err)
	}
	return decodeTxns(rows)
}

// Journal returns a transaction's journal in order.
func (s *Store) Journal(ctx context.Context, id string) ([]txn.JournalEntry, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT seq, from_state, to_state, at, detail FROM journal WHERE txn_id = ? ORDER BY seq`, id)
	if err != nil {
		return nil, fmt.Errorf("journal of %s: %w", id, err)
	}
	defer rows.Close()
	var out []txn.JournalEntry
	for rows.Next() {
		var e txn.JournalEntry
		var from, to string
		var at int64
		if err := rows.Scan(&e.Seq, &from, &to, &at, &e.Detail); err != nil {
			return nil, fmt.Errorf("journal of %s: %w", id, err)
		}
		e.TxnID, e.From, e.To, e.At = id, txn.State(from), txn.State(to), time.Unix(0, at).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}
