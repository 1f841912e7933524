package firewall

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/ti-mo/conntrack"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Register adds firewall.block and firewall.isolate, both backed by b.
func Register(reg *action.Registry, b *Backend) error {
	for _, d := range []action.Definition{BlockDefinition(b), IsolateDefinition(b)} {
		if err := reg.Register(d); err != nil {
			return err
		}
	}
	return nil
}

// BlockDefinition is firewall.block.
func BlockDefinition(b *Backend) action.Definition {
	return action.Definition{
		Spec: action.Spec{
			Name:     "firewall.block",
			Provider: "firewall",
			Description: "Drop traffic from (in), to (out) or both ways of an IPv4/IPv6 address or CIDR range on this host, " +
				"optionally only for some ports, with nftables set elements that expire with the containment; " +
				"established flows of the peer are cut (conntrack entries deleted). Refused for protected addresses " +
				"and when it would cut more than the blast-radius share of current flows.",
			Params: []action.Param{
				{Name: "address", Type: action.TypeCIDR, Required: true, Description: "address or CIDR to block (a bare address is /32 or /128)"},
				{Name: "direction", Type: action.TypeEnum, Enum: []string{"in", "out", "both"}, Default: "in", Description: "in: packets from the address; out: packets to it; both"},
				{Name: "ports", Type: action.TypePorts, Description: "only these local (in) or remote (out) destination ports; empty: all traffic"},
			},
			Reversible: true,
			Needs:      []string{"CAP_NET_ADMIN"},
			Example:    "- action: firewall.block\n  params: {address: '{{ .event.src_endpoint.ip }}', direction: in}\n  ttl: 1h\n",
		},
		New: func(v action.Values) (action.Action, error) {
			return NewBlock(b, v.Prefix("address"), v.String("direction"), v.Ports("ports"))
		},
	}
}

// IsolateDefinition is firewall.isolate.
func IsolateDefinition(b *Backend) action.Definition {
	return action.Definition{
		Spec: action.Spec{
			Name:     "firewall.isolate",
			Provider: "firewall",
			Description: "Isolate this host: drop every packet in and out except loopback and the allowlist " +
				"(the step's allow prefixes, firewall.isolate_allow, firewall.peers and IPv6 link-local), " +
				"and cut established flows with anyone else. Expires with the containment.",
			Params: []action.Param{
				{Name: "allow", Type: action.TypeCIDRList, Description: "extra prefixes that stay reachable, e.g. the management network"},
			},
			Reversible: true,
			Needs:      []string{"CAP_NET_ADMIN"},
			Example:    "- action: firewall.isolate\n  params: {allow: '10.20.0.0/24'}\n  ttl: 4h\n  approval: required\n",
		},
		New: func(v action.Values) (action.Action, error) {
			return NewIsolate(b, v.Prefixes("allow"))
		},
	}
}

// elemAction is what both actions are: a set of Elements to hold, a flow
// matcher for the flows they cut, and a guard run by Check.
type elemAction struct {
	b       *Backend
	name    string
	key     string
	targets []action.Target
	els     []Element // Expires and Owner unset
	match   flowMatcher
	guard   func(ctx context.Context) (FlowShare, error)

	mu     sync.Mutex
	seen   map[string]Element // what Check found (nil: Check did not run here)
	seenAt time.Time
}

// seenFresh is how long Check's snapshot of the kernel stands in for a new
// read in Apply. Applies right after their Check (the common case, and the
// 10,000-address burst) skip a set dump each; an Apply after an approval
// wait reads again, so it never shortens a block added meanwhile.
const seenFresh = 2 * time.Second

// before is what Check records: the elements that already existed, with
// their expiry, so Revert never removes them and restores their expiry.
type before struct {
	Existed []Element  `json:"existed,omitempty"`
	Flows   *FlowShare `json:"flows,omitempty"`
}

func (a *elemAction) Key() string              { return a.key }
func (a *elemAction) Targets() []action.Target { return slices.Clone(a.targets) }

