package firewall

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quell-ir/quell/internal/action"
)

// specRegistry registers the definitions with a nil backend: building an
// action needs no kernel, only Check/Apply/... do.
func specRegistry(t *testing.T) *action.Registry {
	t.Helper()
	reg := action.NewRegistry()
	if err := Register(reg, &Backend{cfg: DefaultConfig()}); err != nil {
		t.Fatal(err)
	}
	return reg
}

func TestBlockKeysAndTargets(t *testing.T) {
	reg := specRegistry(t)
	for _, c := range []struct {
		params  map[string]string
		key     string
		target  string
		elems   int
		wantErr string
	}{
		{map[string]string{"address": "203.0.113.7"}, "firewall.block/in/203.0.113.7/32", "ip:203.0.113.7", 1, ""},
		{map[string]string{"address": "203.0.113.7", "direction": "in", "ports": "22"}, "firewall.block/in/203.0.113.7/32/ports=22", "ip:203.0.113.7", 1, ""},
		{map[string]string{"address": "203.0.113.7/32", "ports": "80, 22,22"}, "firewall.block/in/203.0.113.7/32/ports=22,80", "ip:203.0.113.7", 2, ""},
		{map[string]string{"address": "198.51.100.77/24", "direction": "both"}, "firewall.block/both/198.51.100.0/24", "cidr:198.51.100.0/24", 2, ""},
		{map[string]string{"address": "2001:DB8:0:0::1", "direction": "out"}, "firewall.block/out/2001:db8::1/128", "ip:2001:db8::1", 1, ""},
		{map[string]string{"address": "::ffff:192.0.2.1"}, "firewall.block/in/192.0.2.1/32", "ip:192.0.2.1", 1, ""},
		{map[string]string{"address": "203.0.113.7; rm -rf /"}, "", "", 0, "not a CIDR"},
		{map[string]string{"address": "$(reboot)"}, "", "", 0, "not an address or CIDR"},
		{map[string]string{"address": "203.0.113.7", "direction": "sideways"}, "", "", 0, "not one of"},
		{map[string]string{"address": "203.0.113.7", "ports": "0"}, "", "", 0, "not a port"},
		{map[string]string{"address": "203.0.113.7", "extra": "x"}, "", "", 0, "unknown"},
	} {
		a, _, err := reg.Build("firewall.block", c.params)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%v: error %v, want %q", c.params, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", c.params, err)
			continue
		}
		if a.Key() != c.key {
			t.Errorf("%v: key %q, want %q", c.params, a.Key(), c.key)
		}
		if got := a.Targets()[0].String(); got != c.target {
			t.Errorf("%v: target %q, want %q", c.params, got, c.target)
		}
		if n := len(a.(*elemAction).els); n != c.elems {
			t.Errorf("%v: %d elements, want %d", c.params, n, c.elems)
		}
	}
}

func TestIsolateKeyAndAllowlist(t *testing.T) {
	b := &Backend{cfg: DefaultConfig()}
	b.cfg.IsolateAllow = []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}
	b.cfg.Peers = []netip.Prefix{netip.MustParsePrefix("10.30.0.5/32")}
	a, err := NewIsolate(b, []netip.Prefix{netip.MustParsePrefix("10.20.5.0/24"), netip.MustParsePrefix("192.0.2.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.Key(), "firewall.isolate/allow=10.20.0.0/16,192.0.2.0/24"; got != want {
		t.Fatalf("key %q, want %q", got, want)
	}
	var ids []string
	for _, e := range a.(*elemAction).els {
		ids = append(ids, e.ID())
	}
	// 10.20.5.0/24 is inside 10.20.0.0/16: merged away (interval sets
	// refuse overlaps); peers and IPv6 link-local are added.
	want := "isolate allow/10.20.0.0/16 allow/10.30.0.5/32 allow/192.0.2.0/24 allow/fe80::/10 allow/ff02::/16"
	if got := strings.Join(ids, " "); got != want {
		t.Fatalf("elements %s\nwant %s", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Table = "" }, "firewall.table"},
		{func(c *Config) { c.Table = "a b" }, "firewall.table"},
		{func(c *Config) { c.Priority = 1000 }, "firewall.priority"},
		{func(c *Config) { c.BlastRadiusMaxShare = 0 }, "firewall.blast_radius_max_share"},
		{func(c *Config) { c.BlastRadiusMaxShare = 1.5 }, "firewall.blast_radius_max_share"},
		{func(c *Config) { c.BlastRadiusMinFlows = -1 }, "firewall.blast_radius_min_flows"},
		{func(c *Config) { c.Protected = []netip.Prefix{{}} }, "firewall.protected[0]"},
		{func(c *Config) { c.BatchMaxElements = 0 }, "firewall.batch_max_elements"},
		{func(c *Config) { c.BatchLinger = -time.Second }, "firewall.batch_linger"},
		{func(c *Config) { c.VerifyTolerance = 0 }, "firewall.verify_tolerance"},
	} {
		cfg := DefaultConfig()
		c.mut(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want one naming %s", err, c.want)
		}
	}
}

