package asset

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

const inventoryYAML = `
assets:
  - cidr: 10.20.0.0/16
    owner: platform
    environment: production
    criticality: high
  - cidr: 10.20.5.10
    owner: payments
    service: checkout-db
    environment: production
    criticality: critical
    labels: {namespace: payments}
  - cidr: fd00:1::/64
    owner: lab
`

func TestStaticYAMLAndCSV(t *testing.T) {
	dir := t.TempDir()
	y := filepath.Join(dir, "assets.yaml")
	os.WriteFile(y, []byte(inventoryYAML), 0o644)
	c := filepath.Join(dir, "assets.csv")
	os.WriteFile(c, []byte("cidr,owner,service,environment,criticality,team_channel\n10.20.5.10,payments,checkout-db,production,critical,#pay\n10.20.0.0/16,platform,,production,high,\n"), 0o644)
	for _, path := range []string{y, c} {
		s, err := Open(path, discard())
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		got, ok := s.Lookup(ctx, netip.MustParseAddr("10.20.5.10"))
		if !ok || got.Owner != "payments" || got.Service != "checkout-db" || got.Criticality != "critical" {
			t.Errorf("%s: 10.20.5.10 = %+v, %v", path, got, ok)
		}
		got, ok = s.Lookup(ctx, netip.MustParseAddr("10.20.9.9"))
		if !ok || got.Owner != "platform" || got.Criticality != "high" {
			t.Errorf("%s: 10.20.9.9 = %+v, %v", path, got, ok)
		}
		if _, ok := s.Lookup(ctx, netip.MustParseAddr("10.21.0.1")); ok {
			t.Errorf("%s: 10.21.0.1 found", path)
		}
	}
	s, _ := Open(c, discard())
	got, _ := s.Lookup(context.Background(), netip.MustParseAddr("10.20.5.10"))
	if !reflect.DeepEqual(got.Labels, map[string]string{"team_channel": "#pay"}) {
		t.Errorf("csv labels = %v", got.Labels)
	}
}

func TestBadInventory(t *testing.T) {
	for name, body := range map[string]string{
		"a.yaml": "assets:\n  - cidr: 10.0.0.0/33\n    owner: x\n",
		"b.yaml": "assets:\n  - cidr: 10.0.0.1\n    ownr: typo\n",
		"c.csv":  "owner\nx\n",
	} {
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, []byte(body), 0o644)
		if _, err := Open(p, discard()); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if err := (Config{Path: "x.json"}).Validate(); err == nil || !strings.HasPrefix(err.Error(), "path:") {
		t.Errorf("Validate = %v", err)
	}
}

func TestWatchReload(t *testing.T) {
	p := filepath.Join(t.TempDir(), "assets.yaml")
	os.WriteFile(p, []byte("assets:\n  - {cidr: 10.0.0.1, owner: a}\n"), 0o644)
	s, err := Open(p, discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Watch(ctx, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	addr := netip.MustParseAddr("10.0.0.1")
	deadline := time.Now().Add(10 * time.Second)
	for {
		os.WriteFile(p, []byte("assets:\n  - {cidr: 10.0.0.1, owner: b}\n"), 0o644)
		if i, _ := s.Lookup(ctx, addr); i.Owner == "b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("inventory not reloaded")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type fixed map[netip.Addr]Info

func (f fixed) Lookup(_ context.Context, a netip.Addr) (Info, bool) { i, ok := f[a]; return i, ok }

func TestChain(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1")
	c := Chain{fixed{}, fixed{a: {Owner: "second"}}, fixed{a: {Owner: "third"}}}
	if i, ok := c.Lookup(context.Background(), a); !ok || i.Owner != "second" {
		t.Fatalf("chain = %+v %v", i, ok)
	}
}
