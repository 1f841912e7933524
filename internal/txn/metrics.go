package txn

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the engine's Prometheus metrics.
type Metrics struct {
	outcomes        *prometheus.CounterVec
	durations       *prometheus.HistogramVec
	actionDuration  *prometheus.HistogramVec
	rollbacks       *prometheus.CounterVec
	revertFailures  *prometheus.CounterVec
	retries         *prometheus.CounterVec
	inflight        prometheus.Gauge
	queueWait       prometheus.Histogram
	decisionLatency prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_transactions_total", Help: "Transactions that reached a terminal or resting state, by action, mode and state.",
		}, []string{"action", "mode", "state"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quell_transaction_duration_seconds", Help: "Time from a transaction's creation to its terminal state.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 3600},
		}, []string{"action", "state"}),
		actionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quell_action_duration_seconds", Help: "Latency of one action call, by action and phase (check, apply, verify, revert).",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"action", "phase"}),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_rollbacks_total", Help: "Reverts started, by action and cause (failure, ttl, request).",
		}, []string{"action", "cause"}),
		revertFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_revert_failures_total", Help: "Reverts that failed: containment may remain and a human must look.",
		}, []string{"action"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_action_retries_total", Help: "Retries of retryable action errors, by action and phase.",
		}, []string{"action", "phase"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quell_transactions_inflight", Help: "Transactions currently holding a concurrency slot.",
		}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_transaction_queue_wait_seconds", Help: "Time a transaction waited for a concurrency slot.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		decisionLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_decision_duration_seconds", Help: "Latency of the policy decision for one transaction.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.outcomes, m.durations, m.actionDuration, m.rollbacks, m.revertFailures, m.retries, m.inflight, m.queueWait, m.decisionLatency)
	}
	return m
}

func (m *Metrics) outcome(t *Transaction) {
	m.outcomes.WithLabelValues(t.Action, string(t.Mode), string(t.State)).Inc()
}

func (m *Metrics) duration(t *Transaction, now time.Time) {
	m.durations.WithLabelValues(t.Action, string(t.State)).Observe(now.Sub(t.CreatedAt).Seconds())
}
