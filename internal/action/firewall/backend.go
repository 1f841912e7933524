package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/conntrack"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sys/unix"
)

// Options are the injected dependencies of a Backend.
type Options struct {
	Logger         *slog.Logger
	Registerer     prometheus.Registerer // nil: metrics are not registered
	TracerProvider trace.TracerProvider  // nil: no spans
	// NetNSFd, when positive, targets this namespace instead of Config.NetNS
	// (tests hand in the fd of a namespace they created).
	NetNSFd int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Backend owns quell's nftables table and the conntrack connection in one
// network namespace. It is safe for concurrent use.
type Backend struct {
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	m      *metrics
	now    func() time.Time
	nsFD   int
	ownFD  *os.File // the namespace file when opened from Config.NetNS

	mu    sync.Mutex // serializes use of nft: a lasting socket mixes replies otherwise
	nft   *nftables.Conn
	ct    *conntrack.Conn
	ctMu  sync.Mutex // one conntrack dump at a time on the shared socket
	table *nftables.Table
	sets  map[string]*nftables.Set

	batch *batcher
	flows *flowSnapshots

	getMu   sync.Mutex    // guards getConn
	getConn *netlink.Conn // single-element lookups (getelem.go)
}

// chains quell installs: one base chain per hook.
var chainHooks = []struct {
	name string
	hook *nftables.ChainHook
}{
	{"input", nftables.ChainHookInput},
	{"forward", nftables.ChainHookForward},
	{"output", nftables.ChainHookOutput},
}

// socketBuffer is large enough for a 10,000-element upsert in one batch.
const socketBuffer = 16 << 20

// New connects to nftables and conntrack (in cfg.NetNS or opts.NetNSFd) and
// installs quell's table in one atomic netlink batch: either the whole table
// with its sets, chains and rules is there afterwards, or nothing changed.
// Existing set elements survive (a restart keeps active blocks).
func New(ctx context.Context, cfg Config, opts Options) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("firewall config: %w", err)
	}
	b := &Backend{cfg: cfg, log: opts.Logger, now: opts.Now, nsFD: opts.NetNSFd}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.now == nil {
		b.now = time.Now
	}
	tp := opts.TracerProvider
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	b.tracer = tp.Tracer("github.com/quell-ir/quell/internal/action/firewall")
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	b.m = m
	if b.nsFD <= 0 && cfg.NetNS != "" {
		f, err := os.Open(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("firewall.netns: %w", err)
		}
		b.ownFD, b.nsFD = f, int(f.Fd())
	}
	bufs := func(c *netlink.Conn) error {
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			// FORCE variants pass the wmem_max/rmem_max caps (we hold
			// CAP_NET_ADMIN anyway); fall back to the capped ones.
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer); serr != nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
			}
			if serr == nil {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer); serr != nil {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}
	nopts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bufs)}
	if b.nsFD > 0 {
		nopts = append(nopts, nftables.WithNetNSFd(b.nsFD))
	}
	b.nft, err = nftables.New(nopts...)
	if err != nil {
		b.closeFD()
		return nil, fmt.Errorf("nftables netlink: %w", err)
	}
	b.ct, err = conntrack.Dial(&netlink.Config{NetNS: b.nsFD})
	if err != nil {
		_ = b.nft.CloseLasting()
		b.closeFD()
		return nil, fmt.Errorf("conntrack netlink: %w", err)
	}
	if err := b.setup(ctx); err != nil {
		b.Close()
		return nil, err
	}
	b.batch = newBatcher(b, cfg.BatchMaxElements, cfg.BatchLinger)
	b.flows = newFlowSnapshots(b.dumpFlows, cfg.BlastRadiusSnapshotAge)
	return b, nil
}

func (b *Backend) closeFD() {
	if b.ownFD != nil {
		_ = b.ownFD.Close()
	}
}

// Close stops the batcher and closes the netlink sockets. The table and its
// elements stay in the kernel: blocks outlive the process and expire there.
func (b *Backend) Close() {
	if b.batch != nil {
		b.batch.stop()
	}
	if b.flows != nil {
		b.flows.stop()
	}
	if b.nft != nil {
		_ = b.nft.CloseLasting()
	}
	if b.ct != nil {
		_ = b.ct.Close()
	}
	b.getMu.Lock()
	if b.getConn != nil {
		_ = b.getConn.Close()
	}
	b.getMu.Unlock()
	b.closeFD()
}

// Table is the name of quell's table (family inet).
func (b *Backend) Table() string { return b.cfg.Table }

