// Package app wires quell's parts into the daemon: a library with New,
// Start and Stop, so that `quell serve` stays thin and tests can run the
// whole engine in-process.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/action/kube"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/enrich"
	"github.com/quell-ir/quell/internal/enrich/asset"
	"github.com/quell-ir/quell/internal/enrich/kubeindex"
	"github.com/quell-ir/quell/internal/enrich/netclass"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/intake"
	"github.com/quell-ir/quell/internal/pipeline"
	"github.com/quell-ir/quell/internal/playbook"
	"github.com/quell-ir/quell/internal/policy"
	"github.com/quell-ir/quell/internal/risk"
	"github.com/quell-ir/quell/internal/server"
	"github.com/quell-ir/quell/internal/source"
	"github.com/quell-ir/quell/internal/source/auth"
	"github.com/quell-ir/quell/internal/source/tail"
	"github.com/quell-ir/quell/internal/store/sqlite"
	"github.com/quell-ir/quell/internal/txn"
)

// Version is set at build time.
var Version = "dev"

// Options are the wiring choices that are not configuration.
type Options struct {
	Logger *slog.Logger
	// Register adds provider actions to the registry (tests use it to
	// plug in their own vehicles).
	Register func(reg *action.Registry) error
}

// App is a running quell.
type App struct {
	cfg       config.Config
	log       *slog.Logger
	Registry  *action.Registry
	Metrics   *prometheus.Registry
	Store     *sqlite.Store
	Engine    *txn.Engine
	Committer *intake.Committer
	Pipeline  *pipeline.Pipeline
	Protected *netclass.Table
	Policy    *policy.Engine // nil when policy is disabled
	Sources   *source.Registry
	Enricher  *enrich.Pipeline
	Scorer    *risk.Scorer
	Kube      *kube.Client // nil when kubernetes is disabled
	KubeIndex *kubeindex.Index
	tailers   []*tail.Tailer
	fw        fwProvider
	handler   http.Handler
	pbMetrics *playbook.Metrics

	mu        sync.Mutex
	playbooks *playbook.Set

	ln      net.Listener
	srv     *http.Server
	cancel  context.CancelFunc
	bg      sync.WaitGroup
	started bool
}

