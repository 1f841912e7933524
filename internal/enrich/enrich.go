// Package enrich gathers context about an event's addresses before risk is
// scored: internal or protected (netclass), threat intelligence (local feeds
// and HTTP reputation providers), GeoIP/ASN and asset ownership. Enrichers
// run in parallel under one deadline per event; one that is slow or fails
// never holds the pipeline past it, and is recorded as missing (fail-open)
// or marks the event fail-closed (no automatic action), by configuration.
package enrich

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/quell-ir/quell/internal/enrich/asset"
	"github.com/quell-ir/quell/internal/enrich/geoip"
	"github.com/quell-ir/quell/internal/enrich/httprep"
	"github.com/quell-ir/quell/internal/enrich/intel"
	"github.com/quell-ir/quell/internal/enrich/netclass"
	"github.com/quell-ir/quell/internal/event"
)

// Threat combination rules.
const (
	CombineMax     = "max"      // the strongest single source
	CombineNoisyOr = "noisy_or" // 1 - Π(1 - s_i): independent sources reinforce each other
)

// MaxAddresses bounds how many addresses of one event are enriched: event
// fields are attacker-controlled and an event listing thousands of
// observables must not cost thousands of lookups.
const MaxAddresses = 16

// Config configures enrichment. The lead embeds it as `enrichment:`.
type Config struct {
	// Deadline bounds all enrichers of one event. Default 50ms.
	Deadline time.Duration `yaml:"deadline"`
	// Combine is how threat sources combine into one score: max (default)
	// or noisy_or.
	Combine string `yaml:"combine"`
	// Network classifies internal and protected addresses.
	Network netclass.Config `yaml:"network"`
	// Intel holds the local threat feeds.
	Intel intel.Config `yaml:"intel"`
	// Providers are HTTP reputation services.
	Providers []httprep.Config `yaml:"providers"`
	// GeoIP names MaxMind databases.
	GeoIP geoip.Config `yaml:"geoip"`
	// Assets is the static asset inventory.
	Assets asset.Config `yaml:"assets"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Deadline: 50 * time.Millisecond,
		Combine:  CombineMax,
		Network:  netclass.DefaultConfig(),
		Intel:    intel.DefaultConfig(),
		GeoIP:    geoip.DefaultConfig(),
		Assets:   asset.DefaultConfig(),
	}
}

// Validate checks every field and names the offending one.
func (c Config) Validate() error {
	if c.Deadline <= 0 {
		return fmt.Errorf("deadline: must be positive, got %s", c.Deadline)
	}
	if c.Combine != CombineMax && c.Combine != CombineNoisyOr {
		return fmt.Errorf("combine: must be max or noisy_or, got %q", c.Combine)
	}
	if err := c.Network.Validate(); err != nil {
		return fmt.Errorf("network.%w", err)
	}
	if err := c.Intel.Validate(); err != nil {
		return fmt.Errorf("intel.%w", err)
	}
	names := map[string]bool{"intel": true, "geoip": true, "asset": true}
	for _, f := range c.Intel.Feeds {
		names[f.Name] = true
	}
	for i, p := range c.Providers {
		if err := p.WithDefaults().Validate(); err != nil {
			return fmt.Errorf("providers[%d].%w", i, err)
		}
		if names[p.Name] {
			return fmt.Errorf("providers[%d].name: %q is already used by another enricher or feed", i, p.Name)
		}
		names[p.Name] = true
	}
	if err := c.GeoIP.Validate(); err != nil {
		return fmt.Errorf("geoip.%w", err)
	}
	if err := c.Assets.Validate(); err != nil {
		return fmt.Errorf("assets.%w", err)
	}
	return nil
}

// Deps are the pipeline's collaborators.
type Deps struct {
	Registerer     prometheus.Registerer // required
	Logger         *slog.Logger          // default: discard
	TracerProvider trace.TracerProvider  // default: no-op
	HTTPClient     *http.Client          // for providers; default: a plain client
	Now            func() time.Time      // default: time.Now
	// Assets are live asset sources asked before the static inventory
	// (the Kubernetes pod/service index).
	Assets []asset.Source
	// Network, when set, is the classifier to use instead of one built
	// from Config.Network: the engine shares its protected-targets table
	// (with its host addresses and gateway) so that what enrichment calls
	// protected is exactly what the guard refuses. Config.Network is then
	// ignored.
	Network *netclass.Table
}

// input is what every enricher sees: the addresses, parsed once.
type input struct {
	event   *event.Event
	subject netip.Addr // the address the threat verdict is about
	addrs   []netip.Addr
	intern  map[netip.Addr]bool
}

// partial is one enricher's contribution, merged after the deadline.
type partial struct {
	threat []event.ThreatSource
	addrs  map[netip.Addr]event.AddressInfo
}

type enricher struct {
	name       string
	failClosed bool
	run        func(ctx context.Context, in *input) (partial, error)
}

type metrics struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	total    prometheus.Histogram
	events   *prometheus.CounterVec
}

// Pipeline runs the enrichers.
type Pipeline struct {
	cfg       Config
	log       *slog.Logger
	tracer    trace.Tracer
	net       *netclass.Table
	feeds     *intel.Feeds
	static    *asset.Static
	geo       *geoip.DB
	enrichers []enricher
	m         metrics

	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New builds the pipeline: loads feeds, opens databases and inventories.
func New(cfg Config, d Deps) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("enrichment config: %w", err)
	}
	if d.Registerer == nil {
		return nil, errors.New("enrichment: a prometheus Registerer is required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.TracerProvider == nil {
		d.TracerProvider = noop.NewTracerProvider()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	p := &Pipeline{cfg: cfg, log: d.Logger, tracer: d.TracerProvider.Tracer("github.com/quell-ir/quell/internal/enrich")}
	p.m = metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "quell_enricher_duration_seconds", Help: "Time one enricher took for one event.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 2.5, 14),
		}, []string{"enricher"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_enricher_errors_total", Help: "Enricher failures, by kind (timeout, network, status, decode, schema, panic, ...).",
		}, []string{"enricher", "kind"}),
		total: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quell_enrich_duration_seconds", Help: "Time to enrich one event, all enrichers.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 2.5, 14),
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quell_enrich_events_total", Help: "Events enriched, by outcome (complete, missing, fail_closed).",
		}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{p.m.duration, p.m.errors, p.m.total, p.m.events} {
		if err := d.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("register enrich metrics: %w", err)
		}
	}
	var err error
	if p.net = d.Network; p.net == nil {
		if p.net, err = netclass.New(cfg.Network); err != nil {
			return nil, err
		}
	}
	im, err := intel.NewMetrics(d.Registerer)
	if err != nil {
		return nil, err
	}
	if p.feeds, err = intel.New(cfg.Intel, im, d.Logger, d.Now); err != nil {
		return nil, err
	}
	if len(cfg.Intel.Feeds) > 0 {
		p.enrichers = append(p.enrichers, enricher{name: "intel", run: p.runIntel})
	}
	if len(cfg.Providers) > 0 {
		hm, err := httprep.NewMetrics(d.Registerer)
		if err != nil {
			return nil, err
		}
		for _, pc := range cfg.Providers {
			prov, err := httprep.New(pc, httprep.Deps{Client: d.HTTPClient, Metrics: hm, Tracer: d.TracerProvider, Now: d.Now})
			if err != nil {
				return nil, err
			}
			pc = prov.Config()
			p.enrichers = append(p.enrichers, enricher{name: pc.Name, failClosed: pc.FailClosed, run: providerRun(prov, pc.QueryInternal)})
		}
	}
	if cfg.GeoIP.Enabled() {
		if p.geo, err = geoip.Open(cfg.GeoIP); err != nil {
			return nil, fmt.Errorf("geoip.%w", err)
		}
		p.enrichers = append(p.enrichers, enricher{name: "geoip", failClosed: cfg.GeoIP.FailClosed, run: p.runGeoIP})
	}
	sources := asset.Chain(slices.Clone(d.Assets))
	if cfg.Assets.Path != "" {
		if p.static, err = asset.Open(cfg.Assets.Path, d.Logger); err != nil {
			p.Close()
			return nil, fmt.Errorf("assets.path: %w", err)
		}
		sources = append(sources, p.static)
	}
	if len(sources) > 0 {
		p.enrichers = append(p.enrichers, enricher{name: "asset", failClosed: cfg.Assets.FailClosed, run: assetRun(sources)})
	}
	return p, nil
}

// Protector returns the protected-targets table: the txn engine's
// Protector, to which the engine adds its host addresses and gateway.
func (p *Pipeline) Protector() *netclass.Table { return p.net }

// Start watches the feed, GeoIP and inventory files and reloads them on change,
// until ctx ends or Close is called.
func (p *Pipeline) Start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel != nil {
		return
	}
	ctx, p.cancel = context.WithCancel(ctx)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := p.feeds.Watch(ctx); err != nil {
			p.log.Error("threat feed watcher stopped", "err", err)
		}
	}()
	if p.geo != nil {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.geo.Watch(ctx, p.log, p.cfg.Intel.Debounce); err != nil {
				p.log.Error("geoip watcher stopped", "err", err)
			}
		}()
	}
	if p.static != nil {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.static.Watch(ctx, p.cfg.Intel.Debounce); err != nil {
				p.log.Error("asset inventory watcher stopped", "err", err)
			}
		}()
	}
}

// Close stops the watchers and closes the databases.
func (p *Pipeline) Close() error {
	p.mu.Lock()
	if p.cancel != nil {
		p.cancel()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if p.geo != nil {
		return p.geo.Close()
	}
	return nil
}

// addresses collects the event's addresses: source, destination, then IP
// observables, deduplicated and bounded.
func addresses(ev *event.Event) (subject netip.Addr, out []netip.Addr) {
	seen := map[netip.Addr]bool{}
	add := func(s string) netip.Addr {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Addr{}
		}
		a = a.Unmap().WithZone("")
		if !seen[a] && len(out) < MaxAddresses {
			seen[a] = true
			out = append(out, a)
		}
		return a
	}
	if ev.SrcEndpoint != nil && ev.SrcEndpoint.IP != "" {
		subject = add(ev.SrcEndpoint.IP)
	}
	if ev.DstEndpoint != nil && ev.DstEndpoint.IP != "" {
		add(ev.DstEndpoint.IP)
	}
	for _, o := range ev.Observables {
		switch o.Type {
		case "ip", "ipv4", "ipv6", "ip_address":
			if a := add(o.Value); !subject.IsValid() {
				subject = a
			}
		}
	}
	return subject, out
}

type outcome struct {
	i   int
	p   partial
	err error
}

// Enrich gathers context about ev within the deadline. It never fails: what
// could not be learned is recorded in Missing/Errors, or FailClosed.
func (p *Pipeline) Enrich(ctx context.Context, ev *event.Event) *event.Enrichment {
	start := time.Now()
	ctx, span := p.tracer.Start(ctx, "enrich")
	defer span.End()
	in := &input{event: ev, intern: map[netip.Addr]bool{}}
	in.subject, in.addrs = addresses(ev)
	out := &event.Enrichment{}
	if len(in.addrs) > 0 {
		out.Addresses = make(map[string]event.AddressInfo, len(in.addrs))
	}
	// Classification is local and instant: done inline, before the
	// enrichers, which need to know what is internal.
	for _, a := range in.addrs {
		info := event.AddressInfo{Internal: p.net.IsInternal(a)}
		in.intern[a] = info.Internal
		if _, ok := p.net.ProtectedAddr(a); ok {
			info.Protected = true
			out.Protected = append(out.Protected, "ip:"+a.String())
		}
		out.Addresses[a.String()] = info
	}
	if in.subject.IsValid() {
		out.Internal = in.intern[in.subject]
	}
	for _, ent := range ev.Entities() {
		if ent.Kind == "ip" {
			continue
		}
		if _, ok := p.net.ProtectedName(ent.Kind, ent.Value); ok {
			out.Protected = append(out.Protected, ent.String())
		}
	}

	if len(p.enrichers) > 0 && len(in.addrs) > 0 {
		p.runAll(ctx, in, out)
	}
	out.Threat = p.combine(out.Threat.Sources)
	span.SetAttributes(attribute.Float64("quell.threat", out.Threat.Score), attribute.Int("quell.missing", len(out.Missing)))
	switch {
	case out.FailClosed:
		p.m.events.WithLabelValues("fail_closed").Inc()
	case len(out.Missing) > 0:
		p.m.events.WithLabelValues("missing").Inc()
	default:
		p.m.events.WithLabelValues("complete").Inc()
	}
	p.m.total.Observe(time.Since(start).Seconds())
	return out
}

func (p *Pipeline) runAll(ctx context.Context, in *input, out *event.Enrichment) {
	dctx, cancel := context.WithTimeout(ctx, p.cfg.Deadline)
	defer cancel()
	results := make(chan outcome, len(p.enrichers)) // buffered: late enrichers never block
	for i, e := range p.enrichers {
		go func() {
			ectx, span := p.tracer.Start(dctx, "enrich."+e.name)
			start := time.Now()
			var r outcome
			func() {
				defer func() {
					if v := recover(); v != nil {
						r.err = &kindError{kind: "panic", err: fmt.Errorf("panic: %v", v)}
					}
				}()
				r.p, r.err = e.run(ectx, in)
			}()
			r.i = i
			p.m.duration.WithLabelValues(e.name).Observe(time.Since(start).Seconds())
			if r.err != nil {
				span.RecordError(r.err)
				span.SetStatus(codes.Error, errKind(r.err))
			}
			span.End()
			results <- r
		}()
	}
	done := make([]bool, len(p.enrichers))
	var outs []outcome
wait:
	for range p.enrichers {
		select {
		case r := <-results:
			done[r.i] = true
			outs = append(outs, r)
		case <-dctx.Done():
			break wait
		}
	}
	// Merge in enricher order so the result does not depend on timing.
	sort.Slice(outs, func(a, b int) bool { return outs[a].i < outs[b].i })
	fail := func(e enricher, kind string, err error) {
		p.m.errors.WithLabelValues(e.name, kind).Inc()
		out.Missing = append(out.Missing, e.name)
		if out.Errors == nil {
			out.Errors = map[string]string{}
		}
		out.Errors[e.name] = err.Error()
		if e.failClosed {
			out.FailClosed = true
		}
		p.log.Debug("enricher failed", "enricher", e.name, "kind", kind, "err", err, "fail_closed", e.failClosed)
	}
	for _, r := range outs {
		e := p.enrichers[r.i]
		if r.err != nil {
			fail(e, errKind(r.err), r.err)
			continue
		}
		out.Threat.Sources = append(out.Threat.Sources, r.p.threat...)
		for a, info := range r.p.addrs {
			k := a.String()
			out.Addresses[k] = mergeInfo(out.Addresses[k], info)
		}
	}
	for i, ok := range done {
		if !ok {
			fail(p.enrichers[i], "timeout", fmt.Errorf("timeout: no answer within the %s enrichment deadline", p.cfg.Deadline))
		}
	}
}

type kindError struct {
	kind string
	err  error
}

func (e *kindError) Error() string { return e.err.Error() }
func (e *kindError) Unwrap() error { return e.err }

func errKind(err error) string {
	var k *kindError
	if errors.As(err, &k) {
		return k.kind
	}
	return httprep.KindOf(err)
}

// mergeInfo fills a's empty fields from b.
func mergeInfo(a, b event.AddressInfo) event.AddressInfo {
	if a.Country == "" {
		a.Country = b.Country
	}
	if a.City == "" {
		a.City = b.City
	}
	if a.ASN == 0 {
		a.ASN, a.ASOrg = b.ASN, b.ASOrg
	}
	if a.Owner == "" {
		a.Owner = b.Owner
	}
	if len(b.Asset) > 0 {
		if a.Asset == nil {
			a.Asset = map[string]string{}
		}
		for k, v := range b.Asset {
			if _, ok := a.Asset[k]; !ok {
				a.Asset[k] = v
			}
		}
	}
	return a
}

// combine folds the sources into one score, sorted by name for stable
// output. A source with score 0 (a provider that knows the address and
// finds nothing) is kept: it shows the address was checked.
func (p *Pipeline) combine(src []event.ThreatSource) event.Threat {
	sort.SliceStable(src, func(i, j int) bool { return src[i].Name < src[j].Name })
	return event.Threat{Score: Combine(p.cfg.Combine, src), Sources: src}
}

// Combine applies rule to the sources' scores.
func Combine(rule string, src []event.ThreatSource) float64 {
	if rule == CombineNoisyOr {
		keep := 1.0
		for _, s := range src {
			keep *= 1 - clamp01(s.Score)
		}
		return 1 - keep
	}
	best := 0.0
	for _, s := range src {
		best = max(best, clamp01(s.Score))
	}
	return best
}

func clamp01(v float64) float64 {
	if !(v >= 0) {
		return 0
	}
	return min(v, 1)
}

func (p *Pipeline) runIntel(_ context.Context, in *input) (partial, error) {
	if !in.subject.IsValid() {
		return partial{}, nil
	}
	return partial{threat: p.feeds.Lookup(in.subject)}, nil
}

func providerRun(prov *httprep.Provider, queryInternal bool) func(context.Context, *input) (partial, error) {
	return func(ctx context.Context, in *input) (partial, error) {
		if !in.subject.IsValid() || (in.intern[in.subject] && !queryInternal) {
			return partial{}, nil
		}
		r, err := prov.Lookup(ctx, in.subject)
		if err != nil {
			return partial{}, err
		}
		note := "answered by " + prov.Name()
		if r.Cached {
			note += " (cached)"
		}
		return partial{threat: []event.ThreatSource{{Name: prov.Name(), Score: r.Score, Note: note}}}, nil
	}
}

func (p *Pipeline) runGeoIP(_ context.Context, in *input) (partial, error) {
	out := partial{addrs: map[netip.Addr]event.AddressInfo{}}
	for _, a := range in.addrs {
		if in.intern[a] {
			continue
		}
		g, found, err := p.geo.Lookup(a)
		if err != nil {
			return partial{}, &kindError{kind: "lookup", err: err}
		}
		if found {
			out.addrs[a] = event.AddressInfo{Country: g.Country, City: g.City, ASN: g.ASN, ASOrg: g.ASOrg}
		}
	}
	return out, nil
}

func assetRun(src asset.Source) func(context.Context, *input) (partial, error) {
	return func(ctx context.Context, in *input) (partial, error) {
		out := partial{addrs: map[netip.Addr]event.AddressInfo{}}
		for _, a := range in.addrs {
			info, ok := src.Lookup(ctx, a)
			if !ok {
				continue
			}
			m := map[string]string{}
			for k, v := range info.Labels {
				m[k] = v
			}
			for k, v := range map[string]string{"service": info.Service, "environment": info.Environment, "criticality": info.Criticality} {
				if v != "" {
					m[k] = v
				}
			}
			if len(m) == 0 {
				m = nil
			}
			out.addrs[a] = event.AddressInfo{Owner: info.Owner, Asset: m}
		}
		return out, ctx.Err()
	}
}
