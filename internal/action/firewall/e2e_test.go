package firewall

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/testenv/netns"
)

// lab is three hosts on one bridge: an attacker (with a second address in
// another /24, for range blocks), a bystander and a victim that runs an
// HTTP server and a line echo server, on IPv4 and IPv6.
type lab struct {
	attacker, bystander, victim *netns.Host
	attacker2                   netip.Addr // the attacker's second IPv4 address
	http4, http6, echo4         string
	backend                     *Backend
	reg                         *action.Registry
}

func newLab(t *testing.T, mut func(*Config)) *lab {
	t.Helper()
	lan := netns.NewLAN(t,
		netns.HostSpec{Name: "atk", Addrs: pfx("10.77.0.1/16", "10.77.1.5/16", "fd77::1/64", "fd77::1:5/64")},
		netns.HostSpec{Name: "bys", Addrs: pfx("10.77.2.2/16", "fd77::2/64")},
		netns.HostSpec{Name: "vic", Addrs: pfx("10.77.0.3/16", "fd77::3/64")},
	)
	l := &lab{attacker: lan.Hosts["atk"], bystander: lan.Hosts["bys"], victim: lan.Hosts["vic"],
		attacker2: netip.MustParseAddr("10.77.1.5")}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
	t.Cleanup(func() { _ = srv.Close() })
	for _, addr := range []string{"10.77.0.3:8080", "[fd77::3]:8080"} {
		ln, err := l.victim.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
	}
	l.http4, l.http6 = "10.77.0.3:8080", "[fd77::3]:8080"
	echo, err := l.victim.Listen("tcp", "10.77.0.3:7007")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	l.echo4 = "10.77.0.3:7007"
	l.backend = newTestBackend(t, l.victim.NS, mut)
	l.reg = action.NewRegistry()
	if err := Register(l.reg, l.backend); err != nil {
		t.Fatal(err)
	}
	return l
}

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// get makes one HTTP request from host (from source address src if
// valid) with a short timeout: a dropped SYN shows as a timeout.
func get(h *netns.Host, src netip.Addr, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	var c net.Conn
	err := h.Do(func() (err error) {
		d := net.Dialer{}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(400 * time.Millisecond))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// echoConn is an open TCP connection to the echo server.
type echoConn struct{ c net.Conn }

func openEcho(t *testing.T, h *netns.Host, addr string) *echoConn {
	t.Helper()
	c, err := h.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("open echo connection: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	e := &echoConn{c: c}
	if err := e.roundTrip(3 * time.Second); err != nil {
		t.Fatalf("echo before block: %v", err)
	}
	return e
}

// roundTrip sends a line and waits for its echo; wait is short when the
// caller expects a failure and generous when it expects success.
func (e *echoConn) roundTrip(wait time.Duration) error {
	_ = e.c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(e.c, "ping\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(e.c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo %q", line)
	}
	return nil
}

func build(t *testing.T, reg *action.Registry, name string, params map[string]string) action.Action {
	t.Helper()
	a, _, err := reg.Build(name, params)
	if err != nil {
		t.Fatalf("build %s: %v", name, err)
	}
	return a
}

// awaitReach polls until get succeeds or the deadline passes.
var noAddr netip.Addr

func awaitReach(h *netns.Host, src netip.Addr, addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		if err = get(h, src, addr); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("still unreachable after %v: %w", within, err)
}

func TestBlockEndToEnd(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	none := netip.Addr{}
	for _, c := range []struct {
		h    *netns.Host
		addr string
	}{{l.attacker, l.http4}, {l.attacker, l.http6}, {l.bystander, l.http4}, {l.bystander, l.http6}} {
		if err := awaitReach(c.h, none, c.addr, 3*time.Second); err != nil {
			t.Fatalf("before the block, %s -> %s: %v", c.h.Name, c.addr, err)
		}
	}
	open := openEcho(t, l.attacker, l.echo4)

	a := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.0.1", "direction": "in"})
	if got, want := a.Key(), "firewall.block/in/10.77.0.1/32"; got != want {
		t.Fatalf("key %q, want %q", got, want)
	}
	before, err := a.Check(ctx)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	eff := action.Effect{TxnID: "t1", ExpiresAt: time.Now().Add(time.Hour)}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if err := get(l.attacker, none, l.http4); err == nil {
		t.Fatal("attacker still reaches the server over IPv4 after the block")
	}
	if err := open.roundTrip(500 * time.Millisecond); err == nil {
		t.Fatal("attacker's open connection still works after the block")
	}
	if err := awaitReach(l.bystander, none, l.http4, 3*time.Second); err != nil {
		t.Fatalf("bystander blocked: %v", err)
	}
	// The attacker's other address and IPv6 are not part of this block.
	if err := awaitReach(l.attacker, l.attacker2, l.http4, 3*time.Second); err != nil {
		t.Fatalf("attacker's second address blocked by a /32 block: %v", err)
	}
	if err := awaitReach(l.attacker, none, l.http6, 3*time.Second); err != nil {
		t.Fatalf("attacker's IPv6 blocked by an IPv4 block: %v", err)
	}
	// The victim trying to reach the attacker leaves a conntrack entry
	// that never sees a reply: the post-check must still pass.
	atkLn, err := l.attacker.Listen("tcp", "10.77.0.1:9191")
	if err != nil {
		t.Fatal(err)
	}
	defer atkLn.Close()
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if c, err := l.victim.Dial(dctx, "tcp", "10.77.0.1:9191"); err == nil {
		_ = c.Close()
		t.Fatal("victim completed a connection to the blocked attacker")
	}
	cancel()
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatalf("verify after the victim tried to reach the attacker: %v", err)
	}
	if err := a.Revert(ctx, before); err != nil {
		t.Fatalf("revert: %v", err)
	}
	if err := awaitReach(l.attacker, none, l.http4, 3*time.Second); err != nil {
		t.Fatalf("after revert: %v", err)
	}
	els, _ := l.backend.Elements(ctx)
	if len(els) != 0 {
		t.Fatalf("revert left %v", els)
	}
}

func TestBlockExpiresByTTL(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	// The attacker has two IPv6 addresses: send from the blocked one.
	atk6 := netip.MustParseAddr("fd77::1")
	a := build(t, l.reg, "firewall.block", map[string]string{"address": "fd77::1", "direction": "both"})
	if _, err := a.Check(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eff := action.Effect{ExpiresAt: start.Add(3 * time.Second)}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := get(l.attacker, atk6, l.http6); err == nil {
		t.Fatal("attacker reaches the server over IPv6 after the block")
	}
	if err := awaitReach(l.bystander, netip.Addr{}, l.http6, 3*time.Second); err != nil {
		t.Fatalf("bystander blocked: %v", err)
	}
	if err := awaitReach(l.attacker, atk6, l.http6, 6*time.Second); err != nil {
		t.Fatalf("after the TTL: %v", err)
	}
	if el := time.Since(start); el < 2500*time.Millisecond {
		t.Fatalf("block lapsed after %v, before its 3s TTL", el)
	}
}

func TestBlockRangeIsEnforcedAsRange(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	a := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.1.0/24"})
	if _, err := a.Check(ctx); err != nil {
		t.Fatal(err)
	}
	eff := action.Effect{ExpiresAt: time.Now().Add(time.Hour)}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	// 10.77.1.5 is not the range's first address: it must be blocked too.
	if err := get(l.attacker, l.attacker2, l.http4); err == nil {
		t.Fatal("10.77.1.5 reaches the server through a 10.77.1.0/24 block")
	}
	if err := awaitReach(l.attacker, netip.MustParseAddr("10.77.0.1"), l.http4, 3*time.Second); err != nil {
		t.Fatalf("10.77.0.1, outside the range, is blocked: %v", err)
	}
	// The same for IPv6: fd77::1:0/112 holds fd77::1:5 but not fd77::1.
	a6 := build(t, l.reg, "firewall.block", map[string]string{"address": "fd77::1:0/112"})
	if _, err := a6.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a6.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a6.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := get(l.attacker, netip.MustParseAddr("fd77::1:5"), l.http6); err == nil {
		t.Fatal("fd77::1:5 reaches the server through a fd77::1:0/112 block")
	}
	if err := awaitReach(l.attacker, netip.MustParseAddr("fd77::1"), l.http6, 3*time.Second); err != nil {
		t.Fatalf("fd77::1, outside the range, is blocked: %v", err)
	}
}

func TestBlockOutDirection(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	// The bystander runs a service the victim uses.
	ln, err := l.bystander.Listen("tcp", "10.77.2.2:9090")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	dial := func(wait time.Duration) error {
		ctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		c, err := l.victim.Dial(ctx, "tcp", "10.77.2.2:9090")
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	if err := dial(3 * time.Second); err != nil {
		t.Fatalf("before: %v", err)
	}
	a := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.2.2", "direction": "out", "ports": "9090"})
	before, err := a.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eff := action.Effect{ExpiresAt: time.Now().Add(time.Hour)}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := dial(400 * time.Millisecond); err == nil {
		t.Fatal("victim still connects out to 10.77.2.2:9090")
	}
	// Only outgoing traffic to that port: the bystander still reaches the victim.
	if err := awaitReach(l.bystander, noAddr, l.http4, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.Revert(ctx, before); err != nil {
		t.Fatal(err)
	}
	if err := dial(3 * time.Second); err != nil {
		t.Fatalf("after revert: %v", err)
	}
}

func TestBlockPorts(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	a := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.0.1", "ports": "8080"})
	if got, want := a.Key(), "firewall.block/in/10.77.0.1/32/ports=8080"; got != want {
		t.Fatalf("key %q, want %q", got, want)
	}
	open := openEcho(t, l.attacker, l.echo4)
	if _, err := a.Check(ctx); err != nil {
		t.Fatal(err)
	}
	eff := action.Effect{ExpiresAt: time.Now().Add(time.Hour)}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := get(l.attacker, netip.Addr{}, l.http4); err == nil {
		t.Fatal("attacker reaches port 8080 through a port block")
	}
	if err := open.roundTrip(3 * time.Second); err != nil {
		t.Fatalf("attacker's connection to port 7007 was cut by a port 8080 block: %v", err)
	}
}

func TestCheckChangesNothing(t *testing.T) {
	// Audit mode never calls Apply; Check alone must leave the kernel as is.
	l := newLab(t, nil)
	ctx := context.Background()
	a := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.0.1"})
	if _, err := a.Check(ctx); err != nil {
		t.Fatal(err)
	}
	els, err := l.backend.Elements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(els) != 0 {
		t.Fatalf("check added %v", els)
	}
	if err := awaitReach(l.attacker, netip.Addr{}, l.http4, 3*time.Second); err != nil {
		t.Fatalf("attacker blocked after a check alone: %v", err)
	}
}

func TestProtectedAddressesAreDenied(t *testing.T) {
	l := newLab(t, func(c *Config) { c.Protected = pfx("10.77.2.0/24") })
	ctx := context.Background()
	for _, addr := range []string{"10.77.0.3", "10.77.0.0/16", "10.77.2.2", "127.0.0.1", "::1"} {
		a := build(t, l.reg, "firewall.block", map[string]string{"address": addr})
		_, err := a.Check(ctx)
		if reason, ok := action.IsDenied(err); !ok {
			t.Errorf("%s: check returned %v, want a denial", addr, err)
		} else if !strings.Contains(reason, "protected") {
			t.Errorf("%s: reason %q", addr, reason)
		}
	}
}

func TestBlastRadius(t *testing.T) {
	// Snapshots off: the flows are made an instant before the check, and a
	// snapshot up to a second old would not hold them yet.
	l := newLab(t, func(c *Config) { c.BlastRadiusMinFlows = 10; c.BlastRadiusSnapshotAge = 0 })
	ctx := context.Background()
	hold := func(h *netns.Host, n int) {
		for range n {
			openEcho(t, h, l.echo4)
		}
	}
	hold(l.attacker, 10)
	hold(l.bystander, 2)
	a := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.0.1"})
	_, err := a.Check(ctx)
	reason, ok := action.IsDenied(err)
	if !ok {
		t.Fatalf("check of a block cutting 10 of 12 flows: %v, want a denial", err)
	}
	if !strings.Contains(reason, "83.3%") || !strings.Contains(reason, "10 of 12") {
		t.Fatalf("reason %q does not carry the measured share", reason)
	}
	b := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.2.2"})
	if _, err := b.Check(ctx); err != nil {
		t.Fatalf("block cutting 2 of 12 flows: %v", err)
	}
	// Below the minimum flow count the share is not meaningful.
	l2 := newLab(t, nil) // default minimum: 20
	for range 3 {
		openEcho(t, l2.attacker, l2.echo4)
	}
	c := build(t, l2.reg, "firewall.block", map[string]string{"address": "10.77.0.1"})
	if _, err := c.Check(ctx); err != nil {
		t.Fatalf("3 flows, all the attacker's, under the minimum: %v", err)
	}
}

func TestIsolate(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	// The bystander plays the management host.
	a := build(t, l.reg, "firewall.isolate", map[string]string{"allow": "10.77.2.2/32,fd77::2/128"})
	open := openEcho(t, l.attacker, l.echo4)
	before, err := a.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eff := action.Effect{ExpiresAt: time.Now().Add(time.Hour)}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{l.http4, l.http6} {
		if err := get(l.attacker, netip.Addr{}, addr); err == nil {
			t.Errorf("attacker reaches %s on an isolated host", addr)
		}
		if err := awaitReach(l.bystander, netip.Addr{}, addr, 3*time.Second); err != nil {
			t.Errorf("management host cannot reach %s: %v", addr, err)
		}
	}
	if err := open.roundTrip(500 * time.Millisecond); err == nil {
		t.Error("open connection survived isolation")
	}
	if err := a.Revert(ctx, before); err != nil {
		t.Fatal(err)
	}
	if err := awaitReach(l.attacker, netip.Addr{}, l.http4, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	// Isolation without any allowlist is refused.
	n := build(t, l.reg, "firewall.isolate", nil)
	if _, err := n.Check(ctx); err == nil {
		t.Fatal("isolation without an allowlist was not refused")
	} else if _, ok := action.IsDenied(err); !ok {
		t.Fatalf("want a denial, got %v", err)
	}
}

func TestRevertKeepsPreexistingAndExtendExtends(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	first := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.0.1"})
	if _, err := first.Check(ctx); err != nil {
		t.Fatal(err)
	}
	exp1 := time.Now().Add(30 * time.Minute)
	if err := first.Apply(ctx, action.Effect{ExpiresAt: exp1}); err != nil {
		t.Fatal(err)
	}
	// A second containment of the same address (say after a crash lost the
	// first's record) sees it existing, extends it, and its revert must
	// neither remove it nor leave it extended.
	second := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.0.1"})
	before, err := second.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exp2 := time.Now().Add(2 * time.Hour)
	if err := second.Apply(ctx, action.Effect{ExpiresAt: exp2}); err != nil {
		t.Fatal(err)
	}
	el := Element{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("10.77.0.1/32")}
	got, ok, err := l.backend.Lookup(ctx, el)
	if err != nil || !ok || absDur(got.Expires.Sub(exp2)) > 2*time.Second {
		t.Fatalf("after re-block: %+v %v %v, want expiry %v", got, ok, err, exp2)
	}
	exp3 := time.Now().Add(3 * time.Hour)
	if err := second.(action.Extender).Extend(ctx, action.Effect{ExpiresAt: exp3}); err != nil {
		t.Fatal(err)
	}
	got, _, _ = l.backend.Lookup(ctx, el)
	if absDur(got.Expires.Sub(exp3)) > 2*time.Second {
		t.Fatalf("after extend: expiry %v, want %v", got.Expires, exp3)
	}
	if err := second.Revert(ctx, before); err != nil {
		t.Fatal(err)
	}
	got, ok, err = l.backend.Lookup(ctx, el)
	if err != nil || !ok {
		t.Fatalf("revert removed a pre-existing element: %v %v", ok, err)
	}
	if absDur(got.Expires.Sub(exp1)) > 2*time.Second {
		t.Fatalf("revert left expiry %v, want the original %v", got.Expires, exp1)
	}
}

func TestReconcile(t *testing.T) {
	ns := netns.New(t, "qfwrc")
	b := newTestBackend(t, ns, nil)
	ctx := context.Background()
	now := time.Now()
	mk := func(p string, exp time.Time) Element {
		return Element{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix(p), Expires: exp, Owner: "k/" + p}
	}
	journal := []Element{
		mk("192.0.2.1/32", now.Add(20*time.Minute)),
		mk("192.0.2.2/32", now.Add(40*time.Minute)),
		mk("198.51.100.0/24", now.Add(time.Hour)),
		mk("192.0.2.9/32", now.Add(-time.Minute)), // lapsed while down
	}
	// The kernel has the first with a wrong (fresh, full) timeout, an
	// element the journal does not know, and lost the rest.
	if err := b.AddElements(ctx, []Element{mk("192.0.2.1/32", now.Add(time.Hour)), mk("203.0.113.50/32", now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	rep, err := b.Reconcile(ctx, journal)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(es []Element) string {
		var s []string
		for _, e := range es {
			s = append(s, e.Prefix.String())
		}
		return strings.Join(s, ",")
	}
	if got := ids(rep.Reapplied); got != "192.0.2.2/32,198.51.100.0/24" {
		t.Errorf("reapplied %s", got)
	}
	if got := ids(rep.Realigned); got != "192.0.2.1/32" {
		t.Errorf("realigned %s", got)
	}
	if got := ids(rep.Unknown); got != "203.0.113.50/32" {
		t.Errorf("unknown %s", got)
	}
	if got := ids(rep.Lapsed); got != "192.0.2.9/32" {
		t.Errorf("lapsed %s", got)
	}
	for _, j := range journal[:3] {
		got, ok, err := b.Lookup(ctx, j)
		if err != nil || !ok {
			t.Fatalf("%s missing after reconcile: %v", j.ID(), err)
		}
		if absDur(got.Expires.Sub(j.Expires)) > 2*time.Second {
			t.Errorf("%s expires %v, journal says %v", j.ID(), got.Expires, j.Expires)
		}
	}
	// Someone flushes the whole ruleset: reconcile rebuilds and re-applies.
	if err := flushRuleset(b); err != nil {
		t.Fatal(err)
	}
	rep, err = b.Reconcile(ctx, journal)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Rebuilt || len(rep.Reapplied) != 3 {
		t.Fatalf("after a flush: rebuilt=%v reapplied=%d, want true and 3", rep.Rebuilt, len(rep.Reapplied))
	}
	if err := b.CheckRuleset(ctx); err != nil {
		t.Fatal(err)
	}
}

func flushRuleset(b *Backend) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nft.FlushRuleset()
	return b.nft.Flush()
}

func TestFailedSetupLeavesNothing(t *testing.T) {
	ns := netns.New(t, "qfwfs")
	b := newTestBackend(t, ns, nil)
	// Replace quell's table by one holding only a set named like one of
	// quell's but with other flags: the kernel refuses to re-add it, so
	// the setup batch fails, and as one transaction it must leave no
	// chain (nor anything else) behind.
	b.mu.Lock()
	b.nft.DelTable(b.table)
	b.nft.AddTable(b.table)
	clash := allSets()[0].nft(b.table)
	clash.HasTimeout = false
	clash.ID = 99
	if err := b.nft.AddSet(clash, nil); err != nil {
		b.mu.Unlock()
		t.Fatal(err)
	}
	err := b.nft.Flush()
	b.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(context.Background(), DefaultConfig(), Options{NetNSFd: ns.FD()}); err == nil {
		t.Fatal("setup over a clashing set succeeded")
	}
	b.mu.Lock()
	chains, err := b.nft.ListChains()
	sets, serr := b.nft.GetSets(b.table)
	b.mu.Unlock()
	if err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if len(chains) != 0 || len(sets) != 1 {
		t.Fatalf("failed setup left %d chains and %d sets, want 0 and the 1 that was there", len(chains), len(sets))
	}
}

// TestVerifyDetectsUncutFlows: the post-check must notice an established
// flow of the blocked peer that is still in the conntrack table.
func TestVerifyDetectsUncutFlows(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	openEcho(t, l.attacker, l.echo4) // established and assured
	a := build(t, l.reg, "firewall.block", map[string]string{"address": "10.77.0.1"})
	eff := action.Effect{ExpiresAt: time.Now().Add(time.Hour)}
	// Put the element in without Apply's flow cut.
	if err := l.backend.AddElements(ctx, a.(Contained).Elements(eff.ExpiresAt)); err != nil {
		t.Fatal(err)
	}
	err := a.Verify(ctx, eff)
	if err == nil || !strings.Contains(err.Error(), "conntrack entries") {
		t.Fatalf("verify with an uncut flow: %v, want remaining conntrack entries", err)
	}
	// Apply cuts it; then the post-check passes.
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
}
