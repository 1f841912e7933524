package playbook

import (
	"errors"
	"fmt"
	"strings"
	"text/template"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
)

// newEnv builds the CEL environment match expressions compile in. The
// variables are generic maps, as Kubernetes exposes objects to CEL, with the
// libraries Kubernetes offers (strings, sets, lists, network: ip() and
// cidr()) and optional field syntax (event.?src_endpoint.?ip).
func newEnv() (*cel.Env, error) {
	mapType := cel.MapType(cel.StringType, cel.DynType)
	return cel.NewEnv(
		cel.Variable("event", mapType),
		cel.Variable("enrichment", mapType),
		cel.Variable("risk", mapType),
		cel.Variable("incident", mapType),
		cel.OptionalTypes(),
		cel.CrossTypeNumericComparisons(true), // JSON numbers are doubles: risk.score >= 40 must work
		ext.Strings(),
		ext.Sets(),
		ext.Lists(ext.ListsMaxRangeSize(10000)),
		ext.Network(),
	)
}

// compileMatch compiles a match expression into a bounded program, checking
// at load time that it returns a bool.
func compileMatch(env *cel.Env, src string, cfg Config) (cel.Program, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("required (use 'true' to match every event)")
	}
	if len(src) > cfg.MaxMatchLength {
		return nil, fmt.Errorf("longer than %d characters", cfg.MaxMatchLength)
	}
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return nil, fmt.Errorf("does not compile: %s", oneLine(iss.Err().Error()))
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("must return bool, returns %s (compare it, e.g. `... == true`)", ast.OutputType())
	}
	prg, err := env.Program(ast,
		cel.CostLimit(cfg.MatchCostLimit),
		// Cancel a long comprehension when the caller's context ends.
		cel.InterruptCheckFrequency(100),
	)
	if err != nil {
		return nil, fmt.Errorf("does not build: %w", err)
	}
	return prg, nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// templateFuncs are the helpers parameter templates may call. All are pure:
// no environment, files, network or time, so a template can only reshape
// what the event, its context and the incident already hold.
func templateFuncs() template.FuncMap {
	return template.FuncMap{
		"lower":      strings.ToLower,
		"upper":      strings.ToUpper,
		"trim":       strings.TrimSpace,
		"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
		"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
		"replace":    func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
		"contains":   func(sub, s string) bool { return strings.Contains(s, sub) },
		"hasPrefix":  func(prefix, s string) bool { return strings.HasPrefix(s, prefix) },
		"default": func(def any, v any) any {
			if isEmpty(v) {
				return def
			}
			return v
		},
		"join": func(sep string, v any) (string, error) {
			list, ok := v.([]any)
			if !ok {
				if ss, ok := v.([]string); ok {
					return strings.Join(ss, sep), nil
				}
				return "", fmt.Errorf("join: not a list: %T", v)
			}
			parts := make([]string, len(list))
			for i, x := range list {
				parts[i] = fmt.Sprint(x)
			}
			return strings.Join(parts, sep), nil
		},
		"truncate": func(n int, s string) string {
			if n < 0 || len(s) <= n {
				return s
			}
			// Cut on a rune boundary.
			for n > 0 && !utf8Start(s[n]) {
				n--
			}
			return s[:n]
		},
	}
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	}
	return false
}

// isTemplate reports whether a parameter value is rendered per event.
func isTemplate(s string) bool { return strings.Contains(s, "{{") }

func parseTemplate(name, src string) (*template.Template, error) {
	return template.New(name).Option("missingkey=error").Funcs(templateFuncs()).Parse(src)
}
