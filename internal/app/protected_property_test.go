package app_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/txn"
)

// recorder is a containment action that only records what it was asked to
// apply: the property below is about what reaches Apply.
type recorder struct {
	mu      sync.Mutex
	applied map[string]bool
}

type recAction struct {
	r    *recorder
	addr netip.Addr
}

func (a recAction) Key() string { return "test.contain/" + a.addr.String() }
func (a recAction) Targets() []action.Target {
	return []action.Target{{Kind: "ip", Value: a.addr.String()}}
}
func (a recAction) Check(context.Context) (action.Before, error) { return action.Before(`{}`), nil }
func (a recAction) Verify(context.Context, action.Effect) error  { return nil }
func (a recAction) Revert(context.Context, action.Before) error  { return nil }
func (a recAction) Apply(context.Context, action.Effect) error {
	a.r.mu.Lock()
	a.r.applied[a.addr.String()] = true
	a.r.mu.Unlock()
	return nil
}

// TestProtectedAddressNeverContained: thousands of randomized events, some
// from protected infrastructure (configured prefixes, IPv4 and IPv6), go
// through the whole pipeline in enforce mode with a playbook that contains
// every source. No protected address may ever reach Apply, and every
// unprotected one must (so the test cannot pass by containing nothing).
func TestProtectedAddressNeverContained(t *testing.T) {
	protected := []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.64/26"),
		netip.MustParsePrefix("2001:db8:aa::/48"), netip.MustParsePrefix("192.0.2.10/32"),
	}
	dir := t.TempDir()
	pb := filepath.Join(dir, "contain.yaml")
	os.WriteFile(pb, []byte(`apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: contain-everything}
spec:
  match: 'has(event.src_endpoint.ip)'
  mode: enforce
  steps:
    - action: test.contain
      params: {address: '{{ .event.src_endpoint.ip }}'}
      ttl: 1h
`), 0o644)
	rec := &recorder{applied: map[string]bool{}}
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Server.Addr = "127.0.0.1:0"
	cfg.Mode, cfg.Engine.Mode = txn.ModeEnforce, txn.ModeEnforce
	cfg.Playbooks = []string{pb}
	for _, p := range protected {
		cfg.Protected.CIDRs = append(cfg.Protected.CIDRs, p.String())
	}
	a, err := app.New(context.Background(), cfg, app.Options{Register: func(reg *action.Registry) error {
		return reg.Register(action.Definition{
			Spec: action.Spec{Name: "test.contain", Provider: "test", Reversible: true,
				Params: []action.Param{{Name: "address", Type: action.TypeIP, Required: true}}},
			New: func(v action.Values) (action.Action, error) { return recAction{r: rec, addr: v.IP("address")}, nil },
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Stop(ctx)

	rng := rand.New(rand.NewPCG(42, 7))
	randomIn := func(p netip.Prefix) netip.Addr {
		b := p.Addr().AsSlice()
		for i := range b {
			bit := i * 8
			if bit >= p.Bits() {
				b[i] = byte(rng.IntN(256))
			} else if bit+8 > p.Bits() {
				keep := p.Bits() - bit
				mask := byte(0xff << (8 - keep))
				b[i] = b[i]&mask | byte(rng.IntN(256))&^mask
			}
		}
		a, _ := netip.AddrFromSlice(b)
		return a
	}
	isProtected := func(addr netip.Addr) bool {
		for _, p := range protected {
			if p.Contains(addr) {
				return true
			}
		}
		// The host's own addresses and default gateway are protected
		// implicitly (on CI the gateway sits in 192.0.2.0/24).
		_, implicit := a.Protected.ProtectedAddr(addr)
		return implicit
	}
	const n = 3000
	want := map[string]bool{}
	for i := 0; i < n; i++ {
		var addr netip.Addr
		switch rng.IntN(4) {
		case 0: // inside a protected prefix
			addr = randomIn(protected[rng.IntN(len(protected))])
		case 1: // a random IPv6 address near the protected one
			addr = randomIn(netip.MustParsePrefix("2001:db8::/32"))
		default: // a random IPv4 address from the documentation and test ranges
			addr = randomIn([]netip.Prefix{netip.MustParsePrefix("198.51.0.0/16"), netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("192.0.2.0/24")}[rng.IntN(3)])
		}
		ev := &event.Event{ID: fmt.Sprintf("prop-%d", i), Source: "prop", Type: "brute_force", SeverityID: 4,
			SrcEndpoint: &event.Endpoint{IP: addr.String()}}
		if err := a.Committer.Prepare([]*event.Event{ev}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Committer.Append(ctx, []*event.Event{ev}); err != nil {
			t.Fatal(err)
		}
		if !isProtected(addr) {
			want[addr.String()] = true
		}
	}
	// Transactions run in the engine's own goroutines: let them settle.
	deadline := time.Now().Add(60 * time.Second)
	for {
		rec.mu.Lock()
		got := len(rec.applied)
		rec.mu.Unlock()
		if got >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for addr := range rec.applied {
		if isProtected(netip.MustParseAddr(addr)) {
			t.Errorf("protected address %s was contained", addr)
		}
	}
	for addr := range want {
		if !rec.applied[addr] {
			ts, _ := a.Store.ListTxns(ctx, txn.Filter{Action: "test.contain", Limit: 1000})
			for _, tr := range ts {
				if tr.Params["address"] == addr {
					t.Logf("txn %s state %s reason %q", tr.ID, tr.State, tr.Reason)
				}
			}
			t.Errorf("unprotected address %s was not contained", addr)
		}
	}
	t.Logf("%d events, %d distinct unprotected sources contained, none protected", n, len(rec.applied))
}
