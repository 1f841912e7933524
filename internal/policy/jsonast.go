package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unsafe"

	"github.com/open-policy-agent/opa/v1/ast"
)

// jsonToValue parses a JSON document straight into OPA's AST, the form the
// evaluator works on. It gives the same value as decoding into interface{}
// values (numbers as json.Number) and converting with ast.InterfaceToValue,
// without building the intermediate maps: the input of every decision goes
// through it, so it is on the hot path.
//
// Strings point into b, which the caller must not modify afterwards; object
// keys that are field names of Input share one term per name.
func jsonToValue(b []byte) (ast.Value, error) {
	p := jsonParser{b: b}
	p.ws()
	t, err := p.value()
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, fmt.Errorf("policy input: trailing data at offset %d", p.i)
	}
	return t.Value, nil
}

type jsonParser struct {
	b   []byte
	i   int
	kvs [][2]*ast.Term // scratch: members of the objects being parsed
	els []*ast.Term    // scratch: elements of the arrays being parsed
}

// inputKeys holds one shared term per JSON field name of the input
// document's types. Terms of the input are never modified by evaluation,
// so the keys every input repeats need not be allocated each time.
var inputKeys = func() map[string]*ast.Term {
	keys := map[string]*ast.Term{}
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] {
			return
		}
		seen[t] = true
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Anonymous && name == "" {
				walk(f.Type)
				continue
			}
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			keys[name] = ast.StringTerm(name)
			walk(f.Type)
		}
	}
	walk(reflect.TypeFor[Input]())
	return keys
}()

var errJSONEnd = errors.New("policy input: unexpected end of JSON")

func (p *jsonParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) value() (*ast.Term, error) {
	if p.i >= len(p.b) {
		return nil, errJSONEnd
	}
	switch c := p.b[p.i]; {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return ast.StringTerm(s), nil
	case c == 't':
		return p.lit("true", ast.InternedTerm(true))
	case c == 'f':
		return p.lit("false", ast.InternedTerm(false))
	case c == 'n':
		return p.lit("null", ast.NullTerm())
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return nil, fmt.Errorf("policy input: unexpected %q at offset %d", c, p.i)
	}
}

func (p *jsonParser) lit(word string, t *ast.Term) (*ast.Term, error) {
	if len(p.b)-p.i < len(word) || string(p.b[p.i:p.i+len(word)]) != word {
		return nil, fmt.Errorf("policy input: bad literal at offset %d", p.i)
	}
	p.i += len(word)
	return t, nil
}

func (p *jsonParser) number() (*ast.Term, error) {
	start := p.i
	for p.i < len(p.b) {
		switch c := p.b[p.i]; {
		case c >= '0' && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			p.i++
			continue
		}
		break
	}
	n := json.Number(p.b[start:p.i])
	if _, err := n.Float64(); err != nil {
		return nil, fmt.Errorf("policy input: bad number %q at offset %d", n, start)
	}
	return ast.NumberTerm(n), nil
}

// str reads a string token. Strings without escapes (nearly all) are cut
// from the buffer; others are left to encoding/json.
func (p *jsonParser) str() (string, error) {
	start := p.i
	p.i++ // opening quote
	escaped := false
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case '\\':
			escaped = true
			p.i += 2
			continue
		case '"':
			p.i++
			if !escaped {
				if p.i-2 == start {
					return "", nil
				}
				// b is not modified after parsing (jsonToValue's contract).
				return unsafe.String(&p.b[start+1], p.i-1-start-1), nil
			}
			var s string
			if err := json.Unmarshal(p.b[start:p.i], &s); err != nil {
				return "", fmt.Errorf("policy input: bad string at offset %d: %w", start, err)
			}
			return s, nil
		}
		p.i++
	}
	return "", errJSONEnd
}

func (p *jsonParser) object() (*ast.Term, error) {
	p.i++ // {
	base := len(p.kvs)
	defer func() { p.kvs = p.kvs[:base] }()
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return ast.NewTerm(ast.NewObject()), nil
	}
	for {
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return nil, fmt.Errorf("policy input: want an object key at offset %d", p.i)
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return nil, fmt.Errorf("policy input: want ':' at offset %d", p.i)
		}
		p.i++
		p.ws()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		kt, ok := inputKeys[k]
		if !ok {
			kt = ast.StringTerm(k)
		}
		p.kvs = append(p.kvs, [2]*ast.Term{kt, v})
		p.ws()
		if p.i >= len(p.b) {
			return nil, errJSONEnd
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			// NewObject copies the members: the scratch space is reused.
			return ast.NewTerm(ast.NewObject(p.kvs[base:]...)), nil
		default:
			return nil, fmt.Errorf("policy input: want ',' or '}' at offset %d", p.i)
		}
	}
}

func (p *jsonParser) array() (*ast.Term, error) {
	p.i++ // [
	base := len(p.els)
	defer func() { p.els = p.els[:base] }()
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return ast.NewTerm(ast.NewArray()), nil
	}
	for {
		p.ws()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		p.els = append(p.els, v)
		p.ws()
		if p.i >= len(p.b) {
			return nil, errJSONEnd
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			// NewArray keeps its slice: give it one of its own.
			return ast.NewTerm(ast.NewArray(append([]*ast.Term(nil), p.els[base:]...)...)), nil
		default:
			return nil, fmt.Errorf("policy input: want ',' or ']' at offset %d", p.i)
		}
	}
}
