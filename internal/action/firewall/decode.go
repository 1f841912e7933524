package firewall

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// decodeElements turns one set's kernel elements back into Elements.
func decodeElements(s setSpec, raw []nftables.SetElement, now time.Time) ([]Element, error) {
	expiry := func(k nftables.SetElement) time.Time {
		if k.Timeout == 0 {
			return time.Time{}
		}
		return now.Add(k.Expires)
	}
	if s.nfproto {
		// Isolation is on while either family's entry is; report the
		// later expiry (both are written together).
		var out []Element
		for _, k := range raw {
			if len(k.Key) != 1 || (k.Key[0] != unix.NFPROTO_IPV4 && k.Key[0] != unix.NFPROTO_IPV6) {
				continue
			}
			e := Element{Kind: KindIsolate, Expires: expiry(k), Owner: k.Comment}
			if len(out) == 0 {
				out = append(out, e)
			} else if out[0].Expires.Before(e.Expires) && !out[0].Expires.IsZero() {
				out[0].Expires = e.Expires
			}
		}
		return out, nil
	}
	kind, dir := KindBlock, Direction("")
	if len(s.name) >= 5 && s.name[:5] == "allow" {
		kind = KindAllow
	} else if s.name[:2] == "in" {
		dir = In
	} else {
		dir = Out
	}
	alen := 4
	if s.v6 {
		alen = 16
	}
	split := func(key []byte) (netip.Addr, uint16, error) {
		want := alen
		if s.port {
			want += 4
		}
		if len(key) != want {
			return netip.Addr{}, 0, fmt.Errorf("set %s: key of %d bytes, want %d", s.name, len(key), want)
		}
		a, _ := netip.AddrFromSlice(key[:alen])
		var port uint16
		if s.port {
			port = binary.BigEndian.Uint16(key[alen:])
		}
		return a, port, nil
	}
	var out []Element
	if !s.interval || s.port {
		for _, k := range raw {
			first, port, err := split(k.Key)
			if err != nil {
				return nil, err
			}
			last := first
			if len(k.KeyEnd) > 0 {
				if last, _, err = split(k.KeyEnd); err != nil {
					return nil, err
				}
			}
			p, ok := rangePrefix(first, last)
			if !ok {
				return nil, fmt.Errorf("set %s: %s-%s is not a prefix", s.name, first, last)
			}
			out = append(out, Element{Kind: kind, Dir: dir, Prefix: p, Port: port, Expires: expiry(k), Owner: k.Comment})
		}
		return out, nil
	}
	// rbtree interval set: starts and ends, ordered by key.
	sorted := append([]nftables.SetElement(nil), raw...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if c := bytes.Compare(sorted[i].Key, sorted[j].Key); c != 0 {
			return c < 0
		}
		return sorted[i].IntervalEnd && !sorted[j].IntervalEnd // an end sorts before a start at the same key
	})
	for i, k := range sorted {
		if k.IntervalEnd {
			continue
		}
		first, _, err := split(k.Key)
		if err != nil {
			return nil, err
		}
		var last netip.Addr
		if i+1 < len(sorted) && sorted[i+1].IntervalEnd {
			end, _, err := split(sorted[i+1].Key)
			if err != nil {
				return nil, err
			}
			last = end.Prev()
		} else if first.Is4() {
			last = netip.MustParseAddr("255.255.255.255")
		} else {
			last = netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
		}
		p, ok := rangePrefix(first, last)
		if !ok {
			return nil, fmt.Errorf("set %s: %s-%s is not a prefix", s.name, first, last)
		}
		out = append(out, Element{Kind: kind, Dir: dir, Prefix: p, Expires: expiry(k), Owner: k.Comment})
	}
	return out, nil
}

// rangePrefix returns the prefix that spans exactly first..last.
func rangePrefix(first, last netip.Addr) (netip.Prefix, bool) {
	for bits := first.BitLen(); bits >= 0; bits-- {
		p := netip.PrefixFrom(first, bits)
		if p.Masked().Addr() != first {
			return netip.Prefix{}, false
		}
		if lastAddr(p) == last {
			return p, true
		}
		if lastAddr(p).Compare(last) > 0 {
			return netip.Prefix{}, false
		}
	}
	return netip.Prefix{}, false
}