// New builds the app from a validated configuration.
func New(ctx context.Context, cfg config.Config, opts Options) (*App, error) {
	a := &App{cfg: cfg, log: opts.Logger, Registry: action.NewRegistry(), Metrics: prometheus.NewRegistry()}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := registerActions(a.Registry, cfg, a.log, a.Metrics); err != nil {
		return nil, err
	}
	if err := a.fw.register(a.Registry); err != nil {
		return nil, err
	}
	if opts.Register != nil {
		if err := opts.Register(a.Registry); err != nil {
			return nil, fmt.Errorf("register actions: %w", err)
		}
	}
	if cfg.Kubernetes.Enabled {
		kc, err := kube.New(cfg.Kubernetes.Config, kube.Options{Logger: a.log.With("component", "kube"), Registerer: a.Metrics})
		if err != nil {
			return nil, fmt.Errorf("kubernetes: %w", err)
		}
		if err := kube.Register(a.Registry, kc); err != nil {
			return nil, fmt.Errorf("kubernetes: %w", err)
		}
		a.Kube = kc
		if cfg.Kubernetes.AssetIndex {
			a.KubeIndex = kubeindex.New(kc.Clientset(), kubeindex.Options{Logger: a.log.With("component", "kubeindex"), Registerer: a.Metrics})
		}
	} else if err := registerKubeSpecs(a.Registry); err != nil {
		return nil, err
	}
	prot, err := buildProtected(cfg)
	if err != nil {
		return nil, err
	}
	a.Protected = prot
	srcs, err := source.New(cfg.Sources, a.Metrics)
	if err != nil {
		return nil, fmt.Errorf("sources: %w", err)
	}
	a.Sources = srcs
	chk, err := auth.New(cfg.IntakeAuth, a.Metrics, a.log.With("component", "intake-auth"))
	if err != nil {
		return nil, fmt.Errorf("intake auth: %w", err)
	}
	var assets []asset.Source
	if a.KubeIndex != nil {
		assets = append(assets, a.KubeIndex)
	}
	enr, err := enrich.New(cfg.Enrichment, enrich.Deps{Registerer: a.Metrics, Logger: a.log.With("component", "enrich"), Network: prot, Assets: assets})
	if err != nil {
		return nil, fmt.Errorf("enrichment: %w", err)
	}
	a.Enricher = enr

	st, err := sqlite.Open(ctx, cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	a.Store = st
	a.pbMetrics = playbook.NewMetrics(a.Metrics)
	if err := a.loadPlaybooks(ctx); err != nil {
		st.Close()
		return nil, err
	}
	var dec txn.Decider = txn.AllowAll{}
	if cfg.Policy.Enabled {
		pe, err := policy.New(ctx, cfg.Policy, policy.Options{
			Logger: a.log.With("component", "policy"), Registerer: a.Metrics, Incidents: evidence{st},
		})
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("policy: %w", err)
		}
		a.Policy, dec = pe, pe
	}
	if err := a.connectFirewall(ctx); err != nil {
		st.Close()
		return nil, err
	}
	eng, err := txn.New(cfg.Engine, txn.Deps{
		Store: st, Registry: a.Registry, Protectors: []txn.Protector{prot}, Decider: dec,
		Logger: a.log.With("component", "txn"), Metrics: txn.NewMetrics(a.Metrics),
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	a.Engine = eng
	a.watchBreakGlass()
	scorer, err := risk.New(cfg.Risk, history{st}, a.Metrics, a.log.With("component", "risk"))
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("risk: %w", err)
	}
	a.Scorer = scorer
	a.Pipeline = pipeline.New(cfg.Pipeline, pipeline.Deps{
		Store: st, Planner: planner{a}, Submitter: eng, Enricher: enr, Scorer: scorer,
		Logger: a.log.With("component", "pipeline"), Registerer: a.Metrics,
	})
	a.Committer = intake.NewCommitter(cfg.Intake, st, a.Pipeline.Enqueue, a.Metrics, a.log.With("component", "intake"))
	a.handler, err = server.New(server.Deps{
		Intake: a.Committer, Engine: eng, Store: st, Registry: a.Registry, Sources: sourcesAdapter{srcs, chk},
		Gatherer: a.Metrics, Metrics: a.Metrics, Logger: a.log.With("component", "http"),
		MaxBody: cfg.Intake.MaxBodyBytes, Version: Version, Auth: cfg.Server.Auth,
		Ready: func(ctx context.Context) error {
			_, err := st.CountEvents(ctx)
			return err
		},
	})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	return a, nil
}

func buildProtected(cfg config.Config) (*netclass.Table, error) {
	var nc netclass.Config
	nc = cfg.Enrichment.Network
	for _, c := range cfg.Protected.CIDRs {
		nc.Protected = append(nc.Protected, netclass.ProtectedPrefix{CIDR: c, Reason: "protected by configuration"})
	}
	for _, n := range cfg.Protected.Names {
		nc.ProtectedResources = append(nc.ProtectedResources, netclass.ProtectedResource{Kind: n.Kind, Value: n.Value, Reason: "protected by configuration"})
	}
	t, err := netclass.New(nc)
	if err != nil {
		return nil, fmt.Errorf("protected targets: %w", err)
	}
	if !cfg.Protected.NoImplicit {
		host, err := hostProtected()
		if err != nil {
			// The guard must fail closed: without knowing our own
			// addresses we cannot promise not to block them.
			return nil, fmt.Errorf("protected targets: %w", err)
		}
		if err := t.Replace("host", host); err != nil {
			return nil, fmt.Errorf("protected targets: %w", err)
		}
		if ap, err := netip.ParseAddrPort(cfg.Server.Addr); err == nil && !ap.Addr().IsUnspecified() {
			_ = t.Add("host", netclass.Entry{Prefix: netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()), Reason: "quell's own listen address"})
		}
	}
	return t, nil
}

