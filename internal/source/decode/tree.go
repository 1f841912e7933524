package decode

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Tree is a decoded JSON value (map[string]any, []any, string, json.Number,
// bool or nil) with lenient accessors, for the free-form parts of events
// (CloudTrail requestParameters, k8s request objects).
type Tree struct{ V any }

// ParseTree decodes raw into a Tree; numbers stay json.Number.
func ParseTree(raw []byte) (Tree, error) {
	if len(raw) == 0 {
		return Tree{}, nil
	}
	// Documents nested inside strings (a bucket policy) were not seen by
	// Split's depth check.
	if err := CheckDepth(raw, MaxDepth); err != nil {
		return Tree{}, err
	}
	var v any
	d := json.NewDecoder(strings.NewReader(string(raw)))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return Tree{}, err
	}
	return Tree{v}, nil
}

// Get walks object keys (and array indexes written as digits).
func (t Tree) Get(path ...string) Tree {
	v := t.V
	for _, k := range path {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(x) {
				return Tree{}
			}
			v = x[i]
		default:
			return Tree{}
		}
	}
	return Tree{v}
}

// Str is the value as text: strings as they are, numbers and booleans in
// their JSON spelling, anything else "".
func (t Tree) Str() string {
	switch x := t.V.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	}
	return ""
}

// Int is the value as an integer (numbers or numeric strings), ok false otherwise.
func (t Tree) Int() (int64, bool) {
	s := t.Str()
	if s == "" {
		return 0, false
	}
	return ParseInt(s)
}

// List is the value as an array; a lone value is a one-item list, and
// AWS's {"items": [...]} wrapper is unwrapped.
func (t Tree) List() []Tree {
	switch x := t.V.(type) {
	case nil:
		return nil
	case []any:
		out := make([]Tree, len(x))
		for i, v := range x {
			out[i] = Tree{v}
		}
		return out
	case map[string]any:
		if items, ok := x["items"]; ok && len(x) == 1 {
			return Tree{items}.List()
		}
	}
	return []Tree{t}
}

// Walk calls fn for every string value in the tree with its key, to a
// bounded depth.
func (t Tree) Walk(fn func(key, val string)) {
	var walk func(k string, v any, depth int)
	walk = func(k string, v any, depth int) {
		if depth > MaxDepth {
			return
		}
		switch x := v.(type) {
		case map[string]any:
			for kk, vv := range x {
				walk(kk, vv, depth+1)
			}
		case []any:
			for _, vv := range x {
				walk(k, vv, depth+1)
			}
		case string:
			fn(k, x)
		case json.Number:
			fn(k, x.String())
		}
	}
	walk("", t.V, 0)
}
