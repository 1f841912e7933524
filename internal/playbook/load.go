package playbook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/google/cel-go/cel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"gopkg.in/yaml.v3"

	"github.com/quell-ir/quell/internal/action"
)

// LoadError is one problem in a playbook file, located by file, line and
// field, e.g. `playbooks/bf.yaml:12: spec.steps[0].params.address: ...`.
type LoadError struct {
	File   string `json:"file"`
	Line   int    `json:"line,omitempty"`
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

func (e *LoadError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// LoadErrors lists every problem found by one Load, so that `quell
// validate` can explain them all at once.
type LoadErrors []*LoadError

func (es LoadErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Option configures Load.
type Option func(*options)

type options struct {
	cfg     Config
	metrics *Metrics
	log     *slog.Logger
	tp      trace.TracerProvider
}

// WithConfig sets the evaluation limits (its Paths are not used: Load takes
// the paths as an argument).
func WithConfig(c Config) Option { return func(o *options) { o.cfg = c } }

// WithMetrics records loads and evaluations in m.
func WithMetrics(m *Metrics) Option { return func(o *options) { o.metrics = m } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithTracerProvider sets where Evaluate's spans go.
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tp = tp } }

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

// Load reads playbooks from files and directories, validates them against
// the actions in reg and compiles them. Any error in any file fails the
// whole load (the caller keeps its previous Set); the error is a LoadErrors
// listing every problem found.
func Load(ctx context.Context, paths []string, reg *action.Registry, opts ...Option) (*Set, error) {
	o := options{cfg: DefaultConfig()}
	for _, opt := range opts {
		opt(&o)
	}
	o.cfg = o.cfg.withDefaults()
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.tp == nil {
		o.tp = noop.NewTracerProvider()
	}
	tracer := o.tp.Tracer("github.com/quell-ir/quell/internal/playbook")
	_, span := tracer.Start(ctx, "playbook.Load")
	defer span.End()

	set, err := load(paths, reg, o.cfg)
	if err != nil {
		if o.metrics != nil {
			o.metrics.loads.WithLabelValues("error").Inc()
		}
		span.SetStatus(codes.Error, "invalid playbooks")
		return nil, err
	}
	set.metrics, set.log, set.tracer = o.metrics, o.log, tracer
	if o.metrics != nil {
		for _, pb := range set.playbooks {
			pb.counters = o.metrics.countersFor(pb.Name)
		}
		o.metrics.loads.WithLabelValues("success").Inc()
		o.metrics.loaded.Set(float64(len(set.playbooks)))
	}
	span.SetAttributes(attribute.Int("quell.playbooks", len(set.playbooks)))
	o.log.InfoContext(ctx, "playbooks loaded", "count", len(set.playbooks), "paths", paths)
	return set, nil
}

func load(paths []string, reg *action.Registry, cfg Config) (*Set, error) {
	if reg == nil {
		return nil, errors.New("load playbooks: no action registry")
	}
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("load playbooks: build CEL environment: %w", err)
	}
	files, ferrs := expandPaths(paths)
	l := &loader{reg: reg, env: env, cfg: cfg, seen: map[string]*Playbook{}}
	l.errs = append(l.errs, ferrs...)
	for _, f := range files {
		l.loadFile(f)
	}
	if len(l.errs) > 0 {
		return nil, l.errs
	}
	sort.SliceStable(l.out, func(i, j int) bool {
		if l.out[i].Priority != l.out[j].Priority {
			return l.out[i].Priority > l.out[j].Priority
		}
		return l.out[i].Name < l.out[j].Name
	})
	return &Set{playbooks: l.out}, nil
}

// expandPaths turns files and directories into a sorted list of files. A
// directory contributes the *.yaml and *.yml files directly inside it,
// skipping names that start with a dot.
func expandPaths(paths []string) ([]string, LoadErrors) {
	var (
		files []string
		errs  LoadErrors
	)
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			errs = append(errs, &LoadError{File: p, Reason: err.Error()})
			continue
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, &LoadError{File: p, Reason: err.Error()})
			continue
		}
		for _, e := range entries {
			n := e.Name()
			if strings.HasPrefix(n, ".") || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
				continue
			}
			full := filepath.Join(p, n)
			// Follow symlinks (ConfigMap mounts) but skip directories.
			if st, err := os.Stat(full); err == nil && st.IsDir() {
				continue
			}
			files = append(files, full)
		}
	}
	return files, errs
}

type loader struct {
	reg  *action.Registry
	env  *cel.Env
	cfg  Config
	seen map[string]*Playbook
	out  []*Playbook
	errs LoadErrors
	file string
}

func (l *loader) errf(n *yaml.Node, field, format string, args ...any) {
	e := &LoadError{File: l.file, Field: field, Reason: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line = n.Line
	}
	l.errs = append(l.errs, e)
}