func TestElementEncodingRoundTrip(t *testing.T) {
	now := time.Now()
	for _, e := range []Element{
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("203.0.113.7/32")},
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("203.0.113.7/32"), Port: 22},
		{Kind: KindBlock, Dir: Out, Prefix: netip.MustParsePrefix("198.51.100.0/24"), Port: 443},
		{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("2001:db8::/48"), Port: 8080},
		{Kind: KindBlock, Dir: Out, Prefix: netip.MustParsePrefix("2001:db8::1/128")},
	} {
		var spec setSpec
		for _, s := range allSets() {
			if s.name == e.setName() {
				spec = s
			}
		}
		if spec.name == "" {
			t.Fatalf("%s: no set %s", e.ID(), e.setName())
		}
		kel := e.kernelElements(time.Minute)
		for i := range kel {
			if n := len(kel[i].Key); n != spec.keyLen() {
				t.Errorf("%s: key of %d bytes, set wants %d", e.ID(), n, spec.keyLen())
			}
			kel[i].Expires = kel[i].Timeout
		}
		got, err := decodeElements(spec, kel, now)
		if err != nil || len(got) != 1 || got[0].ID() != e.ID() {
			t.Errorf("%s: decoded %v, %v", e.ID(), got, err)
		}
	}
	// Interval sets: start and end, decoded from kernel order (descending).
	spec := setSpec{name: "in4_net", interval: true}
	a := Element{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("10.1.0.0/16")}
	b := Element{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("10.2.0.0/15")}
	top := Element{Kind: KindBlock, Dir: In, Prefix: netip.MustParsePrefix("240.0.0.0/4")}
	var raw []nftables.SetElement
	for _, e := range []Element{top, b, a} {
		k := e.kernelElements(0)
		for i := len(k) - 1; i >= 0; i-- {
			raw = append(raw, k[i])
		}
	}
	got, err := decodeElements(spec, raw, now)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range got {
		ids = append(ids, e.Prefix.String())
	}
	if s := strings.Join(ids, " "); s != "10.1.0.0/16 10.2.0.0/15 240.0.0.0/4" {
		t.Fatalf("decoded %s", s)
	}
}

func TestRangePrefixAndMerge(t *testing.T) {
	for _, c := range []struct{ first, last, want string }{
		{"10.0.0.0", "10.0.0.255", "10.0.0.0/24"},
		{"10.0.0.7", "10.0.0.7", "10.0.0.7/32"},
		{"0.0.0.0", "255.255.255.255", "0.0.0.0/0"},
		{"10.0.0.1", "10.0.0.2", ""},
		{"2001:db8::", "2001:db8::ffff", "2001:db8::/112"},
	} {
		p, ok := rangePrefix(netip.MustParseAddr(c.first), netip.MustParseAddr(c.last))
		if got := map[bool]string{true: p.String(), false: ""}[ok]; got != c.want {
			t.Errorf("%s-%s: %q, want %q", c.first, c.last, got, c.want)
		}
	}
	got := mergePrefixes([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32")})
	if len(got) != 2 || got[0].String() != "10.0.0.0/8" || got[1].String() != "192.0.2.1/32" {
		t.Fatalf("merge: %v", got)
	}
}

func TestTimeoutFor(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		exp  time.Time
		want time.Duration
		ok   bool
	}{
		{time.Time{}, 0, true},
		{now.Add(90 * time.Minute), 90 * time.Minute, true},
		{now.Add(1500 * time.Microsecond), 2 * time.Millisecond, true},
		{now, 0, false},
		{now.Add(-time.Hour), 0, false},
	} {
		d, ok := timeoutFor(c.exp, now)
		if d != c.want || ok != c.ok {
			t.Errorf("%v: %v %v, want %v %v", c.exp, d, ok, c.want, c.ok)
		}
	}
}

func TestMetricsRegisterOncePerRegisterer(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := newMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := newMetrics(reg); err == nil {
		t.Fatal("second registration on one registerer succeeded")
	}
	if _, err := newMetrics(nil); err != nil {
		t.Fatal(err)
	}
}
