package app

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/action/builtin"
	"github.com/quell-ir/quell/internal/txn"
)

// watchBreakGlass announces every break-glass grant and revocation the
// moment it is journaled. Until notifiers exist (Slack, PagerDuty), the
// announcement is an error-level structured log line, which log shipping
// turns into a page, and a metric an alert rule can watch.
func (a *App) watchBreakGlass() {
	grants := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quell_breakglass_events_total", Help: "Break-glass grants and their ends, by event (granted, revoked, expired, revert_failed).",
	}, []string{"event"})
	a.Metrics.MustRegister(grants)
	a.Engine.Observe(func(t txn.Transaction, from txn.State) {
		if t.Action != builtin.BreakGlassAction || t.Mode != txn.ModeEnforce {
			return
		}
		var ev string
		switch t.State {
		case txn.Active:
			ev = "granted"
		case txn.Reverted:
			ev = "revoked"
		case txn.Expired:
			ev = "expired"
		case txn.RevertFailed:
			ev = "revert_failed"
		default:
			return
		}
		grants.WithLabelValues(ev).Inc()
		approvers := make([]string, 0, len(t.Approvals))
		for _, ap := range t.Approvals {
			if ap.Approved {
				approvers = append(approvers, ap.By)
			}
		}
		a.log.Error("BREAK-GLASS "+ev, "person", t.Params["person"], "role", t.Params["role"], "reason", t.Params["reason"],
			"requested_by", t.Requester, "approved_by", approvers, "expires_at", t.ExpiresAt, "txn", t.ID)
	})
}
