package app

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/quell-ir/quell/internal/enrich/netclass"
)

// hostProtected lists what the engine protects implicitly: its own
// addresses and the default gateways. Blocking either cuts quell off from
// the network it is defending.
func hostProtected() ([]netclass.Entry, error) {
	var out []netclass.Entry
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		out = append(out, netclass.Entry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Reason: "an address of the quell host"})
	}
	gws, err := defaultGateways()
	if err != nil {
		return nil, err
	}
	for _, gw := range gws {
		out = append(out, netclass.Entry{Prefix: netip.PrefixFrom(gw, gw.BitLen()), Reason: "the quell host's default gateway"})
	}
	return out, nil
}

// defaultGateways reads the kernel's routing tables from /proc.
func defaultGateways() ([]netip.Addr, error) {
	var out []netip.Addr
	if f, err := os.Open("/proc/net/route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 || fs[1] != "00000000" || fs[2] == "00000000" {
				continue
			}
			b, err := hex.DecodeString(fs[2])
			if err != nil || len(b) != 4 {
				continue
			}
			// /proc/net/route is little-endian.
			out = append(out, netip.AddrFrom4([4]byte{b[3], b[2], b[1], b[0]}))
		}
		f.Close()
	} else if !os.IsNotExist(err) {
		return nil, fmt.Errorf("read routes: %w", err)
	}
	if f, err := os.Open("/proc/net/ipv6_route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 5 || fs[1] != "00" || fs[4] == strings.Repeat("0", 32) {
				continue
			}
			b, err := hex.DecodeString(fs[4])
			if err != nil || len(b) != 16 {
				continue
			}
			out = append(out, netip.AddrFrom16([16]byte(b)))
		}
		f.Close()
	}
	return out, nil
}