func (a *App) loadPlaybooks(ctx context.Context) error {
	if len(a.cfg.Playbooks) == 0 {
		a.mu.Lock()
		a.playbooks = nil
		a.mu.Unlock()
		return nil
	}
	pc := playbook.DefaultConfig()
	pc.Paths = a.cfg.Playbooks
	set, err := playbook.Load(ctx, a.cfg.Playbooks, a.Registry, playbook.WithConfig(pc), playbook.WithMetrics(a.pbMetrics), playbook.WithLogger(a.log.With("component", "playbook")))
	if err != nil {
		return fmt.Errorf("load playbooks: %w", err)
	}
	a.mu.Lock()
	a.playbooks = set
	a.mu.Unlock()
	a.log.Info("playbooks loaded", "count", set.Len())
	return nil
}

// Reload re-reads playbooks and policies. A failing reload keeps the old
// configuration and says why.
func (a *App) Reload(ctx context.Context) error {
	var errs []error
	if err := a.loadPlaybooks(ctx); err != nil {
		errs = append(errs, err)
	}
	if a.Policy != nil {
		if err := a.Policy.Reload(ctx); err != nil {
			errs = append(errs, fmt.Errorf("reload policy: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		a.log.Error("reload failed; keeping the previous configuration", "err", err)
		return err
	}
	return nil
}

// evidence tells the policy which actions already completed for an
// incident, so that eradication can require forensic capture first.
type evidence struct{ st *sqlite.Store }

func (e evidence) PolicyIncident(ctx context.Context, id string) (policy.Incident, error) {
	inc := policy.Incident{ID: id, Evidence: []string{}}
	if id == "" {
		return inc, nil
	}
	ts, err := e.st.ListTxns(ctx, txn.Filter{IncidentID: id, States: []txn.State{txn.Completed, txn.Active}, Limit: 1000})
	if err != nil {
		return inc, fmt.Errorf("evidence of incident %s: %w", id, err)
	}
	for _, t := range ts {
		inc.Evidence = append(inc.Evidence, t.Action)
	}
	return inc, nil
}

// Playbooks returns the loaded set (nil when none).
func (a *App) Playbooks() *playbook.Set {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.playbooks
}

// planner adapts the current playbook set to the pipeline.
type planner struct{ a *App }

func (p planner) Plan(ctx context.Context, ev *event.Event, ec *event.Context) ([][]pipeline.Step, []error) {
	set := p.a.Playbooks()
	if set == nil {
		return nil, nil
	}
	plans, evalErrs := set.Evaluate(ctx, ev, ec)
	var errs []error
	for _, e := range evalErrs {
		errs = append(errs, e)
	}
	var out [][]pipeline.Step
	idx := map[string]int{}
	for _, pl := range plans {
		i, ok := idx[pl.Playbook]
		if !ok {
			i = len(out)
			idx[pl.Playbook] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], pipeline.Step{
			Playbook: pl.Playbook, Step: pl.Step, StepName: pl.StepName, Action: pl.Action,
			Params: pl.Params, TTL: pl.TTL, Mode: txn.Mode(pl.Mode), Approval: pl.Approval,
		})
	}
	return out, errs
}

// Handler is the HTTP API.
func (a *App) Handler() http.Handler { return a.handler }

// Start recovers transactions, starts the pipeline and listens.
func (a *App) Start(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	if err := a.Engine.Start(bg); err != nil {
		cancel()
		return err
	}
	a.bg.Add(1)
	go func() { defer a.bg.Done(); a.Committer.Run(bg) }()
	a.Enricher.Start(bg)
	a.Scorer.Start(bg)
	if a.Kube != nil {
		if err := a.Kube.Start(bg); err != nil {
			cancel()
			return fmt.Errorf("kubernetes: %w", err)
		}
		if a.KubeIndex != nil {
			// Until its caches sync every lookup misses: enrichment then
			// lacks Kubernetes context, which is reported, not fatal.
			if err := a.KubeIndex.Start(bg); err != nil {
				a.log.Warn("kubernetes asset index not synced; events get no pod/service context until it is", "err", err)
			}
		}
	}
	if err := a.startTails(bg); err != nil {
		cancel()
		return err
	}
	a.Pipeline.Start(bg)
	if a.Policy != nil && a.cfg.Policy.Watch {
		a.bg.Add(1)
		go func() { defer a.bg.Done(); a.Policy.Watch(bg) }()
	}
	ln, err := net.Listen("tcp", a.cfg.Server.Addr)
	if err != nil {
		cancel()
		return fmt.Errorf("listen on %s: %w", a.cfg.Server.Addr, err)
	}
	a.ln = ln
	a.srv = &http.Server{
		Handler: a.handler, ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: a.cfg.Server.ReadTimeout, WriteTimeout: a.cfg.Server.WriteTimeout,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "err", err)
		}
	}()
	a.started = true
	a.log.Info("quell started", "addr", ln.Addr().String(), "mode", a.Engine.Mode(), "data", a.cfg.DataDir, "version", Version)
	return nil
}

