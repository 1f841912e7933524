package netns

import (
	"fmt"
	"net/netip"
	"testing"
)

// Host is a namespace attached to a LAN, with its addresses on eth0.
type Host struct {
	*NS
	Addrs []netip.Prefix
}

// Addr4 returns the host's first IPv4 address (the zero Addr if none).
func (h *Host) Addr4() netip.Addr {
	for _, p := range h.Addrs {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// Addr6 returns the host's first IPv6 address (the zero Addr if none).
func (h *Host) Addr6() netip.Addr {
	for _, p := range h.Addrs {
		if p.Addr().Is6() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// LAN is a set of hosts, each in its own namespace, joined by veth pairs to
// one bridge in a separate switch namespace: one L2 segment, like hosts on
// a rack switch.
type LAN struct {
	Switch *NS
	Hosts  map[string]*Host
}

// HostSpec names one host and its addresses.
type HostSpec struct {
	Name  string
	Addrs []netip.Prefix
}

// NewLAN builds the LAN and tears it down when the test ends. Each host's
// interface is eth0; names are short because interface names are limited to
// 15 bytes.
func NewLAN(t testing.TB, hosts ...HostSpec) *LAN {
	t.Helper()
	lan := &LAN{Switch: New(t, "qsw"), Hosts: map[string]*Host{}}
	if err := lan.Switch.AddBridge("br0"); err != nil {
		t.Fatal(err)
	}
	for i, hs := range hosts {
		ns := New(t, "q"+hs.Name)
		port := fmt.Sprintf("p%d", i)
		if err := Veth(lan.Switch, port, netip.Prefix{}, ns, "eth0", netip.Prefix{}); err != nil {
			t.Fatal(err)
		}
		if err := lan.Switch.Enslave(port, "br0"); err != nil {
			t.Fatal(err)
		}
		for _, a := range hs.Addrs {
			if err := ns.LinkUp("eth0", a); err != nil {
				t.Fatal(err)
			}
		}
		lan.Hosts[hs.Name] = &Host{NS: ns, Addrs: hs.Addrs}
	}
	return lan
}
