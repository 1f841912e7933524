package firewall

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/playbook"
)

// TestExamplePlaybook loads examples/playbooks/firewall-block-bruteforce.yaml
// against the real firewall registry, evaluates it on a brute-force event
// from the lab's attacker, and carries the plan out: in audit mode (what the
// example ships with) the engine only runs Check, which must change nothing;
// enforced, the attacker is blocked for the step's hour.
func TestExamplePlaybook(t *testing.T) {
	l := newLab(t, nil)
	ctx := context.Background()
	path := filepath.Join("..", "..", "..", "examples", "playbooks", "firewall-block-bruteforce.yaml")
	set, err := playbook.Load(ctx, []string{path}, l.reg)
	if err != nil {
		t.Fatalf("example does not load: %v", err)
	}
	ev := &event.Event{ID: "e1", Source: "crowdsec", Type: "brute_force", SeverityID: 4,
		SrcEndpoint: &event.Endpoint{IP: "10.77.0.1", Port: 51234},
		DstEndpoint: &event.Endpoint{IP: "10.77.0.3", Port: 22}}
	ev.Normalize(time.Now())
	plans, errs := set.Evaluate(ctx, ev, &event.Context{})
	if len(errs) != 0 || len(plans) != 1 {
		t.Fatalf("plans %+v, errors %v; want one plan", plans, errs)
	}
	p := plans[0]
	if p.Action != "firewall.block" || p.Mode != playbook.Mode("audit") || p.TTL != time.Hour ||
		p.Params["address"] != "10.77.0.1" || p.Params["direction"] != "in" {
		t.Fatalf("plan %+v", p)
	}
	a, _, err := l.reg.Build(p.Action, p.Params)
	if err != nil {
		t.Fatal(err)
	}
	if a.Key() != "firewall.block/in/10.77.0.1/32" {
		t.Fatalf("key %s", a.Key())
	}
	// Audit: Check only; nothing in the kernel, the attacker still gets in.
	if _, err := a.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if els, _ := l.backend.Elements(ctx); len(els) != 0 {
		t.Fatalf("audit changed the table: %v", els)
	}
	if err := awaitReach(l.attacker, noAddr, l.http4, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	// Enforce.
	eff := action.Effect{ExpiresAt: time.Now().Add(p.TTL)}
	if err := a.Apply(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(ctx, eff); err != nil {
		t.Fatal(err)
	}
	if err := get(l.attacker, noAddr, l.http4); err == nil {
		t.Fatal("attacker not blocked by the enforced playbook step")
	}
	// A non-matching event plans nothing.
	other := &event.Event{ID: "e2", Source: "crowdsec", Type: "port_scan", SrcEndpoint: &event.Endpoint{IP: "10.77.2.2"}}
	other.Normalize(time.Now())
	if plans, _ := set.Evaluate(ctx, other, &event.Context{}); len(plans) != 0 {
		t.Fatalf("port scan planned %+v", plans)
	}
}
