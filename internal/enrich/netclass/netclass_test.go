package netclass

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/txn"
)

var _ txn.Protector = (*Table)(nil)

func TestIsInternal(t *testing.T) {
	tb, err := New(Config{InternalCIDRs: []string{"100.64.0.0/10", "203.0.113.7"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ip   string
		want bool
	}{
		{"10.1.2.3", true}, {"172.16.0.1", true}, {"172.32.0.1", false}, {"192.168.255.255", true},
		{"127.0.0.1", true}, {"169.254.169.254", true}, {"::1", true}, {"fe80::1", true},
		{"fd12:3456::1", true}, {"fc00::1", true}, {"2001:db8::1", false}, {"8.8.8.8", false},
		{"100.64.1.1", true}, {"100.128.0.1", false}, {"203.0.113.7", true}, {"203.0.113.8", false},
		{"::ffff:10.0.0.1", true}, {"fe80::1%eth0", true},
	} {
		if got := tb.IsInternal(netip.MustParseAddr(c.ip)); got != c.want {
			t.Errorf("IsInternal(%s) = %v, want %v", c.ip, got, c.want)
		}
	}
	if tb.IsInternal(netip.Addr{}) {
		t.Error("invalid address classified internal")
	}
	nb, _ := New(Config{NoBuiltinInternal: true})
	if nb.IsInternal(netip.MustParseAddr("10.0.0.1")) {
		t.Error("no_builtin_internal: 10.0.0.1 still internal")
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{Config{InternalCIDRs: []string{"10.0.0.0/33"}}, "internal_cidrs[0]"},
		{Config{Protected: []ProtectedPrefix{{CIDR: "1.2.3.4"}, {CIDR: "lb"}}}, "protected[1].cidr"},
		{Config{ProtectedResources: []ProtectedResource{{Value: "x"}}}, "protected_resources[0].kind"},
		{Config{ProtectedResources: []ProtectedResource{{Kind: "namespace"}}}, "protected_resources[0].value"},
		{Config{ProtectedResources: []ProtectedResource{{Kind: "ip", Value: "1.2.3.4"}}}, "protected_resources[0].kind"},
	} {
		err := c.cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("Validate(%+v) = %v, want error naming %s", c.cfg, err, c.field)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
}

func TestProtectedTargets(t *testing.T) {
	tb, err := New(Config{
		Protected: []ProtectedPrefix{
			{CIDR: "10.0.0.1", Reason: "edge load balancer"},
			{CIDR: "10.53.0.0/24", Reason: "DNS"},
			{CIDR: "2001:db8:1::/48", Reason: "NAT64"},
		},
		ProtectedResources: []ProtectedResource{{Kind: "namespace", Value: "kube-system"}, {Kind: "node", Value: "cp-1", Reason: "control plane"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		kind, value string
		want        bool
		reason      string
	}{
		{"ip", "10.0.0.1", true, "edge load balancer"},
		{"ip", "::ffff:10.0.0.1", true, "edge load balancer"},
		{"ip", "10.0.0.2", false, ""},
		{"ip", "10.53.0.200", true, "DNS"},
		{"ip", "2001:db8:1:ffff::1", true, "NAT64"},
		{"ip", "2001:db8:2::1", false, ""},
		{"cidr", "10.0.0.0/30", true, "edge load balancer"},
		{"cidr", "10.0.0.0/8", true, "edge load balancer"},
		{"cidr", "10.53.0.128/25", true, "DNS"},
		{"cidr", "10.0.0.4/30", false, ""},
		{"cidr", "2001:db8::/32", true, "NAT64"},
		{"cidr", "2001:db8:1:2::/64", true, "NAT64"},
		{"cidr", "0.0.0.0/0", true, ""},
		{"namespace", "kube-system", true, "kube-system"},
		{"pod", "kube-system/coredns-1", true, "kube-system"},
		{"service_account", "kube-system/default", true, "kube-system"},
		{"pod", "default/web", false, ""},
		{"namespace", "default", false, ""},
		{"node", "cp-1", true, "control plane"},
		{"node", "worker-1", false, ""},
		{"role", "kube-system/admin", false, ""}, // AWS role kind: not namespaced
		{"deployment", "kube-system/coredns", true, "kube-system"},
	} {
		r, ok, err := tb.Protected(ctx, action.Target{Kind: c.kind, Value: c.value})
		if err != nil {
			t.Errorf("%s:%s: %v", c.kind, c.value, err)
			continue
		}
		if ok != c.want || !strings.Contains(r, c.reason) {
			t.Errorf("Protected(%s:%s) = %q, %v; want %v with reason containing %q", c.kind, c.value, r, ok, c.want, c.reason)
		}
	}
	for _, bad := range []action.Target{{Kind: "ip", Value: "10.0.0.1/32"}, {Kind: "ip", Value: "lb.example"}, {Kind: "cidr", Value: "10.0.0.0/40"}} {
		if _, _, err := tb.Protected(ctx, bad); !errors.Is(err, ErrBadTarget) {
			t.Errorf("Protected(%s) err = %v, want ErrBadTarget", bad, err)
		}
	}
}

func TestAddReplace(t *testing.T) {
	tb, _ := New(Config{Protected: []ProtectedPrefix{{CIDR: "192.0.2.1", Reason: "cfg"}}})
	host := netip.MustParsePrefix("198.51.100.10/32")
	if err := tb.Add("host", Entry{Prefix: host, Reason: "engine host"}); err != nil {
		t.Fatal(err)
	}
	if r, ok := tb.ProtectedAddr(host.Addr()); !ok || r != "engine host" {
		t.Fatalf("after Add: %q %v", r, ok)
	}
	// Replacing the host group drops the old address and keeps config's.
	gw := netip.MustParsePrefix("198.51.100.1/32")
	if err := tb.Replace("host", []Entry{{Prefix: gw, Reason: "default gateway"}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := tb.ProtectedAddr(host.Addr()); ok {
		t.Error("replaced host address still protected")
	}
	if _, ok := tb.ProtectedAddr(gw.Addr()); !ok {
		t.Error("gateway not protected after Replace")
	}
	if _, ok := tb.ProtectedAddr(netip.MustParseAddr("192.0.2.1")); !ok {
		t.Error("config group lost by Replace of another group")
	}
	if err := tb.Replace("host", nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := tb.ProtectedAddr(gw.Addr()); ok {
		t.Error("Replace(nil) kept the group")
	}
	if err := tb.ReplaceResources("kube", []ProtectedResource{{Kind: "pod", Value: "quell/quell-0"}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := tb.ProtectedName("pod", "quell/quell-0"); !ok {
		t.Error("ReplaceResources: pod not protected")
	}
	if err := tb.Add("x", Entry{}); err == nil {
		t.Error("Add accepted an invalid prefix")
	}
}

// refEntry is the brute-force reference: a list scanned linearly.
type refEntry struct{ p netip.Prefix }

func randAddr(r *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		var b [16]byte
		// Keep addresses in a few /16s so that random prefixes and
		// addresses actually collide.
		b[0], b[1] = 0x20, byte(r.IntN(4))
		for i := 2; i < 16; i++ {
			b[i] = byte(r.UintN(256))
		}
		return netip.AddrFrom16(b)
	}
	var b [4]byte
	b[0] = 10 + byte(r.IntN(3))
	for i := 1; i < 4; i++ {
		b[i] = byte(r.UintN(256))
	}
	return netip.AddrFrom4(b)
}

func randPrefix(r *rand.Rand, v6 bool) netip.Prefix {
	a := randAddr(r, v6)
	var bits int
	if v6 {
		bits = 8 + r.IntN(121)
	} else {
		bits = 6 + r.IntN(27)
	}
	return netip.PrefixFrom(a, bits).Masked()
}

// TestProtectorProperty compares the table with a linear scan over random
// prefixes, addresses and CIDR targets, IPv4 and IPv6: every address inside
// a protected prefix is flagged, no other is, and a CIDR target is flagged
// exactly when it overlaps a protected prefix.
func TestProtectorProperty(t *testing.T) {
	ctx := context.Background()
	for seed := uint64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewPCG(seed, seed*7919))
		var cfg Config
		var ref []refEntry
		n := 1 + r.IntN(200)
		for i := 0; i < n; i++ {
			p := randPrefix(r, r.IntN(2) == 0)
			cfg.Protected = append(cfg.Protected, ProtectedPrefix{CIDR: p.String(), Reason: fmt.Sprint("r", i)})
			ref = append(ref, refEntry{p})
		}
		tb, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Some entries arrive through Add, as the engine's do.
		for i := 0; i < 20; i++ {
			p := randPrefix(r, r.IntN(2) == 0)
			if err := tb.Add("host", Entry{Prefix: p, Reason: "host"}); err != nil {
				t.Fatal(err)
			}
			ref = append(ref, refEntry{p})
		}
		for i := 0; i < 2000; i++ {
			v6 := r.IntN(2) == 0
			var a netip.Addr
			if r.IntN(2) == 0 { // half the probes inside a protected prefix
				p := ref[r.IntN(len(ref))].p
				a = randInside(r, p)
			} else {
				a = randAddr(r, v6)
			}
			want := false
			for _, e := range ref {
				if e.p.Contains(a) {
					want = true
					break
				}
			}
			_, got, err := tb.Protected(ctx, action.Target{Kind: "ip", Value: a.String()})
			if err != nil || got != want {
				t.Fatalf("seed %d: ip %s protected=%v err=%v, reference says %v", seed, a, got, err, want)
			}
			q := randPrefix(r, v6)
			wantQ := false
			for _, e := range ref {
				if e.p.Overlaps(q) {
					wantQ = true
					break
				}
			}
			_, gotQ, err := tb.Protected(ctx, action.Target{Kind: "cidr", Value: q.String()})
			if err != nil || gotQ != wantQ {
				t.Fatalf("seed %d: cidr %s protected=%v err=%v, reference says %v", seed, q, gotQ, err, wantQ)
			}
		}
	}
}

// randInside returns a random address inside p.
func randInside(r *rand.Rand, p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		if r.IntN(2) == 1 {
			b[i/8] |= 1 << (7 - i%8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func BenchmarkProtectedAddr1M(b *testing.B) {
	var cfg Config
	tb, _ := New(cfg)
	r := rand.New(rand.NewPCG(1, 2))
	entries := make([]Entry, 0, 1_000_000)
	for len(entries) < 1_000_000 {
		entries = append(entries, Entry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(r.UintN(224)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))}), 32), Reason: "x"})
	}
	if err := tb.Replace("bulk", entries); err != nil {
		b.Fatal(err)
	}
	probes := make([]netip.Addr, 4096)
	for i := range probes {
		probes[i] = netip.AddrFrom4([4]byte{byte(r.UintN(224)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))})
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tb.ProtectedAddr(probes[i%len(probes)])
	}
}
