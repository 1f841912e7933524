package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/quell-ir/quell/internal/event"
)

// MaxEventsPerRequest bounds one intake request.
const MaxEventsPerRequest = 10000

func readLimited(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, err
		}
		return nil, &event.FieldError{Field: "body", Reason: "could not be read: " + err.Error()}
	}
	return b, nil
}

// DecodeEvents reads one normalized event, a JSON array of them, or NDJSON.
// Unknown fields are errors: the normalized API is a contract, and a typo
// silently ignored would lose data. Errors name the element and the field.
func DecodeEvents(body []byte) ([]*event.Event, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, &event.FieldError{Field: "body", Reason: "empty: expected a JSON object, an array, or NDJSON"}
	}
	var out []*event.Event
	if trimmed[0] == '[' {
		if evs, ok := decodeArrayFast(trimmed); ok {
			return evs, nil
		}
		// The precise path: decode element by element, so that the error
		// names the element and the field.
		var raws []json.RawMessage
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			return nil, jsonFieldError(err, "")
		}
		if len(raws) > MaxEventsPerRequest {
			return nil, &event.FieldError{Field: "body", Reason: fmt.Sprintf("more than %d events in one request", MaxEventsPerRequest)}
		}
		for i, raw := range raws {
			e, err := decodeOne(raw, fmt.Sprintf("[%d]", i))
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		if len(out) == 0 {
			return nil, &event.FieldError{Field: "body", Reason: "empty array"}
		}
		return out, nil
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	for i := 0; ; i++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		prefix := ""
		if i > 0 || (err == nil && dec.More()) {
			prefix = fmt.Sprintf("[%d]", i)
		}
		if err != nil {
			return nil, jsonFieldError(err, prefix)
		}
		if len(out) >= MaxEventsPerRequest {
			return nil, &event.FieldError{Field: "body", Reason: fmt.Sprintf("more than %d events in one request", MaxEventsPerRequest)}
		}
		e, err := decodeOne(raw, prefix)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// decodeArrayFast decodes a well-formed array of valid events in one pass.
// It reports false for anything else (bad JSON, an unknown field, a non-object
// element, an invalid event, too many or no events): the caller then takes
// the element-by-element path, which names the offending element and field.
func decodeArrayFast(body []byte) ([]*event.Event, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var evs []*event.Event
	if err := dec.Decode(&evs); err != nil {
		return nil, false
	}
	// Only white space may follow the array, as json.Unmarshal requires.
	if len(bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n")) != 0 {
		return nil, false
	}
	if len(evs) == 0 || len(evs) > MaxEventsPerRequest {
		return nil, false
	}
	for _, e := range evs {
		if e == nil || e.Validate() != nil {
			return nil, false
		}
	}
	return evs, true
}

func decodeOne(raw json.RawMessage, prefix string) (*event.Event, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		f := prefix
		if f == "" {
			f = "body"
		}
		return nil, &event.FieldError{Field: f, Reason: "expected a JSON object"}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	e := &event.Event{}
	if err := dec.Decode(e); err != nil {
		return nil, jsonFieldError(err, prefix)
	}
	if err := e.Validate(); err != nil {
		var fe *event.FieldError
		if errors.As(err, &fe) && prefix != "" {
			return nil, &event.FieldError{Field: prefix + "." + fe.Field, Reason: fe.Reason}
		}
		return nil, err
	}
	return e, nil
}

func jsonFieldError(err error, prefix string) error {
	join := func(f string) string {
		switch {
		case prefix == "":
			return f
		case f == "":
			return prefix
		}
		return prefix + "." + f
	}
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return &event.FieldError{Field: join(te.Field), Reason: fmt.Sprintf("expected %s, got JSON %s", te.Type, te.Value)}
	case errors.As(err, &se):
		return &event.FieldError{Field: join("body"), Reason: fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &event.FieldError{Field: join("body"), Reason: "truncated JSON"}
	}
	msg := err.Error()
	const unknown = "json: unknown field "
	if len(msg) > len(unknown) && msg[:len(unknown)] == unknown {
		return &event.FieldError{Field: join(trimQuotes(msg[len(unknown):])), Reason: "unknown field"}
	}
	if _, ok := err.(*json.UnmarshalTypeError); !ok {
		var tErr *time.ParseError
		if errors.As(err, &tErr) {
			return &event.FieldError{Field: join("time"), Reason: "not an RFC 3339 time: " + tErr.Value}
		}
	}
	return &event.FieldError{Field: join("body"), Reason: msg}
}

func trimQuotes(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}
