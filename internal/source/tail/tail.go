// Package tail follows an NDJSON file (Falco's file_output, or any tool
// that appends one JSON document per line), hands each line to a parser and
// the results to a sink, and remembers how far it got.
//
// Delivery is at-least-once with a narrow window: the offset (with the
// file's device and inode) is persisted, atomically and fsynced, only after
// the sink has returned nil for a batch, so nothing is lost across crashes
// or restarts; a crash between the sink's acceptance and the offset write
// re-delivers that one batch, which the store absorbs because events carry
// deterministic fingerprints. Rotation (rename + new file) is followed by
// draining the old file to its end first, even when the rotation happened
// while quell was stopped (the old file is found by inode next to the
// path); truncation (copytruncate) restarts at offset 0.
package tail

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/source/decode"
)

// Config is one followed file.
type Config struct {
	// Path of the NDJSON file.
	Path string `yaml:"path" json:"path"`
	// Source is the parser name (e.g. falco).
	Source string `yaml:"source" json:"source"`
	// StateDir holds the offset files (default: <data dir>/tail, set by the caller).
	StateDir string `yaml:"state_dir,omitempty" json:"state_dir,omitempty"`
	// PollInterval is how often the file is checked for new lines (default 250ms).
	PollInterval time.Duration `yaml:"poll_interval,omitempty" json:"poll_interval,omitempty"`
	// BatchLines is the most lines handed to the sink at once (default 500).
	BatchLines int `yaml:"batch_lines,omitempty" json:"batch_lines,omitempty"`
	// MaxLineBytes bounds one line; longer lines are skipped and counted (default 1 MiB).
	MaxLineBytes int `yaml:"max_line_bytes,omitempty" json:"max_line_bytes,omitempty"`
	// StartAt is where a file with no saved offset is read from:
	// "beginning" (default) or "end".
	StartAt string `yaml:"start_at,omitempty" json:"start_at,omitempty"`
}

// Defaults.
const (
	DefaultPollInterval = 250 * time.Millisecond
	DefaultBatchLines   = 500
	DefaultMaxLineBytes = 1 << 20
)

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.BatchLines == 0 {
		c.BatchLines = DefaultBatchLines
	}
	if c.MaxLineBytes == 0 {
		c.MaxLineBytes = DefaultMaxLineBytes
	}
	if c.StartAt == "" {
		c.StartAt = "beginning"
	}
	return c
}

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.Path == "":
		return errors.New("path: required")
	case !filepath.IsAbs(c.Path):
		return fmt.Errorf("path: must be absolute, got %q", c.Path)
	case c.Source == "":
		return errors.New("source: required")
	case c.StateDir == "":
		return errors.New("state_dir: required")
	case c.PollInterval < 10*time.Millisecond:
		return fmt.Errorf("poll_interval: at least 10ms, got %s", c.PollInterval)
	case c.BatchLines < 1 || c.BatchLines > 100000:
		return fmt.Errorf("batch_lines: must be 1..100000, got %d", c.BatchLines)
	case c.MaxLineBytes < 1024 || c.MaxLineBytes > decode.MaxBodyBytes:
		return fmt.Errorf("max_line_bytes: must be 1024..%d, got %d", decode.MaxBodyBytes, c.MaxLineBytes)
	case c.StartAt != "beginning" && c.StartAt != "end":
		return fmt.Errorf("start_at: must be beginning or end, got %q", c.StartAt)
	}
	return nil
}

// Parser turns one line into events.
type Parser interface {
	Parse(body []byte) (decode.Result, error)
}

// Sink receives the events of a batch of lines. It returns nil only once
// they are durable; an error makes the tailer retry the same batch.
type Sink func(ctx context.Context, res decode.Result) error

// Tailer follows one file.
type Tailer struct {
	cfg       Config
	parser    Parser
	sink      Sink
	log       *slog.Logger
	stateFile string
	buf       []byte
	m         *metrics
}

type metrics struct {
	lines   *prometheus.CounterVec
	offset  prometheus.Gauge
	retries prometheus.Counter
}