func (b *Backend) setup(ctx context.Context) error {
	_, span := b.tracer.Start(ctx, "firewall.setup", trace.WithAttributes(attribute.String("nft.table", b.cfg.Table)))
	defer span.End()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.table = &nftables.Table{Name: b.cfg.Table, Family: nftables.TableFamilyINet}
	b.nft.AddTable(b.table)
	b.sets = map[string]*nftables.Set{}
	for i, s := range allSets() {
		set := s.nft(b.table)
		set.ID = uint32(i + 1) // explicit: the library's ID counter is a package global
		if err := b.nft.AddSet(set, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
		b.sets[s.name] = set
	}
	prio := nftables.ChainPriority(b.cfg.Priority)
	accept := nftables.ChainPolicyAccept
	for _, ch := range chainHooks {
		c := b.nft.AddChain(&nftables.Chain{
			Name: ch.name, Table: b.table, Type: nftables.ChainTypeFilter,
			Hooknum: ch.hook, Priority: &prio, Policy: &accept,
		})
		// Re-running setup on an existing table replaces the rules (the
		// flush and the new rules commit together), never duplicates them.
		b.nft.FlushChain(c)
		for _, r := range b.rules(ch.name) {
			b.nft.AddRule(&nftables.Rule{Table: b.table, Chain: c, Exprs: r})
		}
	}
	if err := b.nft.Flush(); err != nil {
		return fmt.Errorf("install table inet %s: %w", b.cfg.Table, err)
	}
	return nil
}

// Offsets in the IPv4 and IPv6 headers.
const (
	v4Src, v4Dst = 12, 16
	v6Src, v6Dst = 8, 24
)

// rules returns the expressions of the rules of one base chain.
func (b *Backend) rules(chain string) [][]expr.Any {
	var dirs []Direction
	switch chain {
	case "input":
		dirs = []Direction{In}
	case "output":
		dirs = []Direction{Out}
	default:
		dirs = []Direction{In, Out}
	}
	var out [][]expr.Any
	if chain == "input" {
		// ct state invalid counter: a rule that uses conntrack makes the
		// kernel track connections in this namespace (it is otherwise
		// enabled only on demand), so the blast-radius guard and the
		// flow cut always have a live table to read.
		out = append(out, []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitINVALID), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Counter{},
		})
	}
	for _, dir := range dirs {
		for _, v6 := range []bool{false, true} {
			for _, s := range allSets() {
				if s.nfproto || s.v6 != v6 || !strings.HasPrefix(s.name, string(dir)+map[bool]string{false: "4", true: "6"}[v6]) {
					continue
				}
				out = append(out, blockRule(s, dir, b.sets[s.name]))
			}
		}
	}
	// Isolation: when the isolate set holds this packet's family, drop what
	// is not loopback and not to/from an allowed prefix.
	for _, v6 := range []bool{false, true} {
		proto, allow := byte(unix.NFPROTO_IPV4), b.sets["allow4"]
		if v6 {
			proto, allow = unix.NFPROTO_IPV6, b.sets["allow6"]
		}
		var ends []Direction
		switch chain {
		case "input":
			ends = []Direction{In}
		case "output":
			ends = []Direction{Out}
		default:
			ends = []Direction{In, Out}
		}
		for _, d := range ends {
			e := []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Lookup{SourceRegister: 1, SetName: "isolate", SetID: b.sets["isolate"].ID},
			}
			ifKey := expr.MetaKeyIIFNAME
			if d == Out {
				ifKey = expr.MetaKeyOIFNAME
			}
			if chain != "forward" {
				e = append(e,
					&expr.Meta{Key: ifKey, Register: 1},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname("lo")},
				)
			}
			e = append(e, addrLoad(v6, d, 1),
				&expr.Lookup{SourceRegister: 1, SetName: allow.Name, SetID: allow.ID, Invert: true},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictDrop},
			)
			out = append(out, e)
		}
	}
	return out
}

func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

func addrLoad(v6 bool, d Direction, reg uint32) expr.Any {
	off, l := uint32(v4Src), uint32(4)
	if d == Out {
		off = v4Dst
	}
	if v6 {
		off, l = v6Src, 16
		if d == Out {
			off = v6Dst
		}
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l}
}

