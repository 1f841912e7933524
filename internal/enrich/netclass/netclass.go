// Package netclass classifies addresses: internal ranges (RFC 1918, RFC 4193,
// loopback, link-local and configured CIDRs) and protected infrastructure
// (load balancers, NAT gateways, DNS, the engine's peers, named resources
// such as the kube-system namespace).
//
// The protected set backs the transaction engine's protected-targets guard
// (txn.Protector). It is held in bart prefix tables that are rebuilt or
// persisted on change and swapped atomically, so readers never take a lock
// and never see a half-built table.
package netclass

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gaissmai/bart"

	"github.com/quell-ir/quell/internal/action"
)

// BuiltinInternal are the ranges that are internal on every network.
var builtinInternal = []string{
	"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", // RFC 1918
	"127.0.0.0/8", "::1/128", // loopback
	"169.254.0.0/16", "fe80::/10", // link-local
	"fc00::/7", // RFC 4193 unique local
}

// BuiltinInternal returns the ranges classified internal unless
// Config.NoBuiltinInternal is set.
func BuiltinInternal() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(builtinInternal))
	for _, s := range builtinInternal {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// Config configures the classifier.
type Config struct {
	// InternalCIDRs are added to the builtin internal ranges (e.g. a CGNAT
	// 100.64.0.0/10 range or public ranges your company owns).
	InternalCIDRs []string `yaml:"internal_cidrs"`
	// NoBuiltinInternal drops the builtin RFC 1918/4193, loopback and
	// link-local ranges (for a lab whose "outside" is a private range).
	NoBuiltinInternal bool `yaml:"no_builtin_internal"`
	// Protected lists addresses and prefixes that no action may touch.
	Protected []ProtectedPrefix `yaml:"protected"`
	// ProtectedResources lists named resources no action may touch.
	ProtectedResources []ProtectedResource `yaml:"protected_resources"`
}

// ProtectedPrefix is one protected address or prefix.
type ProtectedPrefix struct {
	CIDR   string `yaml:"cidr"`   // an address or a prefix
	Reason string `yaml:"reason"` // shown when the guard refuses, e.g. "edge load balancer"
}

// ProtectedResource is one protected named resource, matched against an
// action target of the same kind.
type ProtectedResource struct {
	Kind   string `yaml:"kind"`  // namespace, node, service_account, pod, instance, access_key, ...
	Value  string `yaml:"value"` // exact name, e.g. kube-system
	Reason string `yaml:"reason"`
}

// DefaultConfig returns the defaults: builtin internal ranges, nothing
// protected (the engine adds its own addresses and gateway at wiring).
func DefaultConfig() Config { return Config{} }

// Validate checks every field and names the offending one.
func (c Config) Validate() error {
	for i, s := range c.InternalCIDRs {
		if _, err := ParsePrefix(s); err != nil {
			return fmt.Errorf("internal_cidrs[%d]: %w", i, err)
		}
	}
	for i, p := range c.Protected {
		if _, err := ParsePrefix(p.CIDR); err != nil {
			return fmt.Errorf("protected[%d].cidr: %w", i, err)
		}
	}
	for i, r := range c.ProtectedResources {
		if r.Kind == "" {
			return fmt.Errorf("protected_resources[%d].kind: required", i)
		}
		if r.Kind == "ip" || r.Kind == "cidr" {
			return fmt.Errorf("protected_resources[%d].kind: %q targets belong in protected (as cidr)", i, r.Kind)
		}
		if r.Value == "" {
			return fmt.Errorf("protected_resources[%d].value: required", i)
		}
	}
	return nil
}

// ParsePrefix parses an address (as a host prefix) or a prefix, masks it and
// unmaps IPv4-mapped IPv6 so that one address has one spelling.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a prefix: %q", s)
		}
		a := p.Addr()
		bits := p.Bits()
		if a.Is4In6() {
			if bits < 96 {
				return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix shorter than /96: %q", s)
			}
			a, bits = a.Unmap(), bits-96
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("zoned prefix not allowed: %q", s)
		}
		return netip.PrefixFrom(a, bits).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an address or prefix: %q", s)
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Entry is one protected prefix with why it is protected.
type Entry struct {
	Prefix netip.Prefix
	Reason string
}

// Group names a set of protected entries owned by one writer, so that each
// writer can replace its own entries without touching the others': the
// config, the engine's host addresses, its peers, a Kubernetes watcher.
const (
	GroupConfig = "config"
)

