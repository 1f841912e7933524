package playbook

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the playbook counters. They outlive a reload: build them once
// with NewMetrics and pass them to every Load with WithMetrics.
type Metrics struct {
	evaluations *prometheus.CounterVec
	stepErrors  *prometheus.CounterVec
	duration    prometheus.Histogram
	loads       *prometheus.CounterVec
	loaded      prometheus.Gauge
}

// NewMetrics registers the playbook metrics with r (nil: not registered,
// useful in tests). Registering twice with one Registerer panics, as
// promauto does: it is a wiring bug.
func NewMetrics(r prometheus.Registerer) *Metrics {
	f := promauto.With(r)
	return &Metrics{
		evaluations: f.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_playbook_evaluations_total",
			Help: "Match evaluations by playbook and result (match, nomatch, error).",
		}, []string{"playbook", "result"}),
		stepErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_playbook_step_errors_total",
			Help: "Steps of matching playbooks that produced no plan because their parameters did not render or validate.",
		}, []string{"playbook"}),
		duration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "quell_playbook_evaluation_duration_seconds",
			Help:    "Time to evaluate every playbook against one event.",
			Buckets: []float64{1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2, 0.25},
		}),
		loads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_playbook_loads_total",
			Help: "Playbook set loads by result (success, error).",
		}, []string{"result"}),
		loaded: f.NewGauge(prometheus.GaugeOpts{
			Name: "quell_playbook_loaded",
			Help: "Playbooks in the last successfully loaded set.",
		}),
	}
}