func (a *elemAction) span(ctx context.Context, op string) (context.Context, trace.Span) {
	return a.b.tracer.Start(ctx, a.name+"."+op, trace.WithAttributes(attribute.String("quell.action.key", a.key)))
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// current reads the kernel's entries for the action's elements, each with a
// consistent lookup (see getElement).
func (a *elemAction) current(ctx context.Context) (map[string]Element, error) {
	out := map[string]Element{}
	for _, e := range a.els {
		got, ok, err := a.b.Lookup(ctx, e)
		if err != nil {
			return nil, err
		}
		if ok {
			out[e.ID()] = got
		}
	}
	return out, nil
}

func (a *elemAction) Check(ctx context.Context) (_ action.Before, err error) {
	ctx, span := a.span(ctx, "check")
	defer func() { endSpan(span, err) }()
	share, err := a.guard(ctx)
	if err != nil {
		if reason, ok := action.IsDenied(err); ok {
			a.b.log.Warn("firewall action denied", "key", a.key, "reason", reason)
		}
		return nil, err
	}
	cur, err := a.current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: read current state: %w", a.key, err)
	}
	a.mu.Lock()
	a.seen, a.seenAt = cur, a.b.now()
	a.mu.Unlock()
	bf := before{Flows: &share}
	for _, e := range a.els {
		if c, ok := cur[e.ID()]; ok {
			bf.Existed = append(bf.Existed, c)
		}
	}
	return json.Marshal(bf)
}

// laterOf keeps the later expiry; zero (permanent) is latest of all.
func laterOf(a, b time.Time) time.Time {
	if a.IsZero() || b.IsZero() {
		return time.Time{}
	}
	if a.After(b) {
		return a
	}
	return b
}

// wanted is the action's elements with the expiry to program: the
// containment's, or an existing element's if that one is later, so that
// re-blocking an address never shortens a longer block.
func (a *elemAction) wanted(ctx context.Context, expires time.Time) ([]Element, error) {
	a.mu.Lock()
	cur := a.seen
	if a.b.now().Sub(a.seenAt) > seenFresh {
		cur = nil
	}
	a.mu.Unlock()
	if cur == nil {
		// Recovery rebuilt this action without running Check, or Check
		// ran long ago: read now.
		var err error
		if cur, err = a.current(ctx); err != nil {
			return nil, err
		}
	}
	out := make([]Element, len(a.els))
	for i, e := range a.els {
		e.Expires, e.Owner = expires, a.key
		if c, ok := cur[e.ID()]; ok {
			e.Expires = laterOf(e.Expires, c.Expires)
		}
		out[i] = e
	}
	return out, nil
}

func (a *elemAction) Apply(ctx context.Context, eff action.Effect) (err error) {
	ctx, span := a.span(ctx, "apply")
	defer func() { endSpan(span, err) }()
	if !eff.ExpiresAt.IsZero() && !eff.ExpiresAt.After(a.b.now()) {
		return fmt.Errorf("%s: expiry %s has passed", a.key, eff.ExpiresAt.Format(time.RFC3339))
	}
	els, err := a.wanted(ctx, eff.ExpiresAt)
	if err != nil {
		return fmt.Errorf("%s: %w", a.key, err)
	}
	if err := a.b.Apply(ctx, els); err != nil {
		return action.Retryable(fmt.Errorf("%s: add elements: %w", a.key, err), 0)
	}
	// The drop rule is in place: flows cut now cannot be re-established.
	n, err := a.b.cut(ctx, a.match)
	if err != nil {
		return action.Retryable(fmt.Errorf("%s: cut established flows: %w", a.key, err), 0)
	}
	a.b.log.Info("firewall containment applied", "key", a.key, "expires", eff.ExpiresAt, "conntrack_deleted", n)
	return nil
}

// Extend implements action.Extender: the elements get the new expiry (never
// an earlier one than they have).
func (a *elemAction) Extend(ctx context.Context, eff action.Effect) (err error) {
	ctx, span := a.span(ctx, "extend")
	defer func() { endSpan(span, err) }()
	cur, err := a.current(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", a.key, err)
	}
	a.mu.Lock()
	a.seen, a.seenAt = cur, a.b.now()
	a.mu.Unlock()
	els, err := a.wanted(ctx, eff.ExpiresAt)
	if err != nil {
		return fmt.Errorf("%s: %w", a.key, err)
	}
	if err := a.b.Apply(ctx, els); err != nil {
		return action.Retryable(fmt.Errorf("%s: extend: %w", a.key, err), 0)
	}
	return nil
}

