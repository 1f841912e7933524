package firewall

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// Report is what Reconcile found and did.
type Report struct {
	// Unknown are elements in quell's table that no active containment
	// accounts for (added by hand, or by a journal that was lost). They
	// are reported, not removed: removing a block is a decision.
	Unknown []Element `json:"unknown,omitempty"`
	// Reapplied were active in the journal but missing from the kernel
	// (someone flushed the ruleset); they were added back with the time
	// left until their expiry.
	Reapplied []Element `json:"reapplied,omitempty"`
	// Realigned were present with an expiry that differed from the
	// journal's by more than Config.VerifyTolerance; they now expire when
	// the journal says.
	Realigned []Element `json:"realigned,omitempty"`
	// Lapsed were active in the journal with an expiry already past; they
	// are not re-applied (the engine expires their transactions).
	Lapsed []Element `json:"lapsed,omitempty"`
	// Rebuilt is true when the table or its chains were missing and were
	// installed again.
	Rebuilt bool `json:"rebuilt,omitempty"`
}

// Reconcile compares the kernel with the journal's active containments
// (the Elements of every active firewall transaction, see Contained) and
// makes the kernel match: missing elements are re-applied, expiries are set
// to the journal's (time left, never a fresh TTL, so a restart neither lets
// a whole batch lapse at once nor extends it), unknown elements are
// reported. Call it once at start, before the engine takes new work.
func (b *Backend) Reconcile(ctx context.Context, active []Element) (Report, error) {
	ctx, span := b.tracer.Start(ctx, "firewall.reconcile")
	defer span.End()
	var rep Report
	if err := b.CheckRuleset(ctx); err != nil {
		b.log.Warn("firewall table incomplete, reinstalling", "table", b.cfg.Table, "err", err)
		if err := b.setup(ctx); err != nil {
			return rep, fmt.Errorf("reconcile: reinstall table: %w", err)
		}
		rep.Rebuilt = true
	}
	now := b.now()
	want := map[string]Element{}
	var order []string
	for _, e := range active {
		if err := e.validate(); err != nil {
			return rep, fmt.Errorf("reconcile: %w", err)
		}
		id := e.ID()
		if w, ok := want[id]; ok {
			// Several containments hold one element: the latest wins.
			w.Expires = laterOf(w.Expires, e.Expires)
			want[id] = w
			continue
		}
		want[id] = e
		order = append(order, id)
	}
	have, err := b.Elements(ctx)
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	haveByID := map[string]Element{}
	for _, h := range have {
		haveByID[h.ID()] = h
		if _, ok := want[h.ID()]; !ok {
			rep.Unknown = append(rep.Unknown, h)
		}
	}
	var fix []Element
	tol := b.cfg.VerifyTolerance
	for _, id := range order {
		w := want[id]
		if !w.Expires.IsZero() && !w.Expires.After(now) {
			rep.Lapsed = append(rep.Lapsed, w)
			continue
		}
		h, ok := haveByID[id]
		if !ok {
			// A dump can skip elements of a hash set being resized:
			// confirm with a lookup before calling it missing.
			var err error
			if h, ok, err = b.Lookup(ctx, w); err != nil {
				return rep, fmt.Errorf("reconcile: %w", err)
			}
		}
		switch {
		case !ok:
			rep.Reapplied = append(rep.Reapplied, w)
			fix = append(fix, w)
		case w.Expires.IsZero() != h.Expires.IsZero() || absDur(w.Expires.Sub(h.Expires)) > tol:
			rep.Realigned = append(rep.Realigned, w)
			fix = append(fix, w)
		}
	}
	if len(fix) > 0 {
		if err := b.AddElements(ctx, fix); err != nil {
			return rep, fmt.Errorf("reconcile: re-apply %d elements: %w", len(fix), err)
		}
	}
	for _, e := range rep.Reapplied {
		b.log.Warn("firewall element was missing from the kernel; re-applied", "element", e.ID(), "owner", e.Owner, "expires", e.Expires)
	}
	for _, e := range rep.Realigned {
		b.log.Info("firewall element expiry realigned with the journal", "element", e.ID(), "expires", e.Expires)
	}
	for _, e := range rep.Unknown {
		b.log.Warn("firewall element not known to the journal", "element", e.ID(), "owner", e.Owner, "expires", e.Expires)
	}
	b.m.reconcile.WithLabelValues("reapplied").Add(float64(len(rep.Reapplied)))
	b.m.reconcile.WithLabelValues("realigned").Add(float64(len(rep.Realigned)))
	b.m.reconcile.WithLabelValues("unknown").Add(float64(len(rep.Unknown)))
	span.SetAttributes(attribute.Int("reapplied", len(rep.Reapplied)), attribute.Int("realigned", len(rep.Realigned)), attribute.Int("unknown", len(rep.Unknown)))
	return rep, nil
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
