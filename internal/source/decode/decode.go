// Package decode holds what every source parser shares: the Result type with
// its on-purpose Skipped list, splitting a body into JSON documents (object,
// array or NDJSON), lenient scalar types for the untidy fields real tools
// send (numbers as strings, several time formats), and errors that name the
// JSON path of the problem.
package decode

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/quell-ir/quell/internal/event"
)

// Limits bound what one body may cost. They are generous for real webhook
// payloads and small enough that a hostile body cannot exhaust memory.
const (
	// MaxBodyBytes is the largest body a parser accepts.
	MaxBodyBytes = 16 << 20
	// MaxDocuments is the most top-level documents (array items, NDJSON
	// lines, Records entries) one body may hold.
	MaxDocuments = 10000
	// MaxDepth is the deepest JSON nesting accepted. Real security events
	// nest a dozen levels at most; k8s audit request objects a few more.
	MaxDepth = 64
)

// Skip is a document recognised on purpose as not being an alert (a Falco
// metrics snapshot, a syscall drop report, ...). It is neither an event nor
// an error: the API reports it as skipped with its reason.
type Skip struct {
	Index  int    `json:"index"`  // position of the document in the body
	Reason string `json:"reason"` // bounded, human-readable, e.g. "falco internal: metrics snapshot"
}

// Result is what a parser makes of one body.
type Result struct {
	Events  []event.Event `json:"events"`
	Skipped []Skip        `json:"skipped,omitempty"`
}

// Summary says what became of a body, for API answers and logs:
// "accepted 0, skipped 1: falco internal: metrics snapshot".
func (r Result) Summary() string {
	s := fmt.Sprintf("accepted %d, skipped %d", len(r.Events), len(r.Skipped))
	if len(r.Skipped) == 0 {
		return s
	}
	seen := map[string]bool{}
	var reasons []string
	for _, k := range r.Skipped {
		if !seen[k.Reason] {
			seen[k.Reason] = true
			reasons = append(reasons, k.Reason)
		}
	}
	return s + ": " + strings.Join(reasons, "; ")
}

// Add appends r2 to r, renumbering nothing: indexes stay those of the parser
// that produced them.
func (r *Result) Add(r2 Result) {
	r.Events = append(r.Events, r2.Events...)
	r.Skipped = append(r.Skipped, r2.Skipped...)
}

// Doc is one top-level JSON document of a body.
type Doc struct {
	Raw  json.RawMessage // verbatim bytes, a copy owned by the Doc
	Path string          // "" for a lone document, "[3]" for an array item or NDJSON line
	// Array is true when the body was a JSON array (so Path is an index).
	Array bool
}

// Split cuts a body into its top-level documents: a single JSON value, a
// JSON array of values, or a stream of values (NDJSON, or concatenated
// objects). Raw of each Doc is a verbatim copy of that value's bytes.
func Split(body []byte) ([]Doc, error) {
	if len(body) > MaxBodyBytes {
		return nil, event.Errorf("$", "body larger than %d bytes", MaxBodyBytes)
	}
	if err := CheckDepth(body, MaxDepth); err != nil {
		return nil, err
	}
	trimmed := bytes.TrimSpace(bytes.TrimPrefix(body, []byte("\xef\xbb\xbf")))
	if len(trimmed) == 0 {
		return nil, event.Errorf("$", "empty body")
	}
	if trimmed[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(trimmed, &items); err != nil {
			return nil, Wrap("", err)
		}
		if len(items) > MaxDocuments {
			return nil, event.Errorf("$", "more than %d documents", MaxDocuments)
		}
		out := make([]Doc, 0, len(items))
		for i, it := range items {
			out = append(out, Doc{Raw: clone(it), Path: fmt.Sprintf("[%d]", i), Array: true})
		}
		return out, nil
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	var out []Doc
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			path := ""
			if len(out) > 0 {
				path = fmt.Sprintf("[%d]", len(out))
			}
			return nil, Wrap(path, err)
		}
		if len(out) >= MaxDocuments {
			return nil, event.Errorf("$", "more than %d documents", MaxDocuments)
		}
		out = append(out, Doc{Raw: clone(raw), Path: fmt.Sprintf("[%d]", len(out))})
	}
	if len(out) == 1 {
		out[0].Path = ""
	}
	return out, nil
}