// Addr is the listening address (useful with port 0).
func (a *App) Addr() string {
	if a.ln == nil {
		return ""
	}
	return a.ln.Addr().String()
}

// Stop drains: the listener stops taking requests, accepted events are
// committed, in-flight transactions get until ctx's deadline, then the
// store closes. Anything cut off is in the journal and recovered at start.
func (a *App) Stop(ctx context.Context) error {
	var errs []error
	if a.srv != nil {
		if err := a.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	}
	if err := a.Engine.Stop(ctx); err != nil {
		errs = append(errs, err)
	}
	if a.cancel != nil {
		a.cancel()
	}
	a.bg.Wait()
	a.Pipeline.Wait()
	if err := a.Enricher.Close(); err != nil {
		errs = append(errs, err)
	}
	if a.fw.b != nil {
		a.fw.b.Close()
	}
	if err := a.Store.Close(); err != nil {
		errs = append(errs, err)
	}
	a.log.Info("quell stopped")
	return errors.Join(errs...)
}

// ValidatePlaybooks loads the configured playbooks against the actions this
// build registers, without opening the store.
func ValidatePlaybooks(ctx context.Context, cfg config.Config) error {
	if len(cfg.Playbooks) == 0 {
		return nil
	}
	reg, err := Registry(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	pc := playbook.DefaultConfig()
	pc.Paths = cfg.Playbooks
	_, err = playbook.Load(ctx, cfg.Playbooks, reg, playbook.WithConfig(pc))
	return err
}

// Registry returns the registry of every action this build offers, for
// `quell actions ls`.
func Registry(ctx context.Context, cfg config.Config, log *slog.Logger) (*action.Registry, error) {
	reg := action.NewRegistry()
	if err := registerActions(reg, cfg, log, nil); err != nil {
		return nil, err
	}
	var fw fwProvider
	if err := fw.register(reg); err != nil {
		return nil, err
	}
	if err := registerKubeSpecs(reg); err != nil {
		return nil, err
	}
	return reg, nil
}

// registerKubeSpecs makes the Kubernetes actions known (for playbooks and
// `quell actions ls`) when the provider is off: building one fails with a
// clear reason instead of an unknown-action error.
func registerKubeSpecs(reg *action.Registry) error {
	for _, d := range kube.Definitions(nil) {
		name := d.Spec.Name
		err := reg.Register(action.Definition{Spec: d.Spec, New: func(action.Values) (action.Action, error) {
			return nil, fmt.Errorf("%s: the kubernetes provider is not enabled (kubernetes.enabled: true)", name)
		}})
		if err != nil {
			return err
		}
	}
	return nil
}
