package firewall_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/testenv/netns"
	"github.com/quell-ir/quell/internal/txn"
)

// TestAuditRestartKeepsManagingBlocks: blocks made in enforce mode stay
// managed when quell restarts in audit mode: recovery verifies them in the
// kernel, and a revert still removes them (no revert_failed because the
// firewall was left disconnected).
func TestAuditRestartKeepsManagingBlocks(t *testing.T) {
	lan := netns.NewLAN(t, netns.HostSpec{Name: "rvic", Addrs: []netip.Prefix{netip.MustParsePrefix("10.76.0.3/24")}})
	vic := lan.Hosts["rvic"]
	dir := t.TempDir()
	pb := filepath.Join(dir, "pb.yaml")
	os.WriteFile(pb, []byte(`apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: block}
spec:
  match: 'event.type == "brute_force"'
  mode: enforce
  steps:
    - action: firewall.block
      params: {address: '{{ .event.src_endpoint.ip }}'}
      ttl: 1h
`), 0o644)
	run := func(mode txn.Mode, playbooks []string) *app.App {
		cfg := config.Default()
		cfg.DataDir = filepath.Join(dir, "data")
		cfg.Server.Addr = "127.0.0.1:0"
		cfg.Mode, cfg.Engine.Mode = mode, mode
		cfg.Playbooks = playbooks
		cfg.Firewall.NetNS = vic.Path()
		a, err := app.New(context.Background(), cfg, app.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	a := run(txn.ModeEnforce, []string{pb})
	ev := &event.Event{ID: "restart-1", Source: "t", Type: "brute_force", SeverityID: 4, SrcEndpoint: &event.Endpoint{IP: "203.0.113.77"}}
	if err := a.Committer.Prepare([]*event.Event{ev}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Committer.Append(ctx, []*event.Event{ev}); err != nil {
		t.Fatal(err)
	}
	var id string
	for ctx.Err() == nil && id == "" {
		ts, _ := a.Store.ListTxns(ctx, txn.Filter{EventID: ev.ID})
		if len(ts) == 1 {
			id = ts[0].ID
		}
		time.Sleep(5 * time.Millisecond) // the pipeline decides asynchronously
	}
	if tr, err := a.Engine.WaitResting(ctx, id); err != nil || tr.State != txn.Active {
		t.Fatalf("block: %v %v", tr, err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	b := run(txn.ModeAudit, nil)
	defer b.Stop(context.Background())
	tr, err := b.Engine.WaitResting(ctx, id)
	if err != nil || tr.State != txn.Active {
		t.Fatalf("after an audit-mode restart: %v %v, want still active", tr, err)
	}
	if _, err := b.Engine.Revert(ctx, id, "e2e", "done"); err != nil {
		t.Fatal(err)
	}
	if tr, _ := b.Engine.Get(ctx, id); tr.State != txn.Reverted {
		t.Fatalf("revert after restart: %s (%s)", tr.State, tr.Error)
	}
}
