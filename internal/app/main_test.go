package app_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
)

// serverEnv makes the test binary act as `quell serve` so tests can SIGKILL
// a real server process. Its value is the data directory; the listening
// address is written to <dir>/addr.
const serverEnv = "QUELL_TEST_SERVER_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(serverEnv); dir != "" {
		os.Exit(serveChild(dir))
	}
	os.Exit(m.Run())
}

func serveChild(dir string) int {
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Server.Addr = "127.0.0.1:0"
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	a, err := app.New(ctx, cfg, app.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := a.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	tmp := filepath.Join(dir, "addr.tmp")
	os.WriteFile(tmp, []byte(a.Addr()), 0o644)
	os.Rename(tmp, filepath.Join(dir, "addr"))
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Stop(sctx); err != nil {
		return 1
	}
	return 0
}