func (a *elemAction) Verify(ctx context.Context, eff action.Effect) (err error) {
	ctx, span := a.span(ctx, "verify")
	defer func() { endSpan(span, err) }()
	if err := a.b.CheckRuleset(ctx); err != nil {
		return fmt.Errorf("%s: %w", a.key, err)
	}
	cur, err := a.current(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", a.key, err)
	}
	tol := a.b.cfg.VerifyTolerance
	for _, e := range a.els {
		got, ok := cur[e.ID()]
		switch {
		case !ok:
			return fmt.Errorf("%s: element %s is not in set %s", a.key, e.ID(), e.setName())
		case eff.ExpiresAt.IsZero() && !got.Expires.IsZero():
			return fmt.Errorf("%s: element %s expires at %s, want no expiry", a.key, e.ID(), got.Expires.Format(time.RFC3339))
		case !eff.ExpiresAt.IsZero() && !got.Expires.IsZero() && got.Expires.Before(eff.ExpiresAt.Add(-tol)):
			return fmt.Errorf("%s: element %s expires at %s, before the containment's %s", a.key, e.ID(),
				got.Expires.Format(time.RFC3339), eff.ExpiresAt.Format(time.RFC3339))
		}
	}
	n, err := a.b.remaining(ctx, a.match)
	if err != nil {
		return fmt.Errorf("%s: %w", a.key, err)
	}
	if n > 0 {
		return action.Retryable(fmt.Errorf("%s: %d conntrack entries of the contained peer remain", a.key, n), 0)
	}
	return nil
}

func (a *elemAction) Revert(ctx context.Context, raw action.Before) (err error) {
	ctx, span := a.span(ctx, "revert")
	defer func() { endSpan(span, err) }()
	var bf before
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &bf); err != nil {
			return fmt.Errorf("%s: decode before: %w", a.key, err)
		}
	}
	existed := map[string]Element{}
	for _, e := range bf.Existed {
		existed[e.ID()] = e
	}
	var del, restore []Element
	for _, e := range a.els {
		if old, ok := existed[e.ID()]; ok {
			// Never removed; its old expiry comes back if we extended it.
			if old.Expires.IsZero() || old.Expires.After(a.b.now()) {
				restore = append(restore, old)
			}
			continue
		}
		del = append(del, e)
	}
	if len(del) > 0 {
		if err := a.b.DeleteElements(ctx, del); err != nil {
			return action.Retryable(fmt.Errorf("%s: revert: %w", a.key, err), 0)
		}
	}
	if len(restore) > 0 {
		if err := a.b.AddElements(ctx, restore); err != nil {
			return action.Retryable(fmt.Errorf("%s: restore pre-existing expiry: %w", a.key, err), 0)
		}
	}
	a.b.log.Info("firewall containment reverted", "key", a.key, "removed", len(del), "kept", len(restore))
	return nil
}

// Elements returns what the action holds in the kernel with the given
// expiry: what the lead passes to Reconcile for active transactions.
func (a *elemAction) Elements(expires time.Time) []Element {
	out := make([]Element, len(a.els))
	for i, e := range a.els {
		e.Expires, e.Owner = expires, a.key
		out[i] = e
	}
	return out
}

// Contained is implemented by both firewall actions (for Reconcile wiring).
type Contained interface {
	Elements(expires time.Time) []Element
}

