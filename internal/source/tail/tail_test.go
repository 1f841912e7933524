package tail

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/source/decode"
	"github.com/quell-ir/quell/internal/source/falco"
)

func line(n int) string {
	return fmt.Sprintf(`{"output":"alert %d","priority":"Warning","rule":"Terminal shell in container","time":"2024-01-01T00:00:%02dZ","output_fields":{"k8s.ns.name":"default","k8s.pod.name":"web-%d"}}`+"\n", n, n%60, n)
}

const metricsLine = `{"output":"Falco metrics snapshot","priority":"Informational","rule":"Falco internal: metrics snapshot","source":"internal","time":"2025-05-29T22:19:58.960296886Z","output_fields":{}}` + "\n"

type collector struct {
	mu      sync.Mutex
	msgs    []string
	skipped int
	fail    int // fail this many calls first
	calls   int
}

func (c *collector) sink(_ context.Context, r decode.Result) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.fail > 0 {
		c.fail--
		return errors.New("store unavailable")
	}
	for _, e := range r.Events {
		c.msgs = append(c.msgs, e.Message)
	}
	c.skipped += len(r.Skipped)
	return nil
}

func (c *collector) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

// waitFor polls until the collector holds exactly want messages, then
// checks they are the expected ones in order.
func waitFor(t *testing.T, c *collector, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := c.snapshot()
		if len(got) >= len(want) {
			if len(got) != len(want) {
				t.Fatalf("got %d messages %v, want %v", len(got), got, want)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("message %d = %q, want %q (all: %v)", i, got[i], want[i], got)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out: got %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func msgs(ns ...int) []string {
	out := []string{}
	for _, n := range ns {
		out = append(out, fmt.Sprintf("alert %d", n))
	}
	return out
}

type runner struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config, c *collector) *runner {
	t.Helper()
	tl, err := New(cfg, falco.New(nil), c.sink, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- tl.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *runner) stop() {
	r.cancel()
	<-r.done
	r.done <- context.Canceled // keep stop idempotent
}

// waitState waits until the tailer has opened the file and saved its
// first state (its starting offset).
func waitState(t *testing.T, cfg Config) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, _ := filepath.Glob(filepath.Join(cfg.StateDir, "*.offset.json")); len(m) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("tailer never saved its state")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func setup(t *testing.T) (Config, string) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.json")
	return Config{Path: path, Source: "falco", StateDir: filepath.Join(dir, "state"), PollInterval: 20 * time.Millisecond}, path
}

func TestRestartNeitherLosesNorRepeats(t *testing.T) {
	cfg, path := setup(t)
	appendTo(t, path, line(1)+line(2)+metricsLine+line(3))
	c := &collector{}
	r := start(t, cfg, c)
	waitFor(t, c, msgs(1, 2, 3)...)
	if c.skipped != 1 {
		t.Fatalf("skipped %d, want the metrics snapshot", c.skipped)
	}
	r.stop()

	appendTo(t, path, line(4)+line(5))
	c2 := &collector{}
	start(t, cfg, c2)
	waitFor(t, c2, msgs(4, 5)...)
}

func TestPartialLineWaitsForNewline(t *testing.T) {
	cfg, path := setup(t)
	l := line(1)
	appendTo(t, path, l[:40])
	c := &collector{}
	start(t, cfg, c)
	waitState(t, cfg)
	time.Sleep(5 * cfg.PollInterval) // nothing may arrive: the line is incomplete
	if got := c.snapshot(); len(got) != 0 {
		t.Fatalf("partial line delivered: %v", got)
	}
	appendTo(t, path, l[40:])
	waitFor(t, c, msgs(1)...)
}

func TestRotationWhileRunning(t *testing.T) {
	cfg, path := setup(t)
	appendTo(t, path, line(1))
	c := &collector{}
	start(t, cfg, c)
	waitFor(t, c, msgs(1)...)
	// logrotate "create": a last write to the old file, rename, new file.
	appendTo(t, path, line(2))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, line(3))
	waitFor(t, c, msgs(1, 2, 3)...)
}

func TestRotationWhileStopped(t *testing.T) {
	cfg, path := setup(t)
	appendTo(t, path, line(1))
	c := &collector{}
	r := start(t, cfg, c)
	waitFor(t, c, msgs(1)...)
	r.stop()
	appendTo(t, path, line(2))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, line(3))
	c2 := &collector{}
	start(t, cfg, c2)
	waitFor(t, c2, msgs(2, 3)...)
}

