package firewall

import (
	"context"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quell-ir/quell/internal/testenv/netns"
)

func newTestBackend(t testing.TB, ns *netns.NS, mut func(*Config)) *Backend {
	t.Helper()
	cfg := DefaultConfig()
	if mut != nil {
		mut(&cfg)
	}
	b, err := New(context.Background(), cfg, Options{NetNSFd: ns.FD(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatalf("new backend: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

func TestBackendElementsRoundTrip(t *testing.T) {
	ns := netns.New(t, "qfwbk")
	b := newTestBackend(t, ns, nil)
	ctx := context.Background()
	if err := b.CheckRuleset(ctx); err != nil {
		t.Fatalf("ruleset after setup: %v", err)
	}
	exp := time.Now().Add(time.Hour)
	els := []Element{
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("203.0.113.7/32"), Expires: exp, Owner: "k1"},
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("198.51.100.0/24"), Expires: exp},
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("198.51.100.9/32"), Port: 22, Expires: exp},
		{Kind: KindBlock, Dir: Out, Prefix: netip.MustParsePrefix("192.0.2.0/25"), Port: 443, Expires: exp},
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("2001:db8::/32"), Expires: exp},
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("2001:db9::1/128"), Port: 8080},
		{Kind: KindBlock, Dir: Out, Prefix: netip.MustParsePrefix("240.0.0.0/4")}, // runs to the top of the space
		{Kind: KindAllow, Prefix: netip.MustParsePrefix("10.0.0.0/8"), Expires: exp},
		{Kind: KindIsolate, Expires: exp},
	}
	if err := b.AddElements(ctx, els); err != nil {
		t.Fatalf("add: %v", err)
	}
	got, err := b.Elements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]Element{}
	for _, e := range got {
		byID[e.ID()] = e
	}
	if len(got) != len(els) {
		ids := []string{}
		for _, e := range got {
			ids = append(ids, e.ID())
		}
		sort.Strings(ids)
		t.Fatalf("read back %d elements %v, want %d", len(got), ids, len(els))
	}
	for _, want := range els {
		e, ok := byID[want.ID()]
		if !ok {
			t.Errorf("%s: missing", want.ID())
			continue
		}
		if want.Expires.IsZero() != e.Expires.IsZero() {
			t.Errorf("%s: expires %v, want %v", want.ID(), e.Expires, want.Expires)
		} else if d := e.Expires.Sub(want.Expires); d > 2*time.Second || d < -2*time.Second {
			t.Errorf("%s: expires %v, want %v", want.ID(), e.Expires, want.Expires)
		}
	}
	if byID[els[0].ID()].Owner != "k1" {
		t.Errorf("owner comment lost: %+v", byID[els[0].ID()])
	}
	// Upsert shortens or extends to exactly the new expiry.
	exp2 := time.Now().Add(10 * time.Minute)
	up := els[1]
	up.Expires = exp2
	if err := b.AddElements(ctx, []Element{up}); err != nil {
		t.Fatalf("upsert: %v", err)
	}
	e, ok, err := b.Lookup(ctx, up)
	if err != nil || !ok {
		t.Fatalf("lookup after upsert: %v %v", ok, err)
	}
	if d := e.Expires.Sub(exp2); d > 2*time.Second || d < -2*time.Second {
		t.Fatalf("upsert expiry %v, want %v", e.Expires, exp2)
	}
	// Deleting, twice, leaves the others.
	if err := b.DeleteElements(ctx, els[:2]); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteElements(ctx, els[:2]); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	got, _ = b.Elements(ctx)
	if len(got) != len(els)-2 {
		t.Fatalf("after delete: %d elements, want %d", len(got), len(els)-2)
	}
	// A second backend on the same namespace (a restart) keeps elements
	// and does not duplicate rules.
	b2 := newTestBackend(t, ns, nil)
	if err := b2.CheckRuleset(ctx); err != nil {
		t.Fatalf("ruleset after restart: %v", err)
	}
	got, _ = b2.Elements(ctx)
	if len(got) != len(els)-2 {
		t.Fatalf("after restart: %d elements, want %d", len(got), len(els)-2)
	}
}

// TestBulkAddAllPresent: 10,000 blocks in one batch are all in the kernel,
// read back right away, while the hash set may still be resizing (a plain
// dump then can skip elements; Present must not).
func TestBulkAddAllPresent(t *testing.T) {
	ns := netns.New(t, "qfwbulkt")
	b := newTestBackend(t, ns, nil)
	ctx := context.Background()
	for round := range 3 {
		els := hosts(10000, time.Now().Add(time.Hour))
		if err := b.AddElements(ctx, els); err != nil {
			t.Fatal(err)
		}
		have, err := b.Present(ctx, els)
		if err != nil {
			t.Fatal(err)
		}
		if len(have) != len(els) {
			t.Fatalf("round %d: %d of %d present", round, len(have), len(els))
		}
		if err := b.DeleteElements(ctx, els); err != nil {
			t.Fatal(err)
		}
		if got, _ := b.Elements(ctx); len(got) != 0 {
			t.Fatalf("round %d: %d left after delete", round, len(got))
		}
	}
}
