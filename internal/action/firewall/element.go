package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Kind says which of quell's sets an Element belongs to.
type Kind string

const (
	// KindBlock drops traffic from (in) or to (out) Prefix, optionally only
	// to/from Port.
	KindBlock Kind = "block"
	// KindIsolate switches isolation on (both families): everything not in
	// an allow element is dropped.
	KindIsolate Kind = "isolate"
	// KindAllow is a prefix isolation lets through.
	KindAllow Kind = "allow"
)

// Direction of a block.
type Direction string

const (
	In  Direction = "in"  // packets whose source is the prefix
	Out Direction = "out" // packets whose destination is the prefix
)

// Element is one logical entry in quell's table: the unit that blocks are
// made of, that Reconcile compares with the journal, and that the batch API
// takes. One Element may be several kernel elements (an interval is a start
// and an end; isolation is one per family).
type Element struct {
	Kind    Kind         `json:"kind"`
	Dir     Direction    `json:"dir,omitempty"`
	Prefix  netip.Prefix `json:"prefix,omitzero"`
	Port    uint16       `json:"port,omitempty"` // 0: every port
	Expires time.Time    `json:"expires,omitzero"`
	// Owner is recorded in the kernel element's comment (the action key),
	// so that `nft list table inet quell` says who added it.
	Owner string `json:"owner,omitempty"`
}

// ID identifies the kernel entry, independent of expiry and owner.
func (e Element) ID() string {
	switch e.Kind {
	case KindBlock:
		s := "block/" + string(e.Dir) + "/" + e.Prefix.String()
		if e.Port != 0 {
			s += "/" + strconv.Itoa(int(e.Port))
		}
		return s
	case KindIsolate:
		return "isolate"
	default:
		return string(e.Kind) + "/" + e.Prefix.String()
	}
}

func (e Element) String() string { return e.ID() }

func (e Element) validate() error {
	switch e.Kind {
	case KindBlock:
		if e.Dir != In && e.Dir != Out {
			return fmt.Errorf("element %s: direction %q", e.ID(), e.Dir)
		}
		fallthrough
	case KindAllow:
		if !e.Prefix.IsValid() || e.Prefix.Addr().Is4In6() || e.Prefix.Addr().Zone() != "" {
			return fmt.Errorf("element %s: invalid prefix", e.ID())
		}
		if e.Prefix != e.Prefix.Masked() {
			return fmt.Errorf("element %s: prefix has host bits set", e.ID())
		}
	case KindIsolate:
	default:
		return fmt.Errorf("element: unknown kind %q", e.Kind)
	}
	return nil
}

func (e Element) isHost() bool { return e.Prefix.Bits() == e.Prefix.Addr().BitLen() }

// setName names the kernel set that holds e. Hosts go into hash sets,
// ranges into interval sets: an interval set rejects overlapping ranges, and
// keeping hosts apart means a host inside a blocked range never conflicts.
func (e Element) setName() string {
	fam := "4"
	if e.Prefix.Addr().Is6() {
		fam = "6"
	}
	switch e.Kind {
	case KindIsolate:
		return "isolate"
	case KindAllow:
		return "allow" + fam
	}
	name := string(e.Dir) + fam
	if e.isHost() {
		name += "_addr"
	} else {
		name += "_net"
	}
	if e.Port != 0 {
		name += "_port"
	}
	return name
}

// setSpec describes one of quell's kernel sets.
type setSpec struct {
	name     string
	v6       bool
	interval bool
	port     bool
	nfproto  bool // the isolate switch: keyed by meta nfproto
}

func (s setSpec) keyLen() int {
	switch {
	case s.nfproto:
		return 1
	case s.port && s.v6:
		return 20
	case s.port:
		return 8
	case s.v6:
		return 16
	}
	return 4
}

func (s setSpec) nft(t *nftables.Table) *nftables.Set {
	set := &nftables.Set{Table: t, Name: s.name, HasTimeout: true, Interval: s.interval}
	addr := nftables.TypeIPAddr
	if s.v6 {
		addr = nftables.TypeIP6Addr
	}
	switch {
	case s.nfproto:
		set.KeyType = nftables.TypeNFProto
	case s.port:
		set.KeyType = nftables.MustConcatSetType(addr, nftables.TypeInetService)
		set.Concatenation = true
	default:
		set.KeyType = addr
	}
	return set
}

// allSets is every set quell's table holds.
func allSets() []setSpec {
	var out []setSpec
	for _, dir := range []Direction{In, Out} {
		for _, v6 := range []bool{false, true} {
			fam := "4"
			if v6 {
				fam = "6"
			}
			for _, net := range []bool{false, true} {
				for _, port := range []bool{false, true} {
					name := string(dir) + fam
					if net {
						name += "_net"
					} else {
						name += "_addr"
					}
					if port {
						name += "_port"
					}
					out = append(out, setSpec{name: name, v6: v6, interval: net, port: port})
				}
			}
		}
	}
	out = append(out,
		setSpec{name: "allow4", interval: true},
		setSpec{name: "allow6", v6: true, interval: true},
		setSpec{name: "isolate", nfproto: true},
	)
	return out
}

// kernelElements encodes e as the kernel elements of its set. timeout 0
// means permanent.
func (e Element) kernelElements(timeout time.Duration) []nftables.SetElement {
	if e.Kind == KindIsolate {
		return []nftables.SetElement{
			{Key: []byte{unix.NFPROTO_IPV4}, Timeout: timeout, Comment: e.Owner},
			{Key: []byte{unix.NFPROTO_IPV6}, Timeout: timeout, Comment: e.Owner},
		}
	}
	first := e.Prefix.Addr()
	last := lastAddr(e.Prefix)
	port := func(b []byte) []byte {
		if e.Port == 0 {
			return b
		}
		var p [4]byte // each concatenated field is padded to 4 bytes
		binary.BigEndian.PutUint16(p[:], e.Port)
		return append(b, p[:]...)
	}
	switch {
	case e.isHost() && e.Kind == KindBlock: // allow sets are always interval sets
		return []nftables.SetElement{{Key: port(first.AsSlice()), Timeout: timeout, Comment: e.Owner}}
	case e.Port != 0:
		// Concatenated ranges (pipapo): one element with its end key.
		return []nftables.SetElement{{Key: port(first.AsSlice()), KeyEnd: port(last.AsSlice()), Timeout: timeout, Comment: e.Owner}}
	default:
		// A plain interval set (rbtree) takes a start element and an end
		// element holding the first address past the range; a range that
		// runs to the top of the address space has no end element.
		out := []nftables.SetElement{{Key: first.AsSlice(), Timeout: timeout, Comment: e.Owner}}
		if next := last.Next(); next.IsValid() {
			// The kernel refuses a timeout on an end element: it follows its start.
			out = append(out, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
		return out
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// timeoutFor converts an expiry into the element timeout to program now:
// always the time left until the journal's expiry, never a fresh full TTL.
// ok is false when the expiry has already passed.
func timeoutFor(expires, now time.Time) (d time.Duration, ok bool) {
	if expires.IsZero() {
		return 0, true
	}
	d = expires.Sub(now).Round(time.Millisecond)
	if d < time.Millisecond {
		return 0, false
	}
	return d, true
}