type protectedSnap struct {
	prefixes *bart.Table[string] // reason
	names    map[string]string   // kind + "\x00" + value -> reason
}

// Table is the classifier and the protected-targets guard. It is safe for
// concurrent use; writers are serialized and readers never block.
type Table struct {
	internal *bart.Table[struct{}]
	snap     atomic.Pointer[protectedSnap]

	mu     sync.Mutex                   // serializes writers
	groups map[string][]Entry           // protected prefixes by owner
	named  map[string]map[string]string // group -> key -> reason
}

// New builds a Table from cfg. The config's protected entries form the
// "config" group.
func New(cfg Config) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("netclass config: %w", err)
	}
	t := &Table{
		internal: new(bart.Table[struct{}]),
		groups:   map[string][]Entry{},
		named:    map[string]map[string]string{},
	}
	if !cfg.NoBuiltinInternal {
		for _, p := range BuiltinInternal() {
			t.internal.Insert(p, struct{}{})
		}
	}
	for _, s := range cfg.InternalCIDRs {
		p, _ := ParsePrefix(s) // validated
		t.internal.Insert(p, struct{}{})
	}
	entries := make([]Entry, 0, len(cfg.Protected))
	for _, pp := range cfg.Protected {
		p, _ := ParsePrefix(pp.CIDR)
		entries = append(entries, Entry{Prefix: p, Reason: reasonOr(pp.Reason, "configured protected prefix "+p.String())})
	}
	names := map[string]string{}
	for _, r := range cfg.ProtectedResources {
		names[nameKey(r.Kind, r.Value)] = reasonOr(r.Reason, "configured protected "+r.Kind+" "+r.Value)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.groups[GroupConfig] = entries
	t.named[GroupConfig] = names
	t.rebuildLocked()
	return t, nil
}

func reasonOr(r, def string) string {
	if r != "" {
		return r
	}
	return def
}

func nameKey(kind, value string) string { return kind + "\x00" + value }

// rebuildLocked builds a fresh snapshot from all groups and publishes it.
// Groups are applied in name order so a prefix named by two groups always
// gets the same reason.
func (t *Table) rebuildLocked() {
	s := &protectedSnap{prefixes: new(bart.Table[string]), names: map[string]string{}}
	keys := make([]string, 0, len(t.groups))
	for g := range t.groups {
		keys = append(keys, g)
	}
	slices.Sort(keys)
	for _, g := range keys {
		for _, e := range t.groups[g] {
			if _, dup := s.prefixes.Get(e.Prefix); !dup {
				s.prefixes.Insert(e.Prefix, e.Reason)
			}
		}
	}
	keys = keys[:0]
	for g := range t.named {
		keys = append(keys, g)
	}
	slices.Sort(keys)
	for _, g := range keys {
		for k, r := range t.named[g] {
			if _, dup := s.names[k]; !dup {
				s.names[k] = r
			}
		}
	}
	t.snap.Store(s)
}

