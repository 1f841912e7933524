package firewall

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/quell-ir/quell/internal/action"
	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
)

// rtnl opens a route-netlink handle in the backend's namespace.
func (b *Backend) rtnl() (*netlink.Handle, error) {
	if b.nsFD > 0 {
		return netlink.NewHandleAt(vns.NsHandle(b.nsFD))
	}
	return netlink.NewHandle()
}

// protectedReason says why p may not be blocked, or "" if it may. A prefix
// is protected when it overlaps (contains or is inside) anything protected:
// blocking 10.0.0.0/8 would block the gateway 10.0.0.1 too.
func (b *Backend) protectedReason(ctx context.Context, p netip.Prefix) (string, error) {
	_, span := b.tracer.Start(ctx, "firewall.protected_check")
	defer span.End()
	a := p.Addr()
	if a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() || p.Bits() == 0 {
		return "not a unicast host or network address", nil
	}
	for _, q := range b.cfg.Protected {
		if q.Overlaps(p) {
			return fmt.Sprintf("overlaps protected prefix %s (firewall.protected)", q), nil
		}
	}
	for _, q := range b.cfg.Peers {
		if q.Overlaps(p) {
			return fmt.Sprintf("overlaps engine peer %s (firewall.peers)", q), nil
		}
	}
	h, err := b.rtnl()
	if err != nil {
		return "", fmt.Errorf("route netlink: %w", err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("list local addresses: %w", err)
	}
	for _, la := range addrs {
		if ip, ok := netip.AddrFromSlice(la.IP); ok && p.Contains(ip.Unmap()) {
			return fmt.Sprintf("contains local address %s of this host", ip.Unmap()), nil
		}
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Gw == nil || (r.Dst != nil && !isDefault(r.Dst.String())) {
			continue
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok && p.Contains(gw.Unmap()) {
			return fmt.Sprintf("contains default gateway %s", gw.Unmap()), nil
		}
	}
	return "", nil
}

func isDefault(dst string) bool { return dst == "0.0.0.0/0" || dst == "::/0" }

// overlapCheck refuses a range that overlaps a different active range in
// the same set: interval sets hold disjoint ranges only. The same range is
// fine (that is an extension), and so is a host inside a range (hosts live
// in their own sets).
func (b *Backend) overlapCheck(els []Element) error {
	bySet := map[string][]Element{}
	for _, e := range els {
		if e.Kind == KindIsolate || (e.Kind == KindBlock && e.isHost()) {
			continue
		}
		bySet[e.setName()] = append(bySet[e.setName()], e)
	}
	for _, s := range allSets() {
		want := bySet[s.name]
		if len(want) == 0 {
			continue
		}
		have, err := b.setElements(s)
		if err != nil {
			return err
		}
		for _, w := range want {
			for _, h := range have {
				if h.Port == w.Port && h.Prefix != w.Prefix && h.Prefix.Overlaps(w.Prefix) {
					return action.Deny("%s overlaps the active entry %s in set %s; revert that one first or block the same range", w.Prefix, h.Prefix, s.name)
				}
			}
		}
	}
	return nil
}
