package txn_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/action/builtin"
	"github.com/quell-ir/quell/internal/store/sqlite"
	"github.com/quell-ir/quell/internal/txn"
)

// The crash test runs the engine in a child process (this test binary,
// re-executed) and SIGKILLs it at a chosen point. The action is the real
// exec action running a shell script that keeps a marker file (the
// "containment") and appends every apply and revert to a log, so the
// parent can prove that nothing ran twice and nothing was orphaned.

const crashEnv = "QUELL_TXN_CRASH_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(crashEnv); spec != "" {
		os.Exit(crashChild(spec))
	}
	os.Exit(m.Run())
}

const script = `#!/bin/sh
set -e
dir="$1"; op="$2"
case "$op" in
  check)  test -f "$dir/marker" ;;
  apply)  echo apply >> "$dir/ops.log"; touch "$dir/marker"
          if [ -f "$dir/die-after-apply" ]; then rm "$dir/die-after-apply"; kill -9 "$PPID"; sleep 5; fi ;;
  verify) test -f "$dir/marker" ;;
  revert) echo revert >> "$dir/ops.log"; rm -f "$dir/marker"
          if [ -f "$dir/die-after-revert" ]; then rm "$dir/die-after-revert"; kill -9 "$PPID"; sleep 5; fi ;;
esac
`

func crashEngine(ctx context.Context, dir string, log *slog.Logger) (*txn.Engine, *sqlite.Store, error) {
	st, err := sqlite.Open(ctx, filepath.Join(dir, "data"))
	if err != nil {
		return nil, nil, err
	}
	reg := action.NewRegistry()
	sh := filepath.Join(dir, "contain.sh")
	argv := func(op string) []string { return []string{"/bin/sh", sh, "{dir}", op} }
	cfg := builtin.DefaultConfig()
	cfg.Exec.Commands = map[string]builtin.Command{"contain": {
		Params: map[string]builtin.ParamConfig{"dir": {Type: action.TypeString, Required: true}},
		Check:  argv("check"), Apply: argv("apply"), Verify: argv("verify"), Revert: argv("revert"),
		Timeout: 10 * time.Second,
	}}
	if err := builtin.Register(reg, cfg, log, nil, nil); err != nil {
		return nil, nil, err
	}
	e, err := txn.New(txn.Config{Mode: txn.ModeEnforce}, txn.Deps{Store: st, Registry: reg, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	return e, st, nil
}

// crashChild: spec is "dir|state|op", op = apply or revert. It kills
// itself right after the given state is journaled.
func crashChild(spec string) int {
	parts := strings.Split(spec, "|")
	dir, target, op := parts[0], txn.State(parts[1]), parts[2]
	ctx := context.Background()
	e, _, err := crashEngine(ctx, dir, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	e.Observe(func(t txn.Transaction, _ txn.State) {
		if t.State == target {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	})
	if err := e.Start(ctx); err != nil {
		return 2
	}
	tr, err := e.Submit(ctx, txn.Request{Action: "exec.contain", Params: map[string]string{"dir": dir}, Mode: txn.ModeEnforce, TTL: time.Hour, Origin: "crash"})
	if err != nil {
		return 2
	}
	if _, err := e.WaitResting(ctx, tr.ID); err != nil {
		return 2
	}
	if op == "revert" {
		if _, err := e.Revert(ctx, tr.ID, "tester", "crash test"); err != nil {
			return 2
		}
	}
	time.Sleep(10 * time.Second) // only reached if the kill point never came; the parent fails on exit 3
	return 3
}

func TestCrashAtEveryStateRecovers(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	cases := []struct {
		name   string
		state  txn.State
		op     string
		marker string // a file that makes the script kill the engine after its effect
		final  txn.State
	}{
		// planned is journaled in the same commit as the guards' verdict,
		// so "guarded" is the first state a crash can follow.
		{"guarded", txn.Guarded, "apply", "", txn.Active},
		{"prechecked", txn.Prechecked, "apply", "", txn.Active},
		{"applying-before-effect", txn.Applying, "apply", "", txn.Active},
		{"applying-after-effect", "never", "apply", "die-after-apply", txn.Active},
		{"applied", txn.Applied, "apply", "", txn.Active},
		{"verified", txn.Verified, "apply", "", txn.Active},
		{"active", txn.Active, "apply", "", txn.Active},
		{"reverting-before-effect", txn.Reverting, "revert", "", txn.Reverted},
		{"reverting-after-effect", "never", "revert", "die-after-revert", txn.Reverted},
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "contain.sh"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.marker != "" {
				os.WriteFile(filepath.Join(dir, tc.marker), nil, 0o644)
			}
			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), crashEnv+"="+dir+"|"+string(tc.state)+"|"+tc.op)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed (err %v): %s", err, out)
			}

			// Restart: recovery must bring the transaction to the expected
			// resting state without running any effect twice.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e, st, err := crashEngine(ctx, dir, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := e.Start(ctx); err != nil {
				t.Fatal(err)
			}
			defer e.Stop(ctx)
			ts, err := st.ListTxns(ctx, txn.Filter{})
			if err != nil || len(ts) != 1 {
				t.Fatalf("want exactly one transaction, got %d (%v)", len(ts), err)
			}
			got := awaitState(t, e, ts[0].ID, tc.final)
			ops, _ := os.ReadFile(filepath.Join(dir, "ops.log"))
			applies := strings.Count(string(ops), "apply")
			reverts := strings.Count(string(ops), "revert")
			_, markerErr := os.Stat(filepath.Join(dir, "marker"))
			switch tc.final {
			case txn.Active:
				if applies != 1 || reverts != 0 || markerErr != nil {
					t.Fatalf("after recovery: applies=%d reverts=%d marker=%v (want 1, 0, present); state %s", applies, reverts, markerErr == nil, got.State)
				}
			case txn.Reverted:
				if applies != 1 || markerErr == nil {
					t.Fatalf("after recovery: applies=%d marker present=%v (want 1, absent)", applies, markerErr == nil)
				}
			}
		})
	}
}