// New builds a Tailer. reg may be nil; log may be nil.
func New(cfg Config, p Parser, sink Sink, reg prometheus.Registerer, log *slog.Logger) (*Tailer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tail config: %w", err)
	}
	cfg = cfg.WithDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sum := sha256.Sum256([]byte(cfg.Path))
	t := &Tailer{
		cfg: cfg, parser: p, sink: sink,
		log:       log.With("path", cfg.Path, "source", cfg.Source),
		stateFile: filepath.Join(cfg.StateDir, hex.EncodeToString(sum[:8])+".offset.json"),
		buf:       make([]byte, cfg.MaxLineBytes+1),
	}
	constLabels := prometheus.Labels{"path": cfg.Path}
	t.m = &metrics{
		lines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_tail_lines_total", Help: "Lines read from a followed file, by result (ok, invalid, oversize, empty).", ConstLabels: constLabels,
		}, []string{"result"}),
		offset: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quell_tail_offset_bytes", Help: "Committed offset in the followed file.", ConstLabels: constLabels,
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quell_tail_sink_retries_total", Help: "Sink failures retried.", ConstLabels: constLabels,
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{t.m.lines, t.m.offset, t.m.retries} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register tail metrics: %w", err)
			}
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("tail state dir: %w", err)
	}
	return t, nil
}

// State is what is persisted for a followed file.
type State struct {
	Path   string `json:"path"`
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Offset int64  `json:"offset"`
}

func fileID(fi os.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), st.Ino
	}
	return 0, 0
}

func (t *Tailer) loadState() (State, bool, error) {
	b, err := os.ReadFile(t.stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return State{}, false, nil
	}
	if err != nil {
		return State{}, false, fmt.Errorf("read tail state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil || s.Offset < 0 {
		// A corrupt state file must not wedge intake: start over from the
		// configured position and say so.
		t.log.Error("tail state unreadable, ignoring it", "file", t.stateFile, "err", err)
		return State{}, false, nil
	}
	return s, true, nil
}

// saveState writes the state atomically and durably: temp file, fsync,
// rename, fsync of the directory.
func (t *Tailer) saveState(s State) error {
	tmp, err := os.CreateTemp(t.cfg.StateDir, ".offset-*")
	if err != nil {
		return fmt.Errorf("save tail state: %w", err)
	}
	defer os.Remove(tmp.Name())
	b, _ := json.Marshal(s)
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save tail state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save tail state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save tail state: %w", err)
	}
	if err := os.Rename(tmp.Name(), t.stateFile); err != nil {
		return fmt.Errorf("save tail state: %w", err)
	}
	if d, err := os.Open(t.cfg.StateDir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	t.m.offset.Set(float64(s.Offset))
	return nil
}

// findByInode looks next to the path for the file a saved state points
// at, which rotation renamed while quell was not running.
func (t *Tailer) findByInode(s State) string {
	dir, base := filepath.Split(t.cfg.Path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), base) || e.Name() == base || strings.HasSuffix(e.Name(), ".gz") {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if dev, ino := fileID(fi); dev == s.Dev && ino == s.Ino {
			return filepath.Join(dir, e.Name())
		}
	}
	return ""
}

// Run follows the file until ctx is done. It returns ctx's error, or an
// error that retrying cannot fix (state directory unwritable).
func (t *Tailer) Run(ctx context.Context) error {
	st, have, err := t.loadState()
	if err != nil {
		return err
	}
	// known: this path was followed before, so any file found there now
	// is read from its start; start_at only applies to a first sight.
	known := have && st.Path == t.cfg.Path
	if have && st.Path == t.cfg.Path {
		if fi, err := os.Stat(t.cfg.Path); err != nil || !sameFile(fi, st) {
			// Rotated while stopped: finish the old file first.
			if old := t.findByInode(st); old != "" {
				t.log.Info("draining file rotated while stopped", "old", old, "offset", st.Offset)
				if f, err := os.Open(old); err == nil {
					err = t.follow(ctx, f, st, true)
					f.Close()
					if err != nil {
						return err
					}
				}
			}
			have = false
		}
	} else {
		have = false
	}
	for {
		f, fi, err := t.waitOpen(ctx)
		if err != nil {
			return err
		}
		dev, ino := fileID(fi)
		cur := State{Path: t.cfg.Path, Dev: dev, Ino: ino}
		switch {
		case have && sameFile(fi, st):
			cur.Offset = st.Offset
		case !known && t.cfg.StartAt == "end":
			cur.Offset = fi.Size()
		}
		known = true
		have = false
		err = t.follow(ctx, f, cur, false)
		f.Close()
		if err != nil {
			return err
		}
		// follow returned because the path now names a new file.
	}
}

func sameFile(fi os.FileInfo, s State) bool {
	dev, ino := fileID(fi)
	return dev == s.Dev && ino == s.Ino
}