// blockRule: meta nfproto <fam> <addr> [. th dport] @set counter drop.
func blockRule(s setSpec, dir Direction, set *nftables.Set) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if s.v6 {
		proto = unix.NFPROTO_IPV6
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		addrLoad(s.v6, dir, 1),
	}
	if s.port {
		// Concatenations use 32-bit registers: the port goes right after
		// the address (reg 9 follows a 4-byte address in reg 1, reg 2
		// follows a 16-byte one). The transport header's bytes 2..3 are
		// the destination port for TCP, UDP, SCTP and DCCP.
		reg := uint32(9)
		if s.v6 {
			reg = 2
		}
		e = append(e, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	}
	return append(e,
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

// maxElemsPerMsg keeps one NEWSETELEM message's element list well under the
// 64 KiB limit of a netlink attribute.
const maxElemsPerMsg = 256

// queue adds kernel element messages for set to the pending batch.
func (b *Backend) queue(set *nftables.Set, elems []nftables.SetElement, del bool) error {
	for len(elems) > 0 {
		n := min(len(elems), maxElemsPerMsg)
		var err error
		if del {
			err = b.nft.SetDeleteElements(set, elems[:n])
		} else {
			err = b.nft.SetAddElements(set, elems[:n])
		}
		if err != nil {
			return fmt.Errorf("set %s: %w", set.Name, err)
		}
		elems = elems[n:]
	}
	return nil
}

type setOps struct {
	set  *nftables.Set
	keep []nftables.SetElement // without timeout: only ensures existence
	add  []nftables.SetElement // with the wanted timeout
}

// AddElements sets every element with exactly its expiry (upsert) in one
// atomic netlink batch: elements already present get the new timeout, so
// re-blocking extends (or, on Reconcile, re-aligns) the expiry. An element
// whose expiry has passed is skipped. Nothing is applied if any fails.
func (b *Backend) AddElements(ctx context.Context, els []Element) error {
	_, span := b.tracer.Start(ctx, "firewall.add_elements", trace.WithAttributes(attribute.Int("nft.elements", len(els))))
	defer span.End()
	start := time.Now()
	err := b.upsert(els)
	b.m.observeFlush("add", len(els), time.Since(start), err)
	if err != nil {
		span.RecordError(err)
	}
	return err
}

func (b *Backend) upsert(els []Element) error {
	now := b.now()
	ops := map[string]*setOps{}
	var order []string
	for _, e := range els {
		if err := e.validate(); err != nil {
			return err
		}
		to, ok := timeoutFor(e.Expires, now)
		if !ok {
			continue
		}
		name := e.setName()
		o := ops[name]
		if o == nil {
			o = &setOps{}
			ops[name] = o
			order = append(order, name)
		}
		o.keep = append(o.keep, e.kernelElements(0)...)
		o.add = append(o.add, e.kernelElements(to)...)
	}
	if len(order) == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// add-if-missing, delete, add-with-timeout: atomic in one transaction,
	// it replaces the timeout of an existing element on every kernel
	// (in-place timeout updates need Linux 6.10) and never fails with
	// ENOENT the way a bare delete of a missing element would.
	for _, name := range order {
		o := ops[name]
		o.set = b.sets[name]
		if err := b.queue(o.set, o.keep, false); err != nil {
			return err
		}
		if err := b.queue(o.set, o.keep, true); err != nil {
			return err
		}
		if err := b.queue(o.set, o.add, false); err != nil {
			return err
		}
	}
	if err := b.nft.Flush(); err != nil {
		return fmt.Errorf("add %d elements to inet %s: %w", len(els), b.cfg.Table, err)
	}
	return nil
}

// DeleteElements removes the elements in one atomic batch; elements that
// are not present are not an error (they may have expired).
func (b *Backend) DeleteElements(ctx context.Context, els []Element) error {
	_, span := b.tracer.Start(ctx, "firewall.delete_elements", trace.WithAttributes(attribute.Int("nft.elements", len(els))))
	defer span.End()
	start := time.Now()
	err := b.remove(els)
	b.m.observeFlush("delete", len(els), time.Since(start), err)
	return err
}

func (b *Backend) remove(els []Element) error {
	ops := map[string][]nftables.SetElement{}
	var order []string
	for _, e := range els {
		if err := e.validate(); err != nil {
			return err
		}
		name := e.setName()
		if _, ok := ops[name]; !ok {
			order = append(order, name)
		}
		// Short-lived placeholder: if the add creates the element, the
		// delete removes it in the same transaction anyway.
		ops[name] = append(ops[name], e.kernelElements(0)...)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, name := range order {
		if err := b.queue(b.sets[name], ops[name], false); err != nil {
			return err
		}
		if err := b.queue(b.sets[name], ops[name], true); err != nil {
			return err
		}
	}
	if err := b.nft.Flush(); err != nil {
		return fmt.Errorf("delete %d elements from inet %s: %w", len(els), b.cfg.Table, err)
	}
	return nil
}

// Elements lists every element in quell's sets, decoded back into Elements
// with their kernel expiry (now + remaining time). Start/end pairs of
// interval sets are joined back into prefixes.
func (b *Backend) Elements(ctx context.Context) ([]Element, error) {
	_, span := b.tracer.Start(ctx, "firewall.list_elements")
	defer span.End()
	var out []Element
	for _, s := range allSets() {
		els, err := b.setElements(s)
		if err != nil {
			return nil, err
		}
		out = append(out, els...)
	}
	return out, nil
}

// setElements reads one set back and decodes it.
func (b *Backend) setElements(s setSpec) ([]Element, error) {
	b.mu.Lock()
	raw, err := b.nft.GetSetElements(b.sets[s.name])
	b.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("list set %s: %w", s.name, err)
	}
	return decodeElements(s, raw, b.now())
}

// Lookup reads e's kernel entry back: whether it is present and, if so, its
// expiry as the kernel has it (zero: permanent).
func (b *Backend) Lookup(ctx context.Context, e Element) (Element, bool, error) {
	if err := e.validate(); err != nil {
		return Element{}, false, err
	}
	var spec setSpec
	for _, s := range allSets() {
		if s.name == e.setName() {
			spec = s
		}
	}
	if !spec.interval {
		return b.lookupHash(spec, e)
	}
	els, err := b.setElements(spec)
	if err != nil {
		return Element{}, false, err
	}
	for _, got := range els {
		if got.ID() == e.ID() {
			return got, true, nil
		}
	}
	return Element{}, false, nil
}

// CheckRuleset verifies that the table, its three base chains with their
// hooks and priority, and their rules are in place.
func (b *Backend) CheckRuleset(ctx context.Context) error {
	_, span := b.tracer.Start(ctx, "firewall.check_ruleset")
	defer span.End()
	b.mu.Lock()
	defer b.mu.Unlock()
	chains, err := b.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	var errs []error
	for _, want := range chainHooks {
		var found *nftables.Chain
		for _, c := range chains {
			if c.Table.Name == b.cfg.Table && c.Name == want.name {
				found = c
			}
		}
		switch {
		case found == nil:
			errs = append(errs, fmt.Errorf("chain inet %s %s is missing", b.cfg.Table, want.name))
			continue
		case found.Hooknum == nil || *found.Hooknum != *want.hook:
			errs = append(errs, fmt.Errorf("chain %s is not on hook %d", want.name, *want.hook))
		case found.Priority == nil || int(*found.Priority) != b.cfg.Priority:
			errs = append(errs, fmt.Errorf("chain %s does not have priority %d", want.name, b.cfg.Priority))
		}
		rules, err := b.nft.GetRules(b.table, found)
		if err != nil {
			errs = append(errs, fmt.Errorf("rules of chain %s: %w", want.name, err))
		} else if n := len(b.rules(want.name)); len(rules) != n {
			errs = append(errs, fmt.Errorf("chain %s has %d rules, want %d", want.name, len(rules), n))
		}
	}
	return errors.Join(errs...)
}

var errBackendClosed = errors.New("firewall backend closed")

// Apply upserts els through the batcher: concurrent callers share netlink
// batches. It returns when the batch holding els is in the kernel.
func (b *Backend) Apply(ctx context.Context, els []Element) error {
	return b.batch.add(ctx, els)
}

// lookupHash reads one element of a hash set with a consistent lookup.
func (b *Backend) lookupHash(spec setSpec, e Element) (Element, bool, error) {
	b.mu.Lock()
	set := b.sets[spec.name]
	b.mu.Unlock()
	kel := e.kernelElements(0)
	if len(kel) == 0 {
		return Element{}, false, nil
	}
	got, ok, err := b.getElement(set, kel[0].Key)
	if err != nil || !ok {
		return Element{}, false, err
	}
	if e.Kind == KindIsolate {
		// Both families are written together; the IPv6 entry must be there too.
		if _, ok6, err := b.getElement(set, kel[1].Key); err != nil || !ok6 {
			return Element{}, false, err
		}
	}
	els, err := decodeElements(spec, []nftables.SetElement{got}, b.now())
	if err != nil || len(els) != 1 {
		return Element{}, false, err
	}
	return els[0], true, nil
}

// Present reads the kernel back and returns, with their kernel expiry, the
// elements of want that are there, keyed by ID. It dumps the sets once and
// confirms anything the dump lacks with a single-element lookup, because a
// dump of a hash set that is being resized may skip elements.
func (b *Backend) Present(ctx context.Context, want []Element) (map[string]Element, error) {
	all, err := b.Elements(ctx)
	if err != nil {
		return nil, err
	}
	have := make(map[string]Element, len(all))
	for _, e := range all {
		have[e.ID()] = e
	}
	out := make(map[string]Element, len(want))
	for _, w := range want {
		if h, ok := have[w.ID()]; ok {
			out[w.ID()] = h
			continue
		}
		h, ok, err := b.Lookup(ctx, w)
		if err != nil {
			return nil, err
		}
		if ok {
			out[w.ID()] = h
		}
	}
	return out, nil
}
