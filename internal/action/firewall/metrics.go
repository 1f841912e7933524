package firewall

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	flushes      *prometheus.CounterVec   // op, result
	flushSeconds *prometheus.HistogramVec // op
	batchElems   prometheus.Histogram
	ctDeleted    prometheus.Counter
	denied       *prometheus.CounterVec // reason: protected, blast_radius, overlap
	reconcile    *prometheus.CounterVec // outcome: reapplied, unknown, realigned
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_firewall_netlink_batches_total",
			Help: "nftables netlink batches sent, by operation and result.",
		}, []string{"op", "result"}),
		flushSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "quell_firewall_netlink_batch_duration_seconds",
			Help:    "Time to send one nftables batch and read its acknowledgements.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}, []string{"op"}),
		batchElems: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "quell_firewall_batch_elements",
			Help:    "Elements per coalesced Apply batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		ctDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quell_firewall_conntrack_deleted_total",
			Help: "Conntrack entries deleted to cut established flows of blocked peers.",
		}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_firewall_denied_total",
			Help: "Pre-checks that refused a firewall action, by reason.",
		}, []string{"reason"}),
		reconcile: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_firewall_reconcile_elements_total",
			Help: "Elements found by Reconcile, by outcome.",
		}, []string{"outcome"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.flushes, m.flushSeconds, m.batchElems, m.ctDeleted, m.denied, m.reconcile} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("firewall metrics: already registered (one Backend per Registerer): %w", err)
			}
			return nil, fmt.Errorf("firewall metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observeFlush(op string, _ int, d time.Duration, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	m.flushes.WithLabelValues(op, res).Inc()
	m.flushSeconds.WithLabelValues(op).Observe(d.Seconds())
}
