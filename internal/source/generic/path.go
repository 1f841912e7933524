package generic

import (
	"fmt"
	"strconv"
	"strings"
)

// Path is a small JSONPath subset: $ then .key, ['key with.dots'], [index]
// or [*] (the last only in a mapping's events path). "a | b" tries each
// alternative in turn and takes the first that yields a non-empty value.
type Path struct {
	alts [][]step
	src  string
}

type step struct {
	key      string
	index    int
	isIndex  bool
	wildcard bool
}

// MaxPathSteps bounds a path's length.
const MaxPathSteps = 32

// ParsePath parses a path expression.
func ParsePath(s string) (Path, error) {
	p := Path{src: s}
	for _, alt := range strings.Split(s, "|") {
		steps, err := parseAlt(strings.TrimSpace(alt))
		if err != nil {
			return Path{}, err
		}
		p.alts = append(p.alts, steps)
	}
	return p, nil
}

func parseAlt(s string) ([]step, error) {
	if !strings.HasPrefix(s, "$") {
		return nil, fmt.Errorf("path %q must start with $", s)
	}
	var out []step
	i := 1
	for i < len(s) {
		if len(out) >= MaxPathSteps {
			return nil, fmt.Errorf("path %q longer than %d steps", s, MaxPathSteps)
		}
		switch s[i] {
		case '.':
			j := i + 1
			for j < len(s) && s[j] != '.' && s[j] != '[' {
				j++
			}
			if j == i+1 {
				return nil, fmt.Errorf("path %q: empty key at %d", s, i)
			}
			out = append(out, step{key: s[i+1 : j]})
			i = j
		case '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("path %q: unclosed [", s)
			}
			inner := s[i+1 : i+end]
			switch {
			case inner == "*":
				out = append(out, step{wildcard: true})
			case len(inner) >= 2 && (inner[0] == '\'' || inner[0] == '"') && inner[len(inner)-1] == inner[0]:
				out = append(out, step{key: inner[1 : len(inner)-1]})
			default:
				n, err := strconv.Atoi(inner)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("path %q: bad index %q", s, inner)
				}
				out = append(out, step{index: n, isIndex: true})
			}
			i += end + 1
		default:
			return nil, fmt.Errorf("path %q: unexpected %q at %d", s, s[i], i)
		}
	}
	return out, nil
}

// String returns the expression as written.
func (p Path) String() string { return p.src }

// hasWildcard reports whether any alternative uses [*].
func (p Path) hasWildcard() bool {
	for _, a := range p.alts {
		for _, s := range a {
			if s.wildcard {
				return true
			}
		}
	}
	return false
}

// Lookup returns the first alternative's value that exists and is not
// null or "". A [*] step in Lookup collects every element's value.
func (p Path) Lookup(doc any) (any, bool) {
	for _, alt := range p.alts {
		if v, ok := eval(doc, alt); ok && v != nil && v != "" {
			return v, true
		}
	}
	return nil, false
}

func eval(v any, steps []step) (any, bool) {
	for i, s := range steps {
		switch {
		case s.wildcard:
			arr, ok := v.([]any)
			if !ok {
				return nil, false
			}
			var out []any
			for _, el := range arr {
				if x, ok := eval(el, steps[i+1:]); ok {
					out = append(out, x)
				}
			}
			return out, true
		case s.isIndex:
			arr, ok := v.([]any)
			if !ok || s.index >= len(arr) {
				return nil, false
			}
			v = arr[s.index]
		default:
			m, ok := v.(map[string]any)
			if !ok {
				return nil, false
			}
			if v, ok = m[s.key]; !ok {
				return nil, false
			}
		}
	}
	return v, true
}

// field renders the first alternative without its "$." root, the way
// error paths name fields ("client.addr", "alerts[2].name").
func (p Path) field() string {
	first := strings.TrimSpace(strings.Split(p.src, "|")[0])
	return strings.TrimPrefix(strings.TrimPrefix(first, "$"), ".")
}

// LookupScalar is Lookup restricted to scalar values (string, number,
// bool): "$.user | $.user.name" skips a "user" that is an object.
func (p Path) LookupScalar(doc any) (any, bool) {
	for _, alt := range p.alts {
		v, ok := eval(doc, alt)
		if !ok || v == nil || v == "" {
			continue
		}
		switch v.(type) {
		case map[string]any, []any:
			continue
		}
		return v, true
	}
	return nil, false
}