// Add adds protected prefixes to group without rebuilding the table: the
// current table is persisted (copy-on-write of the touched path), so adding
// one address to a table of millions is cheap.
func (t *Table) Add(group string, entries ...Entry) error {
	for _, e := range entries {
		if !e.Prefix.IsValid() {
			return fmt.Errorf("add protected to %s: invalid prefix", group)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.snap.Load()
	next := &protectedSnap{prefixes: cur.prefixes, names: cur.names}
	for _, e := range entries {
		e.Prefix = canon(e.Prefix)
		t.groups[group] = append(t.groups[group], e)
		if _, dup := next.prefixes.Get(e.Prefix); !dup {
			next.prefixes = next.prefixes.InsertPersist(e.Prefix, e.Reason)
		}
	}
	t.snap.Store(next)
	return nil
}

// Replace sets group's protected prefixes to exactly entries (nil removes
// the group) and publishes the rebuilt table atomically. The engine calls it
// with group "host" when its addresses or default gateway change.
func (t *Table) Replace(group string, entries []Entry) error {
	cp := make([]Entry, 0, len(entries))
	for _, e := range entries {
		if !e.Prefix.IsValid() {
			return fmt.Errorf("replace protected group %s: invalid prefix", group)
		}
		e.Prefix = canon(e.Prefix)
		cp = append(cp, e)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(cp) == 0 {
		delete(t.groups, group)
	} else {
		t.groups[group] = cp
	}
	t.rebuildLocked()
	return nil
}

// ReplaceResources sets group's protected named resources.
func (t *Table) ReplaceResources(group string, res []ProtectedResource) error {
	m := make(map[string]string, len(res))
	for i, r := range res {
		if r.Kind == "" || r.Value == "" {
			return fmt.Errorf("replace protected resources %s: [%d]: kind and value are required", group, i)
		}
		m[nameKey(r.Kind, r.Value)] = reasonOr(r.Reason, "protected "+r.Kind+" "+r.Value)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(m) == 0 {
		delete(t.named, group)
	} else {
		t.named[group] = m
	}
	t.rebuildLocked()
	return nil
}

func canon(p netip.Prefix) netip.Prefix {
	a, bits := p.Addr(), p.Bits()
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	return netip.PrefixFrom(a.WithZone(""), bits).Masked()
}

// IsInternal reports whether addr is in an internal range.
func (t *Table) IsInternal(addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	return t.internal.Contains(addr.Unmap().WithZone(""))
}

// ProtectedAddr reports whether addr lies in a protected prefix, and why.
func (t *Table) ProtectedAddr(addr netip.Addr) (string, bool) {
	if !addr.IsValid() {
		return "", false
	}
	return t.snap.Load().prefixes.Lookup(addr.Unmap().WithZone(""))
}

// ProtectedPrefix reports whether p overlaps any protected prefix: blocking
// a /16 that contains the load balancer blocks the load balancer.
func (t *Table) ProtectedPrefix(p netip.Prefix) (string, bool) {
	if !p.IsValid() {
		return "", false
	}
	p = canon(p)
	s := t.snap.Load()
	if !s.prefixes.OverlapsPrefix(p) {
		return "", false
	}
	// A protected prefix covering p: the longest match says why.
	if r, ok := s.prefixes.LookupPrefix(p); ok {
		return r, true
	}
	// Otherwise some protected prefix lies inside p.
	for sub, r := range s.prefixes.Subnets(p) {
		return fmt.Sprintf("%s contains protected %s", p, sub) + ": " + r, true
	}
	return "overlaps a protected prefix", true
}

// namespaced are the Kubernetes kinds whose values are "namespace/name":
// such a resource is protected when its namespace is. Other kinds may
// contain '/' for other reasons (an AWS ARN) and are matched exactly.
var namespaced = map[string]bool{
	"pod": true, "service_account": true, "workload": true, "deployment": true,
	"statefulset": true, "daemonset": true, "replicaset": true, "job": true, "cronjob": true,
	"service": true, "secret": true, "configmap": true, "networkpolicy": true,
}

// ProtectedName reports whether the named resource is protected. A
// namespaced Kubernetes name "ns/name" is also protected when its
// namespace is.
func (t *Table) ProtectedName(kind, value string) (string, bool) {
	s := t.snap.Load()
	if r, ok := s.names[nameKey(kind, value)]; ok {
		return r, true
	}
	if namespaced[kind] {
		if ns, _, ok := strings.Cut(value, "/"); ok && ns != "" {
			if r, ok := s.names[nameKey("namespace", ns)]; ok {
				return "in protected namespace " + ns + ": " + r, true
			}
		}
	}
	return "", false
}

// ErrBadTarget is returned for an ip or cidr target that does not parse: the
// guard cannot be evaluated, so the engine denies.
var ErrBadTarget = errors.New("unparsable target")

// Protected implements txn.Protector.
func (t *Table) Protected(_ context.Context, tg action.Target) (string, bool, error) {
	switch tg.Kind {
	case "ip":
		a, err := netip.ParseAddr(strings.TrimSpace(tg.Value))
		if err != nil {
			return "", false, fmt.Errorf("protected check %s: %w", tg, ErrBadTarget)
		}
		r, ok := t.ProtectedAddr(a)
		return r, ok, nil
	case "cidr":
		p, err := ParsePrefix(tg.Value)
		if err != nil {
			return "", false, fmt.Errorf("protected check %s: %w", tg, ErrBadTarget)
		}
		r, ok := t.ProtectedPrefix(p)
		return r, ok, nil
	default:
		r, ok := t.ProtectedName(tg.Kind, tg.Value)
		return r, ok, nil
	}
}