func (t *Tailer) waitOpen(ctx context.Context) (*os.File, os.FileInfo, error) {
	logged := false
	for {
		f, err := os.Open(t.cfg.Path)
		if err == nil {
			fi, err := f.Stat()
			if err == nil {
				return f, fi, nil
			}
			f.Close()
		}
		if !logged {
			t.log.Info("waiting for file", "err", err)
			logged = true
		}
		if err := sleep(ctx, t.cfg.PollInterval); err != nil {
			return nil, nil, err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// follow reads f from s.Offset. With drain set it returns at EOF (a
// rotated file gets no more writes); otherwise it returns when the path
// names another file (rotation) after reading the old one to its end and
// waiting one more poll interval for writers still holding it open.
func (t *Tailer) follow(ctx context.Context, f *os.File, s State, drain bool) error {
	name := f.Name()
	if fi, err := f.Stat(); err == nil {
		if dev, ino := fileID(fi); dev != s.Dev || ino != s.Ino {
			s.Dev, s.Ino, s.Offset = dev, ino, 0
		}
	}
	if err := t.saveState(s); err != nil {
		return err
	}
	grace := false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("stat %s: %w", name, err)
		}
		if fi.Size() < s.Offset {
			t.log.Warn("file truncated, restarting at 0", "offset", s.Offset, "size", fi.Size())
			s.Offset = 0
			if err := t.saveState(s); err != nil {
				return err
			}
		}
		rotated := false
		if !drain {
			if pfi, err := os.Stat(t.cfg.Path); err != nil || !os.SameFile(pfi, fi) {
				rotated = true
			}
		}
		// A drained file, or a rotated one after its grace period, gets
		// no more writes: a last line without newline is complete.
		final := drain || (rotated && grace)
		lines, consumed, err := t.readLines(f, s.Offset, final)
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		if consumed > 0 {
			if err := t.deliver(ctx, lines); err != nil {
				return err
			}
			s.Offset += consumed
			if err := t.saveState(s); err != nil {
				return err
			}
			continue
		}
		if final {
			return nil
		}
		if rotated {
			grace = true
		}
		if err := sleep(ctx, t.cfg.PollInterval); err != nil {
			return err
		}
	}
}

// readLines reads complete lines from off, at most BatchLines. consumed is
// the number of bytes through the last complete line (or a skipped
// oversize line).
func (t *Tailer) readLines(f *os.File, off int64, final bool) ([][]byte, int64, error) {
	n, err := f.ReadAt(t.buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	data := t.buf[:n]
	var lines [][]byte
	var consumed int64
	for len(lines) < t.cfg.BatchLines {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		lines = append(lines, data[:i])
		consumed += int64(i + 1)
		data = data[i+1:]
	}
	if len(lines) == 0 && len(data) > t.cfg.MaxLineBytes {
		// One line longer than allowed: skip to its end.
		skip, found, err := t.skipLine(f, off)
		if err != nil {
			return nil, 0, err
		}
		if found || final {
			t.m.lines.WithLabelValues("oversize").Inc()
			t.log.Warn("line longer than max_line_bytes skipped", "offset", off, "bytes", skip)
			return nil, skip, nil
		}
		return nil, 0, nil
	}
	if len(lines) == 0 && final && len(data) > 0 {
		lines = append(lines, data)
		consumed = int64(len(data))
	}
	return lines, consumed, nil
}

func (t *Tailer) skipLine(f *os.File, off int64) (int64, bool, error) {
	var total int64
	for {
		n, err := f.ReadAt(t.buf, off+total)
		if i := bytes.IndexByte(t.buf[:n], '\n'); i >= 0 {
			return total + int64(i+1), true, nil
		}
		total += int64(n)
		if errors.Is(err, io.EOF) || n == 0 {
			return total, false, nil
		}
		if err != nil {
			return 0, false, err
		}
	}
}

// deliver parses the lines and hands the batch to the sink, retrying the
// sink with backoff until it succeeds or ctx ends. Invalid lines are
// counted, logged and skipped: one bad line must not stop the file.
func (t *Tailer) deliver(ctx context.Context, lines [][]byte) error {
	var res decode.Result
	for _, l := range lines {
		l = bytes.TrimSpace(l)
		if len(l) == 0 {
			t.m.lines.WithLabelValues("empty").Inc()
			continue
		}
		r, err := t.parser.Parse(l)
		if err != nil {
			t.m.lines.WithLabelValues("invalid").Inc()
			t.log.Warn("invalid line skipped", "err", err)
			continue
		}
		t.m.lines.WithLabelValues("ok").Inc()
		res.Add(r)
	}
	if len(res.Events) == 0 && len(res.Skipped) == 0 {
		return nil
	}
	backoff := 100 * time.Millisecond
	for {
		err := t.sink(ctx, res)
		if err == nil {
			return nil
		}
		t.m.retries.Inc()
		t.log.Warn("sink failed, retrying", "err", err, "backoff", backoff)
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}
