package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/store/sqlite"
)

type child struct {
	cmd  *exec.Cmd
	addr string
}

func startChild(t *testing.T, dir string) *child {
	t.Helper()
	os.Remove(filepath.Join(dir, "addr"))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), serverEnv+"="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(dir, "addr")); err == nil {
			return &child{cmd: cmd, addr: string(b)}
		}
		time.Sleep(10 * time.Millisecond) // polling a file the child writes; there is no event to wait on
	}
	cmd.Process.Kill()
	t.Fatal("server child did not start")
	return nil
}

// TestSIGKILLLosesNoAcceptedEvent posts 10,000 events concurrently, kills
// the server with SIGKILL mid-way, restarts it, and checks that every event
// answered 202 is stored, exactly once; then re-sends everything (as a
// client that got no answer would) and checks the total.
func TestSIGKILLLosesNoAcceptedEvent(t *testing.T) {
	const total, workers, perReq = 10000, 16, 5
	dir := t.TempDir()
	c := startChild(t, dir)

	var acked sync.Map
	var nAcked atomic.Int64
	killAt := int64(total / 3)
	var killOnce sync.Once
	kill := func() {
		killOnce.Do(func() {
			c.cmd.Process.Signal(syscall.SIGKILL)
		})
	}
	body := func(from int) []byte {
		var evs []map[string]any
		for i := from; i < from+perReq && i < total; i++ {
			evs = append(evs, map[string]any{
				"id": fmt.Sprintf("crash-%05d", i), "source": "loadtest", "type": "brute_force", "severity_id": 3,
				"rule": "r", "src_endpoint": map[string]any{"ip": fmt.Sprintf("198.51.%d.%d", i/250, i%250)},
			})
		}
		b, _ := json.Marshal(evs)
		return b
	}
	post := func(addr string, from int) bool {
		resp, err := http.Post("http://"+addr+"/v1/events", "application/json", bytes.NewReader(body(from)))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return false
		}
		var out struct {
			Events []struct{ ID, Outcome string }
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return false
		}
		for _, e := range out.Events {
			acked.Store(e.ID, true)
			if nAcked.Add(1) >= killAt {
				kill()
			}
		}
		return true
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range next {
				post(c.addr, from)
			}
		}()
	}
	for from := 0; from < total; from += perReq {
		next <- from
	}
	close(next)
	wg.Wait()
	kill()
	c.cmd.Wait()
	if n := nAcked.Load(); n < killAt || n >= total {
		t.Fatalf("the kill did not land mid-way: %d of %d acknowledged", n, total)
	}

	// Every acknowledged event is in the store.
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	missing := 0
	acked.Range(func(k, _ any) bool {
		if _, err := st.GetEvent(ctx, k.(string)); err != nil {
			missing++
		}
		return true
	})
	st.Close()
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged events were lost", missing, nAcked.Load())
	}
	t.Logf("%d events acknowledged before SIGKILL; all present", nAcked.Load())

	// Restart and re-send everything: duplicates are recorded once.
	c = startChild(t, dir)
	defer func() { c.cmd.Process.Signal(syscall.SIGTERM); c.cmd.Wait() }()
	var failed atomic.Int32
	next = make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range next {
				if !post(c.addr, from) {
					failed.Add(1)
				}
			}
		}()
	}
	for from := 0; from < total; from += perReq {
		next <- from
	}
	close(next)
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d re-sends failed", failed.Load())
	}
	st, err = sqlite.Open(ctx, filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n, err := st.CountEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != total {
		t.Fatalf("store holds %d events after re-sending, want exactly %d", n, total)
	}
}
