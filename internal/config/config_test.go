package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/txn"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "quell.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsNeedNoFile(t *testing.T) {
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Addr != "127.0.0.1:8080" || c.DataDir != "./quell-data" || c.Mode != txn.ModeAudit || c.Engine.Mode != txn.ModeAudit {
		t.Fatalf("defaults: %+v", c)
	}
	if c.Intake.MaxBodyBytes != 1<<20 || c.Engine.Concurrency != 50 {
		t.Fatalf("defaults: body %d concurrency %d", c.Intake.MaxBodyBytes, c.Engine.Concurrency)
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	cases := []struct {
		name, body string
		want       []string // substrings, one per expected error
	}{
		{"unknown field", "server:\n  adr: x\n", []string{":2: server.adr: unknown field"}},
		{"bad mode", "mode: yolo\n", []string{":1: mode: must be audit or enforce"}},
		{"nested", "engine:\n  retry:\n    max_attempts: -1\n", []string{":3: engine.retry.max_attempts: must be positive"}},
		{"list item", "protected:\n  cidrs:\n    - 10.0.0.0/8\n    - nope\n", []string{":4: protected.cidrs[1]: not a CIDR"}},
		{"two errors", "mode: x\nlog:\n  level: loud\n", []string{":1: mode:", ":3: log.level:"}},
		{"type", "engine:\n  concurrency: many\n", []string{":2: engine.concurrency:"}},
		{"syntax", "server: [\n", []string{"(document)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, tc.body)
			_, err := Load(p, nil)
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("got %v, want config errors", err)
			}
			if len(es) != len(tc.want) {
				t.Fatalf("got %d errors (%v), want %d", len(es), err, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(es[i].Error(), p) || !strings.Contains(es[i].Error(), w) {
					t.Errorf("error %d = %q, want %s...%s", i, es[i].Error(), p, w)
				}
			}
		})
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	p := write(t, "server:\n  addr: 127.0.0.1:9000\nmode: audit\n")
	c, err := Load(p, []string{"QUELL_SERVER_ADDR=127.0.0.1:9999", "QUELL_MODE=enforce", "QUELL_ENGINE_CONCURRENCY=7",
		"QUELL_ENGINE_MAX_DURATION=30s", "QUELL_PLAYBOOKS=a.yaml, b.yaml", "QUELL_REQUIRE_INTEGRATION=1", "PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Addr != "127.0.0.1:9999" || c.Engine.Mode != txn.ModeEnforce || c.Engine.Concurrency != 7 ||
		c.Engine.MaxDuration != 30*time.Second || len(c.Playbooks) != 2 || c.Playbooks[1] != "b.yaml" {
		t.Fatalf("overrides not applied: %+v", c)
	}
	_, err = Load("", []string{"QUELL_ENGINE_CONCURENCY=7", "QUELL_ENGINE_CONCURRENCY=x"})
	if err == nil || !strings.Contains(err.Error(), "QUELL_ENGINE_CONCURENCY: no such setting") || !strings.Contains(err.Error(), "QUELL_ENGINE_CONCURRENCY: not an integer") {
		t.Fatalf("got %v", err)
	}
}

func TestEngineModeIsHonoured(t *testing.T) {
	c, err := Load(write(t, "engine:\n  mode: enforce\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != txn.ModeEnforce || c.Engine.Mode != txn.ModeEnforce {
		t.Fatalf("engine.mode ignored: mode %q engine.mode %q", c.Mode, c.Engine.Mode)
	}
	c, err = Load(write(t, "mode: audit\nengine:\n  mode: enforce\n"), nil)
	if err != nil || c.Engine.Mode != txn.ModeAudit {
		t.Fatalf("top-level mode must win: %q %v", c.Engine.Mode, err)
	}
}