func TestTruncation(t *testing.T) {
	cfg, path := setup(t)
	appendTo(t, path, line(1)+line(2))
	c := &collector{}
	start(t, cfg, c)
	waitFor(t, c, msgs(1, 2)...)
	if err := os.Truncate(path, 0); err != nil { // copytruncate
		t.Fatal(err)
	}
	appendTo(t, path, line(3))
	waitFor(t, c, msgs(1, 2, 3)...)
}

func TestSinkFailureIsRetriedWithoutLoss(t *testing.T) {
	cfg, path := setup(t)
	appendTo(t, path, line(1)+line(2))
	c := &collector{fail: 2}
	start(t, cfg, c)
	waitFor(t, c, msgs(1, 2)...)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls != 3 {
		t.Fatalf("sink called %d times, want 2 failures + 1 success", c.calls)
	}
}

func TestInvalidAndOversizeLinesAreSkipped(t *testing.T) {
	cfg, path := setup(t)
	cfg.MaxLineBytes = 1024
	big := `{"rule":"x","output":"` + string(make([]byte, 0)) + fmt.Sprintf("%02000d", 0) + `"}` + "\n"
	appendTo(t, path, line(1)+"{not json\n"+big+"\n"+line(2))
	c := &collector{}
	start(t, cfg, c)
	waitFor(t, c, msgs(1, 2)...)
}

func TestStartAtEnd(t *testing.T) {
	cfg, path := setup(t)
	cfg.StartAt = "end"
	appendTo(t, path, line(1))
	c := &collector{}
	start(t, cfg, c)
	waitState(t, cfg) // the starting offset (the end) is recorded
	appendTo(t, path, line(2))
	waitFor(t, c, msgs(2)...)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Source: "falco", StateDir: "/tmp"}, "path"},
		{Config{Path: "rel.json", Source: "falco", StateDir: "/tmp"}, "path"},
		{Config{Path: "/x.json", StateDir: "/tmp"}, "source"},
		{Config{Path: "/x.json", Source: "falco"}, "state_dir"},
		{Config{Path: "/x.json", Source: "falco", StateDir: "/tmp", StartAt: "middle"}, "start_at"},
		{Config{Path: "/x.json", Source: "falco", StateDir: "/tmp", BatchLines: -1}, "batch_lines"},
	} {
		err := tc.cfg.Validate()
		if err == nil || len(err.Error()) < len(tc.want) || err.Error()[:len(tc.want)] != tc.want {
			t.Errorf("%+v: error %v, want it to start with %q", tc.cfg, err, tc.want)
		}
	}
}

// A file rotated while quell was stopped is read from its start even with
// start_at: end, which only applies to a path never seen before.
func TestStartAtEndAppliesOnlyToFirstSight(t *testing.T) {
	cfg, path := setup(t)
	cfg.StartAt = "end"
	appendTo(t, path, line(1))
	c := &collector{}
	r := start(t, cfg, c)
	waitState(t, cfg)
	appendTo(t, path, line(2))
	waitFor(t, c, msgs(2)...)
	r.stop()
	if err := os.Remove(path); err != nil { // rotated away and compressed: gone
		t.Fatal(err)
	}
	appendTo(t, path, line(3))
	c2 := &collector{}
	start(t, cfg, c2)
	waitFor(t, c2, msgs(3)...)
}
