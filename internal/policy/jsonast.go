package policy

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/open-policy-agent/opa/v1/ast"
)

// jsonToValue parses a JSON document straight into OPA's AST, the form the
// evaluator works on. It gives the same value as decoding into interface{}
// values (numbers as json.Number) and converting with ast.InterfaceToValue,
// without building the intermediate maps: the input of every decision goes
// through it, so it is on the hot path.
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
	b []byte
	i int
}

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
				return string(p.b[start+1 : p.i-1]), nil
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
	var kvs [][2]*ast.Term
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
		kvs = append(kvs, [2]*ast.Term{ast.StringTerm(k), v})
		p.ws()
		if p.i >= len(p.b) {
			return nil, errJSONEnd
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return ast.NewTerm(ast.NewObject(kvs...)), nil
		default:
			return nil, fmt.Errorf("policy input: want ',' or '}' at offset %d", p.i)
		}
	}
}

func (p *jsonParser) array() (*ast.Term, error) {
	p.i++ // [
	var elems []*ast.Term
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
		elems = append(elems, v)
		p.ws()
		if p.i >= len(p.b) {
			return nil, errJSONEnd
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return ast.NewTerm(ast.NewArray(elems...)), nil
		default:
			return nil, fmt.Errorf("policy input: want ',' or ']' at offset %d", p.i)
		}
	}
}
