package policy

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/txn"
)

type metrics struct {
	decisions  *prometheus.CounterVec
	errors     prometheus.Counter
	latency    prometheus.Histogram
	reloads    *prometheus.CounterVec
	lastReload prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_policy_decisions_total",
			Help: "Policy decisions by verdict (allow, deny, require_approval).",
		}, []string{"verdict"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quell_policy_evaluation_errors_total",
			Help: "Policy evaluations that failed and therefore denied (fail closed).",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "quell_policy_decision_duration_seconds",
			Help:    "Time to build the input and evaluate the prepared policy query.",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3, 100e-3},
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_policy_reloads_total",
			Help: "Policy loads by result (success, failure). A failed reload keeps the policy in force.",
		}, []string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quell_policy_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful policy load.",
		}),
	}
	for _, v := range []txn.Verdict{txn.Allow, txn.Deny, txn.RequireApproval} {
		m.decisions.WithLabelValues(string(v))
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.decisions, m.errors, m.latency, m.reloads, m.lastReload} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register policy metrics: %w", err)
		}
	}
	return m, nil
}

func levelFor(v txn.Verdict) slog.Level {
	if v == txn.Allow {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

func slogString(k, v string) slog.Attr { return slog.String(k, v) }