func clone(b []byte) json.RawMessage { return append(json.RawMessage(nil), b...) }

// CheckDepth refuses JSON nested deeper than max, scanning bytes outside
// strings. It runs before decoding so that a hostile body cannot make the
// decoder recurse.
func CheckDepth(b []byte, max int) error {
	depth, inStr, esc := 0, false, false
	for _, c := range b {
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
		case '{', '[':
			depth++
			if depth > max {
				return event.Errorf("$", "nested deeper than %d levels", max)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}

// Join builds a JSON path: Join("[3]", "detail") is "[3].detail".
func Join(prefix, field string) string {
	switch {
	case prefix == "":
		return field
	case field == "":
		return prefix
	case strings.HasPrefix(field, "["):
		return prefix + field
	}
	return prefix + "." + field
}

// Wrap turns an encoding/json error into an event.FieldError naming the
// path (prefix + the field the decoder reports). Errors that already are
// FieldErrors get the prefix added.
func Wrap(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var fe *event.FieldError
	if errors.As(err, &fe) {
		return &event.FieldError{Field: joinRoot(prefix, fe.Field), Reason: fe.Reason}
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		want := te.Type.String()
		switch want {
		case "int64", "int":
			want = "integer"
		case "float64":
			want = "number"
		case "time.Time":
			want = "timestamp"
		}
		return &event.FieldError{Field: joinRoot(prefix, te.Field), Reason: fmt.Sprintf("cannot use JSON %s as %s", te.Value, want)}
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &event.FieldError{Field: rootIfEmpty(prefix), Reason: fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se.Error())}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &event.FieldError{Field: rootIfEmpty(prefix), Reason: "truncated JSON"}
	}
	return &event.FieldError{Field: rootIfEmpty(prefix), Reason: err.Error()}
}

func joinRoot(prefix, field string) string {
	if field == "$" {
		field = ""
	}
	return rootIfEmpty(Join(prefix, field))
}

func rootIfEmpty(p string) string {
	if p == "" {
		return "$"
	}
	return p
}

// Unmarshal decodes raw into v and names the path of any problem.
func Unmarshal(prefix string, raw []byte, v any) error {
	return Wrap(prefix, json.Unmarshal(raw, v))
}

// Kind reports the JSON kind of a raw value: '{', '[', '"', 'n', 't', 'f' or
// '0' for numbers; 0 when empty.
func Kind(raw []byte) byte {
	b := bytes.TrimSpace(raw)
	if len(b) == 0 {
		return 0
	}
	switch c := b[0]; c {
	case '{', '[', '"', 'n', 't', 'f':
		return c
	}
	return '0'
}

// AddEvent validates e and appends it; an invalid event fails the body with
// the problem's path. Parsers only produce valid events, so this is a guard
// against parser bugs turning attacker input into a bad model.
func (r *Result) AddEvent(path string, e event.Event) error {
	if err := e.Validate(); err != nil {
		return Wrap(path, err)
	}
	r.Events = append(r.Events, e)
	return nil
}

// AddSkip records a document recognised as not being an alert.
func (r *Result) AddSkip(index int, reason string) {
	r.Skipped = append(r.Skipped, Skip{Index: index, Reason: reason})
}

// AddLabel sets a label, bounding key and value; empty values are dropped.
func AddLabel(e *event.Event, k, v string) {
	if v == "" || k == "" {
		return
	}
	if e.Labels == nil {
		e.Labels = map[string]string{}
	}
	if len(e.Labels) >= MaxLabels {
		return
	}
	e.Labels[Clip(k)] = Clip(v)
}

// MaxLabels bounds how many labels a parser copies into one event.
const MaxLabels = 64

// AddObservable appends an observable unless it is empty or already there.
func AddObservable(e *event.Event, typ, v string) {
	if v == "" {
		return
	}
	for _, o := range e.Observables {
		if o.Type == typ && o.Value == v {
			return
		}
	}
	if len(e.Observables) >= MaxLabels {
		return
	}
	e.Observables = append(e.Observables, event.Observable{Type: typ, Value: Clip(v)})
}
