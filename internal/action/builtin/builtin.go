// Package builtin provides the actions every quell build has: `log`, which
// writes a structured record, and `exec.<name>`, which runs a command the
// operator configured (never one taken from an event) with typed
// parameters, shell-free.
package builtin

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/quell-ir/quell/internal/action"
)

type metrics struct {
	logRecords   *prometheus.CounterVec
	execRuns     *prometheus.CounterVec
	execDuration *prometheus.HistogramVec
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		logRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_action_log_records_total",
			Help: "Records written by the log action, by level.",
		}, []string{"level"}),
		execRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_action_exec_runs_total",
			Help: "Runs of exec action commands by command, phase (check, apply, verify, revert) and result (ok, absent (check exit 1), failed, retryable, timeout, canceled, error).",
		}, []string{"command", "phase", "result"}),
		execDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "quell_action_exec_duration_seconds",
			Help:    "Duration of exec action command runs.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"command", "phase"}),
	}
	if r == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.logRecords, m.execRuns, m.execDuration} {
		if err := r.Register(c); err != nil {
			return nil, fmt.Errorf("register builtin action metrics: %w", err)
		}
	}
	return m, nil
}

// Register validates cfg and adds `log` and one `exec.<name>` action per
// configured command to reg. log, mr and tp may be nil (discard, no
// metrics, no tracing).
func Register(reg *action.Registry, cfg Config, log *slog.Logger, mr prometheus.Registerer, tp trace.TracerProvider) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("builtin actions: %w", err)
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	m, err := newMetrics(mr)
	if err != nil {
		return err
	}
	tracer := tp.Tracer("github.com/quell-ir/quell/internal/action/builtin")

	var errs []error
	if err := reg.Register(action.Definition{Spec: logSpec(cfg.Log.Level), New: newLogConstructor(log.With("component", "action.log"), m)}); err != nil {
		errs = append(errs, err)
	}
	type named struct {
		name, action string
		cmd          Command
	}
	var cmds []named
	for _, name := range sortedKeys(cfg.Exec.Commands) {
		cmds = append(cmds, named{name: name, cmd: cfg.Exec.Commands[name]})
	}
	if cfg.BreakGlass != nil {
		cmds = append(cmds, named{name: "breakglass", action: BreakGlassAction, cmd: cfg.BreakGlass.command()})
	}
	for _, c := range cmds {
		name, cmd := c.name, c.cmd
		d := &execDef{
			name: name, action: c.action, cmd: cmd, timeout: cmd.Timeout, path: cfg.Exec.Path, maxOutput: cfg.Exec.MaxOutputBytes,
			log: log.With("component", "action.exec"), tracer: tracer, m: m,
		}
		if d.timeout == 0 {
			d.timeout = DefaultTimeout
		}
		for _, pn := range sortedKeys(cmd.Params) {
			d.params = append(d.params, cmd.Params[pn].param(pn))
		}
		sort.Slice(d.params, func(i, j int) bool { return d.params[i].Name < d.params[j].Name })
		if err := reg.Register(action.Definition{Spec: d.spec(), New: d.newAction}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
