package app

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/action/firewall"
	"github.com/quell-ir/quell/internal/txn"
)

// fwProvider registers the firewall actions and connects the nftables
// backend only when something can use it: enforce mode, and either
// firewall.enabled or a loaded playbook that names a firewall action. In
// audit mode the kernel is never touched, not even to create the table.
type fwProvider struct {
	b *firewall.Backend
}

var errFirewallOff = errors.New("the firewall provider is not connected: run in enforce mode with firewall.enabled: true or a playbook that uses firewall actions")

func (p *fwProvider) register(reg *action.Registry) error {
	for _, mk := range []func(*firewall.Backend) action.Definition{firewall.BlockDefinition, firewall.IsolateDefinition} {
		spec := mk(nil).Spec
		err := reg.Register(action.Definition{Spec: spec, New: func(v action.Values) (action.Action, error) {
			if p.b != nil {
				return mk(p.b).New(v)
			}
			if spec.Name == "firewall.isolate" {
				return nil, errFirewallOff
			}
			a, err := mk(nil).New(v)
			if err != nil {
				return nil, err
			}
			return disconnected{a}, nil
		}})
		if err != nil {
			return err
		}
	}
	return nil
}

// disconnected keeps an action's identity (key, targets: what an audit
// record needs) while refusing every effect.
type disconnected struct{ a action.Action }

func (d disconnected) Key() string                                  { return d.a.Key() }
func (d disconnected) Targets() []action.Target                     { return d.a.Targets() }
func (d disconnected) Check(context.Context) (action.Before, error) { return nil, errFirewallOff }
func (d disconnected) Apply(context.Context, action.Effect) error   { return errFirewallOff }
func (d disconnected) Verify(context.Context, action.Effect) error  { return errFirewallOff }
func (d disconnected) Revert(context.Context, action.Before) error  { return errFirewallOff }

// connectFirewall builds the backend when it is needed, then reconciles the
// kernel with the journal before any new work: active blocks missing from
// the kernel are re-applied with the time they have left, unknown elements
// are reported.
func (a *App) connectFirewall(ctx context.Context) error {
	held, err := a.firewallHeld(ctx)
	if err != nil {
		return err
	}
	// Containment already in the journal is always looked after, even in
	// audit mode: verifying and expiring what exists is not a new effect,
	// and leaving it unmanaged would strand it.
	wanted := a.cfg.Engine.Mode == txn.ModeEnforce && (a.cfg.Firewall.Enabled || a.playbooksUse("firewall."))
	if !wanted && !held {
		return nil
	}
	b, err := firewall.New(ctx, a.cfg.Firewall.Config, firewall.Options{Logger: a.log.With("component", "firewall"), Registerer: a.Metrics})
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	a.fw.b = b
	var els []firewall.Element
	for _, name := range []string{"firewall.block", "firewall.isolate"} {
		ts, err := a.Store.ListTxns(ctx, txn.Filter{States: []txn.State{txn.Active}, Action: name, Limit: 1000})
		if err != nil {
			return fmt.Errorf("firewall reconcile: %w", err)
		}
		for _, t := range ts {
			act, _, err := a.Registry.Build(t.Action, t.Params)
			if err != nil {
				a.log.Error("firewall reconcile: rebuild", "txn", t.ID, "err", err)
				continue
			}
			c, ok := act.(firewall.Contained)
			if !ok {
				continue
			}
			var exp time.Time
			if t.ExpiresAt != nil {
				exp = *t.ExpiresAt
			}
			els = append(els, c.Elements(exp)...)
		}
	}
	rep, err := b.Reconcile(ctx, els)
	if err != nil {
		return fmt.Errorf("firewall reconcile: %w", err)
	}
	a.log.Info("firewall reconciled with the journal", "table", b.Table(), "active", len(els),
		"reapplied", len(rep.Reapplied), "realigned", len(rep.Realigned), "unknown", len(rep.Unknown))
	for _, u := range rep.Unknown {
		a.log.Warn("firewall element not known to the journal (left in place)", "element", fmt.Sprint(u))
	}
	return nil
}

// firewallHeld reports whether the journal holds unfinished firewall
// transactions.
func (a *App) firewallHeld(ctx context.Context) (bool, error) {
	ts, err := a.Store.NonTerminal(ctx)
	if err != nil {
		return false, fmt.Errorf("firewall: look for held containment: %w", err)
	}
	for _, t := range ts {
		if strings.HasPrefix(t.Action, "firewall.") {
			return true, nil
		}
	}
	return false, nil
}

func (a *App) playbooksUse(prefix string) bool {
	set := a.Playbooks()
	if set == nil {
		return false
	}
	for _, pb := range set.Playbooks() {
		for _, st := range pb.Steps {
			if strings.HasPrefix(st.Action, prefix) {
				return true
			}
		}
	}
	return false
}