func (l *loader) loadFile(path string) {
	l.file = path
	f, err := os.Open(path)
	if err != nil {
		l.errs = append(l.errs, &LoadError{File: path, Reason: err.Error()})
		return
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			// yaml.v3 says "yaml: line N: ...": keep its words, and stop:
			// the decoder cannot resynchronise after a syntax error.
			l.errs = append(l.errs, &LoadError{File: path, Reason: err.Error()})
			return
		}
		if len(doc.Content) == 0 || doc.Content[0].Tag == "!!null" {
			continue // an empty document, e.g. a trailing ---
		}
		l.document(doc.Content[0])
	}
}

// fields checks that n is a mapping with only the known keys (each once)
// and returns the value nodes by key.
func (l *loader) fields(n *yaml.Node, path string, known ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		l.errf(n, path, "must be a mapping")
		return nil
	}
	out := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := join(path, k.Value)
		if !contains(known, k.Value) {
			l.errf(k, field, "unknown field (known: %s)", strings.Join(known, ", "))
			continue
		}
		if _, dup := out[k.Value]; dup {
			l.errf(k, field, "given twice")
			continue
		}
		out[k.Value] = v
	}
	return out
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// scalar returns a scalar's text; ok is false (with an error recorded) for a
// mapping, a sequence or null.
func (l *loader) scalar(n *yaml.Node, field string) (string, bool) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		l.errf(n, field, "must be a single value")
		return "", false
	}
	return n.Value, true
}

func (l *loader) document(root *yaml.Node) {
	top := l.fields(root, "", "apiVersion", "kind", "metadata", "spec")
	if top == nil {
		return
	}
	if n, ok := top["apiVersion"]; !ok {
		l.errf(root, "apiVersion", "required (%s)", APIVersion)
	} else if v, ok := l.scalar(n, "apiVersion"); ok && v != APIVersion {
		l.errf(n, "apiVersion", "must be %s, got %q", APIVersion, v)
	}
	if n, ok := top["kind"]; !ok {
		l.errf(root, "kind", "required (%s)", Kind)
	} else if v, ok := l.scalar(n, "kind"); ok && v != Kind {
		l.errf(n, "kind", "must be %s, got %q", Kind, v)
		return
	}
	pb := &Playbook{File: l.file, Line: root.Line, Mode: ModeAudit}
	if n, ok := top["metadata"]; !ok {
		l.errf(root, "metadata", "required")
	} else if md := l.fields(n, "metadata", "name", "description", "labels"); md != nil {
		if nn, ok := md["name"]; !ok {
			l.errf(n, "metadata.name", "required")
		} else if v, ok := l.scalar(nn, "metadata.name"); ok {
			if len(v) > 253 || !nameRE.MatchString(v) {
				l.errf(nn, "metadata.name", "must be lower-case letters, digits, '-' and '.', got %q", v)
			} else if prev, dup := l.seen[v]; dup {
				l.errf(nn, "metadata.name", "playbook %q is already defined at %s:%d", v, prev.File, prev.Line)
			} else {
				pb.Name = v
			}
		}
		if dn, ok := md["description"]; ok {
			pb.Description, _ = l.scalar(dn, "metadata.description")
		}
		if ln, ok := md["labels"]; ok && ln.Kind != yaml.MappingNode {
			l.errf(ln, "metadata.labels", "must be a mapping")
		}
	}
	sn, ok := top["spec"]
	if !ok {
		l.errf(root, "spec", "required")
		return
	}
	spec := l.fields(sn, "spec", "match", "mode", "priority", "steps")
	if spec == nil {
		return
	}
	if n, ok := spec["mode"]; ok {
		if v, ok := l.scalar(n, "spec.mode"); ok {
			if m, ok := parseMode(v); ok {
				pb.Mode = m
			} else {
				l.errf(n, "spec.mode", "must be audit or enforce, got %q", v)
			}
		}
	}
	if n, ok := spec["priority"]; ok {
		if err := n.Decode(&pb.Priority); err != nil || n.Tag != "!!int" {
			l.errf(n, "spec.priority", "must be an integer, got %q", n.Value)
		}
	}
	if n, ok := spec["match"]; !ok {
		l.errf(sn, "spec.match", "required (use 'true' to match every event)")
	} else if v, ok := l.scalar(n, "spec.match"); ok {
		pb.Match = v
		prg, err := compileMatch(l.env, v, l.cfg)
		if err != nil {
			l.errf(n, "spec.match", "%v", err)
		}
		pb.prg = prg
	}
	if n, ok := spec["steps"]; !ok || n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		at := sn
		if ok {
			at = n
		}
		l.errf(at, "spec.steps", "must list at least one step")
	} else {
		names := map[string]int{}
		for i, stn := range n.Content {
			st, ok := l.step(stn, fmt.Sprintf("spec.steps[%d]", i), i, pb.Mode)
			if !ok {
				continue
			}
			if j, dup := names[st.Name]; dup {
				l.errf(stn, fmt.Sprintf("spec.steps[%d].name", i), "%q is also the name of spec.steps[%d]", st.Name, j)
				continue
			}
			names[st.Name] = i
			pb.Steps = append(pb.Steps, st)
		}
	}
	if pb.Name != "" {
		l.seen[pb.Name] = pb
		l.out = append(l.out, pb)
	}
}

