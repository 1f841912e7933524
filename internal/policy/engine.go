package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/quell-ir/quell/internal/txn"
)

// EngineName is recorded in Decision.Engine.
const EngineName = "opa"

// Options carries the collaborators of an Engine. All are optional.
type Options struct {
	Logger         *slog.Logger
	Registerer     prometheus.Registerer // nil: metrics are not registered
	TracerProvider trace.TracerProvider  // nil: no spans
	// Incidents supplies the incident and its evidence. Nil: requests that
	// name an incident are decided with no evidence, which a policy that
	// requires evidence denies.
	Incidents IncidentSource
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Engine is the OPA-backed txn.Decider. The prepared query is held behind an
// atomic pointer: a decision in flight keeps using the query it loaded, a
// reload swaps in a new one only once it compiled, and a failed reload keeps
// the old one.
type Engine struct {
	cfg       Config
	log       *slog.Logger
	tracer    trace.Tracer
	incidents IncidentSource
	now       func() time.Time
	m         *metrics

	cur atomic.Pointer[prepared]

	reloadMu sync.Mutex // one reload at a time
	statusMu sync.Mutex
	lastErr  error
	lastErrT time.Time
}

type prepared struct {
	query    rego.PreparedEvalQuery
	revision string
	loadedAt time.Time
}

var _ txn.Decider = (*Engine)(nil)

// New loads and prepares the configured policy. It fails if the policy does
// not load, compile or verify: quell must not start with a policy it cannot
// evaluate.
func New(ctx context.Context, cfg Config, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("policy config: %w", err)
	}
	if cfg.Dir == "" && cfg.Bundle == "" {
		return nil, errors.New("policy config: policy.dir or policy.bundle is required")
	}
	e := &Engine{
		cfg:       cfg,
		log:       opts.Logger,
		incidents: opts.Incidents,
		now:       opts.Now,
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	tp := opts.TracerProvider
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	e.tracer = tp.Tracer("github.com/quell-ir/quell/internal/policy")
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	e.m = m
	if err := e.Reload(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// Revision is the revision of the policy in force: the bundle manifest's
// revision when it has one, else "sha256:" of the policy files.
func (e *Engine) Revision() string {
	if p := e.cur.Load(); p != nil {
		return p.revision
	}
	return ""
}

// Status reports the policy in force and the last reload failure, if any
// happened after the last success.
type Status struct {
	Revision    string    `json:"revision"`
	LoadedAt    time.Time `json:"loaded_at"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Status returns the engine's status, for /readyz and `quell policy status`.
func (e *Engine) Status() Status {
	s := Status{}
	if p := e.cur.Load(); p != nil {
		s.Revision, s.LoadedAt = p.revision, p.loadedAt
	}
	e.statusMu.Lock()
	defer e.statusMu.Unlock()
	if e.lastErr != nil {
		s.LastError, s.LastErrorAt = e.lastErr.Error(), e.lastErrT
	}
	return s
}

// Reload loads, verifies, compiles and prepares the policy again and swaps it
// in. On failure the policy in force stays, the error is returned, logged
// and kept in Status.
func (e *Engine) Reload(ctx context.Context) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	ctx, span := e.tracer.Start(ctx, "policy.reload")
	defer span.End()
	start := e.now()
	p, err := e.prepare(ctx)
	e.statusMu.Lock()
	defer e.statusMu.Unlock()
	if err != nil {
		e.lastErr, e.lastErrT = err, e.now()
		e.m.reloads.WithLabelValues("failure").Inc()
		span.RecordError(err)
		span.SetStatus(codes.Error, "reload failed")
		if old := e.cur.Load(); old != nil {
			e.log.Error("policy reload failed; keeping the policy in force", "err", err, "revision", old.revision)
		}
		return err
	}
	old := e.cur.Swap(p)
	e.lastErr = nil
	e.m.reloads.WithLabelValues("success").Inc()
	e.m.lastReload.Set(float64(p.loadedAt.Unix()))
	span.SetAttributes(attribute.String("policy.revision", p.revision))
	prev := ""
	if old != nil {
		prev = old.revision
	}
	e.log.Info("policy loaded", "revision", p.revision, "previous", prev, "took", e.now().Sub(start))
	return nil
}

func (e *Engine) prepare(ctx context.Context) (*prepared, error) {
	src := e.cfg.Dir
	if src == "" {
		src = e.cfg.Bundle
	}
	b, err := LoadBundle(src, e.cfg.Verification)
	if err != nil {
		return nil, err
	}
	root := ""
	if e.cfg.Dir != "" {
		root = e.cfg.Dir
	}
	rev := BundleRevision(b, root)
	r := rego.New(
		rego.Query(e.cfg.Query),
		rego.ParsedBundle("quell", b),
		rego.SetRegoVersion(ast.RegoV1),
		rego.StrictBuiltinErrors(false),
		// The data documents are stored as AST values, so that a rule
		// reading data.quell.settings does not convert them on every
		// evaluation.
		rego.StoreReadAST(true),
		rego.DisableInlining(keepRules),
	)
	// Partially evaluated at load time with the input unknown: what depends
	// only on the policy and its data (the settings merged with their
	// defaults, the exception list, constant lookups) is computed once here
	// and folded into the prepared query instead of on every decision. A
	// reload prepares again, so new data is folded in too.
	pq, err := r.PrepareForEval(ctx, rego.WithPartialEval())
	if err != nil {
		return nil, fmt.Errorf("prepare policy %s: %w", src, err)
	}
	return &prepared{query: pq, revision: rev, loadedAt: e.now()}, nil
}

// keepRules are rules that partial evaluation (see prepare) keeps as rules
// instead of copying their bodies into every rule that uses them. They are
// the facts of the default policy (examples/policies) that most deny rules
// test: inlined, each "or" of theirs multiplies the deny rules that every
// decision tries. Inlining never changes a result, and a name that a policy
// does not define has no effect, so this only tunes the shipped policy.
var keepRules = []string{
	"data.quell.is_credential_revocation",
	"data.quell.is_eradication",
	"data.quell.high_severity",
	"data.quell.excepted",
}

// LoadBundle loads a policy directory or bundle file, verifying its signature
// when keys are configured. Test files (*_test.rego) of a directory are left
// out: they are for `quell policy test`, not for deciding.
func LoadBundle(path string, v Verification) (*bundle.Bundle, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	fl := loader.NewFileLoader().WithRegoVersion(ast.RegoV1)
	if st.IsDir() {
		fl = fl.WithFilter(func(_ string, info fs.FileInfo, _ int) bool {
			return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
		})
	}
	if len(v.PublicKeys) > 0 {
		vc, err := verificationConfig(v)
		if err != nil {
			return nil, err
		}
		fl = fl.WithBundleVerificationConfig(vc)
	} else {
		fl = fl.WithSkipBundleVerification(true)
	}
	b, err := fl.AsBundle(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	if len(b.Modules) == 0 {
		return nil, fmt.Errorf("load policy %s: no .rego modules found", path)
	}
	return b, nil
}

func verificationConfig(v Verification) (*bundle.VerificationConfig, error) {
	keys := make(map[string]*bundle.KeyConfig, len(v.PublicKeys))
	for id, k := range v.PublicKeys {
		pem, err := os.ReadFile(k.File)
		if err != nil {
			return nil, fmt.Errorf("policy.verification.public_keys.%s: %w", id, err)
		}
		alg := k.Algorithm
		if alg == "" {
			alg = "RS256"
		}
		keys[id] = &bundle.KeyConfig{Key: string(pem), Algorithm: alg}
	}
	return bundle.NewVerificationConfig(keys, v.KeyID, v.Scope, v.Exclude), nil
}

// BundleRevision is the manifest revision when the bundle has one, else a
// sha256 over its module paths and sources and its data, so that two
// decisions name the exact policy text they were made with.
// root, when the bundle was loaded from a directory, is cut from module paths
// so that the same tree hashes the same wherever it is checked out.
func BundleRevision(b *bundle.Bundle, root string) string {
	if b.Manifest.Revision != "" {
		return b.Manifest.Revision
	}
	h := sha256.New()
	mods := slices.Clone(b.Modules)
	slices.SortFunc(mods, func(a, b bundle.ModuleFile) int { return strings.Compare(a.Path, b.Path) })
	for _, m := range mods {
		p := m.Path
		if root != "" {
			if rel, err := filepath.Rel(root, p); err == nil {
				p = rel
			}
		}
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.ToSlash(p), len(m.Raw))
		h.Write(m.Raw)
	}
	data, _ := json.Marshal(b.Data) // map keys sorted: stable
	h.Write(data)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))[:16]
}