// NewBlock builds firewall.block for prefix; direction is in, out or both.
func NewBlock(b *Backend, prefix netip.Prefix, direction string, ports []uint16) (action.Action, error) {
	if !prefix.IsValid() {
		return nil, fmt.Errorf("firewall.block: invalid address")
	}
	prefix = prefix.Masked()
	var dirs []Direction
	switch direction {
	case "in", "":
		direction, dirs = "in", []Direction{In}
	case "out":
		dirs = []Direction{Out}
	case "both":
		dirs = []Direction{In, Out}
	default:
		return nil, fmt.Errorf("firewall.block: direction %q is not in, out or both", direction)
	}
	ports = slices.Clone(ports)
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	ports = slices.Compact(ports)
	key := "firewall.block/" + direction + "/" + prefix.Addr().String() + "/" + strconv.Itoa(prefix.Bits())
	if len(ports) > 0 {
		ps := make([]string, len(ports))
		for i, p := range ports {
			ps[i] = strconv.Itoa(int(p))
		}
		key += "/ports=" + strings.Join(ps, ",")
	}
	kind := "cidr"
	if prefix.IsSingleIP() {
		kind = "ip"
	}
	a := &elemAction{b: b, name: "firewall.block", key: key,
		targets: []action.Target{{Kind: kind, Value: targetValue(prefix)}}}
	var matchers []flowMatcher
	for _, d := range dirs {
		matchers = append(matchers, blockMatcher(prefix, d, ports))
		if len(ports) == 0 {
			a.els = append(a.els, Element{Kind: KindBlock, Dir: d, Prefix: prefix})
		}
		for _, p := range ports {
			a.els = append(a.els, Element{Kind: KindBlock, Dir: d, Prefix: prefix, Port: p})
		}
	}
	a.match = func(f conntrack.Flow) bool {
		for _, m := range matchers {
			if m(f) {
				return true
			}
		}
		return false
	}
	a.guard = func(ctx context.Context) (FlowShare, error) {
		if reason, err := b.protectedReason(ctx, prefix); err != nil {
			return FlowShare{}, fmt.Errorf("%s: protected-address check: %w", key, err)
		} else if reason != "" {
			b.m.denied.WithLabelValues("protected").Inc()
			return FlowShare{}, action.Deny("%s is protected: %s", prefix, reason)
		}
		if err := b.overlapCheck(a.els); err != nil {
			b.m.denied.WithLabelValues("overlap").Inc()
			return FlowShare{}, err
		}
		share, err := b.measure(ctx, a.match)
		if err != nil {
			return FlowShare{}, fmt.Errorf("%s: blast radius: %w", key, err)
		}
		if share.Total >= b.cfg.BlastRadiusMinFlows && share.Share() > b.cfg.BlastRadiusMaxShare {
			b.m.denied.WithLabelValues("blast_radius").Inc()
			return share, action.Deny("blast radius: blocking %s would cut %.1f%% of current flows (%d of %d), above the %.1f%% limit",
				prefix, 100*share.Share(), share.Matched, share.Total, 100*b.cfg.BlastRadiusMaxShare)
		}
		return share, nil
	}
	return a, nil
}

func targetValue(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// linkLocal6 stays reachable during isolation: without neighbour discovery
// the allowed peers themselves become unreachable.
var linkLocal6 = []netip.Prefix{netip.MustParsePrefix("fe80::/10"), netip.MustParsePrefix("ff02::/16")}

// NewIsolate builds firewall.isolate with the extra allowed prefixes.
func NewIsolate(b *Backend, allow []netip.Prefix) (action.Action, error) {
	all := append(slices.Clone(allow), b.cfg.IsolateAllow...)
	all = append(all, b.cfg.Peers...)
	all = append(all, linkLocal6...)
	all = mergePrefixes(all)
	user := mergePrefixes(append(slices.Clone(allow), b.cfg.IsolateAllow...))
	ps := make([]string, len(user))
	for i, p := range user {
		ps[i] = p.String()
	}
	key := "firewall.isolate/allow=" + strings.Join(ps, ",")
	a := &elemAction{b: b, name: "firewall.isolate", key: key,
		targets: []action.Target{{Kind: "host", Value: "self"}}}
	a.els = append(a.els, Element{Kind: KindIsolate})
	for _, p := range all {
		a.els = append(a.els, Element{Kind: KindAllow, Prefix: p})
	}
	a.match = isolateMatcher(all)
	a.guard = func(ctx context.Context) (FlowShare, error) {
		if len(user) == 0 && len(b.cfg.Peers) == 0 {
			return FlowShare{}, action.Deny("isolation without an allowlist would cut the host off from its operators: set allow or firewall.isolate_allow")
		}
		if err := b.overlapCheck(a.els); err != nil {
			return FlowShare{}, err
		}
		// Isolation cuts everything else by design: the blast-radius share
		// is recorded, not enforced (require approval for it in policy).
		return b.measure(ctx, a.match)
	}
	return a, nil
}

// mergePrefixes drops prefixes contained in others and duplicates (an
// interval set refuses overlapping ranges), and sorts the rest.
func mergePrefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		covered := false
		for _, q := range ps {
			q = q.Masked()
			if q != p && q.Bits() < p.Bits() && q.Contains(p.Addr()) {
				covered = true
			}
		}
		if !covered && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