func parseMode(s string) (Mode, bool) {
	switch Mode(s) {
	case ModeAudit, ModeEnforce:
		return Mode(s), true
	}
	return "", false
}

func (l *loader) step(n *yaml.Node, path string, idx int, pbMode Mode) (Step, bool) {
	before := len(l.errs)
	f := l.fields(n, path, "name", "action", "params", "ttl", "mode", "approval")
	if f == nil {
		return Step{}, false
	}
	st := Step{Name: fmt.Sprintf("step-%d", idx), Mode: pbMode, Line: n.Line}
	if nn, ok := f["name"]; ok {
		if v, ok := l.scalar(nn, path+".name"); ok {
			if !nameRE.MatchString(v) {
				l.errf(nn, path+".name", "must be lower-case letters, digits, '-' and '.', got %q", v)
			}
			st.Name = v
		}
	}
	if nn, ok := f["mode"]; ok {
		if v, ok := l.scalar(nn, path+".mode"); ok {
			if m, ok := parseMode(v); ok {
				st.Mode = m
			} else {
				l.errf(nn, path+".mode", "must be audit or enforce, got %q", v)
			}
		}
	}
	if nn, ok := f["approval"]; ok {
		if v, ok := l.scalar(nn, path+".approval"); ok {
			switch v {
			case "none":
			case "required":
				st.Approval = true
			default:
				l.errf(nn, path+".approval", "must be none or required, got %q", v)
			}
		}
	}
	if nn, ok := f["ttl"]; ok {
		if v, ok := l.scalar(nn, path+".ttl"); ok {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				l.errf(nn, path+".ttl", "not a non-negative duration (e.g. 90s, 1h): %q", v)
			}
			st.TTL = d
		}
	}
	an, ok := f["action"]
	if !ok {
		l.errf(n, path+".action", "required")
		return Step{}, false
	}
	name, ok := l.scalar(an, path+".action")
	if !ok {
		return Step{}, false
	}
	def, ok := l.reg.Lookup(name)
	if !ok {
		l.errf(an, path+".action", "unknown action %q (known: %s)", name, strings.Join(specNames(l.reg), ", "))
		return Step{}, false
	}
	st.Action, st.spec = name, def.Spec
	l.params(f["params"], n, path, &st)
	return st, len(l.errs) == before
}

func specNames(reg *action.Registry) []string {
	specs := reg.Specs()
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.Name
	}
	return out
}

// params checks the step's parameters against the action's spec: names are
// known, required ones are given, templates parse, and static values parse
// as their type now rather than on the first matching event.
func (l *loader) params(pn, stepNode *yaml.Node, path string, st *Step) {
	st.Params, st.static, st.tmpls = map[string]string{}, map[string]string{}, map[string]*template.Template{}
	byName := map[string]action.Param{}
	for _, p := range st.spec.Params {
		byName[p.Name] = p
	}
	nodes := map[string]*yaml.Node{}
	if pn != nil {
		if pn.Kind != yaml.MappingNode {
			l.errf(pn, path+".params", "must be a mapping")
			return
		}
		for i := 0; i+1 < len(pn.Content); i += 2 {
			k, v := pn.Content[i], pn.Content[i+1]
			field := path + ".params." + k.Value
			p, known := byName[k.Value]
			if !known {
				l.errf(k, field, "unknown parameter of %s (known: %s)", st.Action, strings.Join(paramNames(st.spec.Params), ", "))
				continue
			}
			if _, dup := nodes[k.Value]; dup {
				l.errf(k, field, "given twice")
				continue
			}
			nodes[k.Value] = v
			val, ok := l.scalar(v, field)
			if !ok {
				continue
			}
			st.Params[k.Value] = val
			if isTemplate(val) {
				t, err := parseTemplate(field, val)
				if err != nil {
					l.errf(v, field, "template: %s", oneLine(strings.TrimPrefix(err.Error(), "template: ")))
					continue
				}
				st.tmpls[k.Value] = t
				continue
			}
			// Parse the static value alone, as its type.
			p.Required, p.Default = false, ""
			if _, err := (action.Spec{Params: []action.Param{p}}).Validate(map[string]string{k.Value: val}); err != nil {
				l.errf(v, field, "%s", strings.TrimPrefix(err.Error(), fmt.Sprintf("parameter %q: ", k.Value)))
				continue
			}
			st.static[k.Value] = val
		}
	}
	for _, p := range st.spec.Params {
		if p.Required && p.Default == "" {
			if _, ok := nodes[p.Name]; !ok {
				at := pn
				if at == nil {
					at = stepNode
				}
				l.errf(at, path+".params."+p.Name, "required by %s", st.Action)
			}
		}
	}
}

func paramNames(ps []action.Param) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}
