// Package server is quell's HTTP API under /v1, plus /healthz, /readyz and
// /metrics. Handlers are thin: they parse, validate, call the engine or the
// store, and answer JSON. Every error names the field and the reason.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/store"
	"github.com/quell-ir/quell/internal/txn"
)

// Intake is what the server needs to accept events.
type Intake interface {
	Prepare(evs []*event.Event) error
	Append(ctx context.Context, evs []*event.Event) ([]store.AppendResult, error)
	Count(source, outcome string, n int)
}

// Engine is what the server needs of the transaction engine.
type Engine interface {
	ApproveAs(ctx context.Context, id string, who txn.Approver, comment string) (*txn.Transaction, error)
	Reject(ctx context.Context, id, by, comment string) (*txn.Transaction, error)
	Revert(ctx context.Context, id, by, comment string) (*txn.Transaction, error)
	Submit(ctx context.Context, req txn.Request) (*txn.Transaction, error)
	Mode() txn.Mode
}

// Reader is the storage the API reads.
type Reader interface {
	GetEvent(ctx context.Context, id string) (*store.EventRecord, error)
	ListEvents(ctx context.Context, f store.EventFilter) ([]*store.EventRecord, error)
	GetTxn(ctx context.Context, id string) (*txn.Transaction, error)
	ListTxns(ctx context.Context, f txn.Filter) ([]*txn.Transaction, error)
	Journal(ctx context.Context, id string) ([]txn.JournalEntry, error)
	CountEvents(ctx context.Context) (int64, error)
}

// SourceResult is what a source parser produced from one body.
type SourceResult struct {
	Events  []*event.Event
	Skipped []Skip
}

// Skip is an input document that is deliberately not an event (e.g. Falco's
// internal metrics snapshots).
type Skip struct {
	Index  int    `json:"index"`
	Reason string `json:"reason"`
}

// Sources parses tool-native formats. Authenticate checks a request
// against the source's configured credentials before the body is parsed.
type Sources interface {
	Parse(ctx context.Context, name string, body []byte) (SourceResult, error)
	Known(name string) bool
	Authenticate(name string, r *http.Request, body []byte) error
}

// Deps are the server's collaborators.
type Deps struct {
	Intake   Intake
	Engine   Engine
	Store    Reader
	Registry *action.Registry
	Sources  Sources // nil: /v1/sources is not served
	Gatherer prometheus.Gatherer
	Metrics  prometheus.Registerer
	Logger   *slog.Logger
	Tracer   trace.TracerProvider
	Ready    func(ctx context.Context) error
	MaxBody  int64
	Version  string
	Auth     AuthConfig
}

// Server is the HTTP API.
type Server struct {
	d       Deps
	auth    *authenticator
	log     *slog.Logger
	tracer  trace.Tracer
	mux     *http.ServeMux
	reqs    *prometheus.HistogramVec
	rejects *prometheus.CounterVec
}

// New builds the server's handler.
func New(d Deps) (*Server, error) {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.MaxBody == 0 {
		d.MaxBody = 1 << 20
	}
	tp := d.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	au, err := newAuthenticator(d.Auth)
	if err != nil {
		return nil, err
	}
	s := &Server{d: d, auth: au, log: d.Logger, tracer: tp.Tracer("github.com/quell-ir/quell/internal/server"), mux: http.NewServeMux()}
	s.reqs = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "quell_http_request_duration_seconds", Help: "HTTP API latency by route and status code.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	}, []string{"route", "code"})
	s.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quell_events_rejected_total", Help: "Intake requests rejected, by source and reason (invalid, too_large, unauthenticated, storage).",
	}, []string{"source", "reason"})
	if d.Metrics != nil {
		d.Metrics.MustRegister(s.reqs, s.rejects)
	}
	s.route("POST /v1/events", RoleWrite, s.postEvents)
	s.route("GET /v1/events", RoleRead, s.listEvents)
	s.route("GET /v1/events/{id}", RoleRead, s.getEvent)
	s.route("POST /v1/sources/{name}", "", s.postSource) // per-source authentication
	s.route("GET /v1/transactions", RoleRead, s.listTxns)
	s.route("GET /v1/transactions/{id}", RoleRead, s.getTxn)
	s.route("POST /v1/transactions/{id}/{op}", "", s.txnOp) // role depends on op
	s.route("GET /v1/actions", RoleRead, s.listActions)
	s.route("POST /v1/breakglass", RoleWrite, s.breakGlass)
	s.route("GET /healthz", "", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	s.route("GET /readyz", "", s.ready)
	s.route("/", "", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, 404, "path", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	if d.Gatherer != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(d.Gatherer, promhttp.HandlerOpts{}))
	}
	return s, nil
}

type callerKey struct{}

// caller is the authenticated identity of the request ("" without tokens).
func caller(r *http.Request) string {
	c, _ := r.Context().Value(callerKey{}).(string)
	return c
}

// authorize checks the bearer token for role and answers 401/403 itself.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, role string) (*http.Request, bool) {
	who, err := s.auth.check(r, role)
	switch {
	case errors.Is(err, errUnauthenticated):
		w.Header().Set("WWW-Authenticate", `Bearer realm="quell"`)
		writeError(w, 401, "authorization", err.Error())
		return r, false
	case err != nil:
		writeError(w, 403, "authorization", err.Error())
		return r, false
	}
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, who)), true
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(c int) { w.code = c; w.ResponseWriter.WriteHeader(c) }

func (s *Server) route(pattern, role string, h http.HandlerFunc) {
	name := pattern
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, span := s.tracer.Start(r.Context(), name, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		sw := &statusWriter{ResponseWriter: w, code: 200}
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("handler panic", "route", name, "panic", p)
				writeError(sw, 500, "", fmt.Sprintf("internal error: %v", p))
			}
			span.SetAttributes(attribute.Int("http.status_code", sw.code))
			s.reqs.WithLabelValues(name, strconv.Itoa(sw.code)).Observe(time.Since(start).Seconds())
			lvl := slog.LevelDebug
			if sw.code >= 500 {
				lvl = slog.LevelError
			}
			s.log.LogAttrs(ctx, lvl, "http request", slog.String("route", name), slog.Int("status", sw.code),
				slog.Duration("duration", time.Since(start)), slog.String("trace_id", span.SpanContext().TraceID().String()))
		}()
		r = r.WithContext(ctx)
		if role != "" {
			var ok bool
			if r, ok = s.authorize(sw, r, role); !ok {
				return
			}
		}
		h(sw, r)
	})
}

// APIError is the JSON error body.
type APIError struct {
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

func writeError(w http.ResponseWriter, code int, field, reason string) {
	writeJSON(w, code, map[string]APIError{"error": {Field: field, Reason: reason}})
}

func writeErr(w http.ResponseWriter, err error) {
	var fe *event.FieldError
	var ie *txn.InputError
	var se *txn.StateError
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &mb):
		writeError(w, http.StatusRequestEntityTooLarge, "body", fmt.Sprintf("larger than the limit of %d bytes", mb.Limit))
	case errors.As(err, &fe):
		writeError(w, 400, fe.Field, fe.Reason)
	case errors.As(err, &ie):
		writeError(w, 400, ie.Field, ie.Reason)
	case errors.As(err, &se):
		writeError(w, 409, "state", se.Error())
	case errors.Is(err, store.ErrNotFound):
		writeError(w, 404, "id", err.Error())
	default:
		writeError(w, 500, "", err.Error())
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// IntakeResponse answers an accepted intake request.
type IntakeResponse struct {
	Accepted   int                  `json:"accepted"`
	Duplicates int                  `json:"duplicates"`
	Updated    int                  `json:"updated"`
	Skipped    []Skip               `json:"skipped,omitempty"`
	Events     []store.AppendResult `json:"events"`
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request, source string) ([]byte, bool) {
	body, err := readLimited(w, r, s.d.MaxBody)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			s.rejects.WithLabelValues(source, "too_large").Inc()
		} else {
			s.rejects.WithLabelValues(source, "invalid").Inc()
		}
		writeErr(w, err)
		return nil, false
	}
	return body, true
}

func (s *Server) postEvents(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r, "api")
	if !ok {
		return
	}
	evs, err := DecodeEvents(body)
	if err != nil {
		s.rejects.WithLabelValues("api", "invalid").Inc()
		writeErr(w, err)
		return
	}
	s.accept(w, r, "api", evs, nil)
}

func (s *Server) accept(w http.ResponseWriter, r *http.Request, source string, evs []*event.Event, skipped []Skip) {
	if err := s.d.Intake.Prepare(evs); err != nil {
		s.rejects.WithLabelValues(source, "invalid").Inc()
		writeErr(w, err)
		return
	}
	if len(skipped) > 0 {
		s.d.Intake.Count(source, "skipped", len(skipped))
	}
	res, err := s.d.Intake.Append(r.Context(), evs)
	if err != nil {
		s.rejects.WithLabelValues(source, "storage").Inc()
		s.log.Error("intake: commit failed", "source", source, "events", len(evs), "err", err)
		writeError(w, 503, "", "events were not stored: "+err.Error())
		return
	}
	resp := IntakeResponse{Events: res, Skipped: skipped}
	if resp.Events == nil {
		resp.Events = []store.AppendResult{}
	}
	for _, a := range res {
		switch a.Outcome {
		case store.Created:
			resp.Accepted++
		case store.Duplicate:
			resp.Duplicates++
		case store.Updated:
			resp.Updated++
		}
	}
	writeJSON(w, http.StatusAccepted, resp)
}

func (s *Server) postSource(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.d.Sources == nil || !s.d.Sources.Known(name) {
		writeError(w, 404, "name", fmt.Sprintf("unknown source %q", name))
		return
	}
	body, ok := s.readBody(w, r, name)
	if !ok {
		return
	}
	if err := s.d.Sources.Authenticate(name, r, body); err != nil {
		s.rejects.WithLabelValues(name, "unauthenticated").Inc()
		writeError(w, 401, "authorization", err.Error())
		return
	}
	res, err := s.d.Sources.Parse(r.Context(), name, body)
	if err != nil {
		s.rejects.WithLabelValues(name, "invalid").Inc()
		writeErr(w, err)
		return
	}
	s.accept(w, r, name, res.Events, res.Skipped)
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.EventFilter{Source: q.Get("source"), Type: q.Get("type"), Before: q.Get("before")}
	var err error
	if f.Limit, err = intParam(q.Get("limit")); err != nil {
		writeError(w, 400, "limit", err.Error())
		return
	}
	if v := q.Get("since"); v != "" {
		if f.Since, err = time.Parse(time.RFC3339, v); err != nil {
			writeError(w, 400, "since", "not an RFC 3339 time")
			return
		}
	}
	recs, err := s.d.Store.ListEvents(r.Context(), f)
	if err != nil {
		writeErr(w, err)
		return
	}
	if recs == nil {
		recs = []*store.EventRecord{}
	}
	writeJSON(w, 200, map[string]any{"events": recs})
}

func intParam(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 1000 {
		return 0, errors.New("must be an integer 0..1000")
	}
	return n, nil
}

// EventView is an event with everything quell decided about it.
type EventView struct {
	*store.EventRecord
	Transactions []*txn.Transaction `json:"transactions"`
}

func (s *Server) getEvent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	rec, err := s.d.Store.GetEvent(r.Context(), id)
	if err != nil {
		writeErr(w, err)
		return
	}
	ts, err := s.d.Store.ListTxns(r.Context(), txn.Filter{EventID: id, Limit: 1000})
	if err != nil {
		writeErr(w, err)
		return
	}
	if ts == nil {
		ts = []*txn.Transaction{}
	}
	writeJSON(w, 200, EventView{EventRecord: rec, Transactions: ts})
}

func (s *Server) listTxns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := txn.Filter{EventID: q.Get("event_id"), Action: q.Get("action")}
	var err error
	if f.Limit, err = intParam(q.Get("limit")); err != nil {
		writeError(w, 400, "limit", err.Error())
		return
	}
	if v := q.Get("state"); v != "" {
		for _, st := range strings.Split(v, ",") {
			if !validState(txn.State(st)) {
				writeError(w, 400, "state", fmt.Sprintf("unknown state %q", st))
				return
			}
			f.States = append(f.States, txn.State(st))
		}
	}
	ts, err := s.d.Store.ListTxns(r.Context(), f)
	if err != nil {
		writeErr(w, err)
		return
	}
	if ts == nil {
		ts = []*txn.Transaction{}
	}
	writeJSON(w, 200, map[string]any{"transactions": ts})
}

func validState(s txn.State) bool {
	switch s {
	case txn.Planned, txn.AwaitingApproval, txn.Guarded, txn.Prechecked, txn.Applying, txn.Applied, txn.Verified, txn.Active,
		txn.Reverting, txn.Denied, txn.Audited, txn.Rejected, txn.Failed, txn.Reverted, txn.Expired, txn.RevertFailed, txn.Completed:
		return true
	}
	return false
}

// TxnView is a transaction with its journal.
type TxnView struct {
	*txn.Transaction
	Journal []txn.JournalEntry `json:"journal"`
}

func (s *Server) getTxn(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, err := s.d.Store.GetTxn(r.Context(), id)
	if err != nil {
		writeErr(w, err)
		return
	}
	j, err := s.d.Store.Journal(r.Context(), id)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, TxnView{Transaction: t, Journal: j})
}

// HumanRequest is the body of approve, reject and revert.
type HumanRequest struct {
	By      string `json:"by"`
	Comment string `json:"comment"`
}

func (s *Server) txnOp(w http.ResponseWriter, r *http.Request) {
	id, op := r.PathValue("id"), r.PathValue("op")
	var f func(context.Context, string, string, string) (*txn.Transaction, error)
	role := RoleApprove
	switch op {
	case "approve":
		f = func(ctx context.Context, id, by, comment string) (*txn.Transaction, error) {
			who := txn.Approver{Name: by}
			if caller(r) != "" {
				who.Verified, who.Groups = true, s.auth.groups(by)
			}
			return s.d.Engine.ApproveAs(ctx, id, who, comment)
		}
	case "reject":
		f = s.d.Engine.Reject
	case "revert":
		f, role = s.d.Engine.Revert, RoleWrite
	default:
		writeError(w, 404, "op", fmt.Sprintf("unknown operation %q: approve, reject or revert", op))
		return
	}
	r, ok := s.authorize(w, r, role)
	if !ok {
		return
	}
	body, err := readLimited(w, r, 64<<10)
	if err != nil {
		writeErr(w, err)
		return
	}
	var req HumanRequest
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeErr(w, jsonFieldError(err, ""))
			return
		}
	}
	if who := caller(r); who != "" {
		// With tokens, the token is the identity: nobody approves as
		// someone else.
		if req.By != "" && req.By != who {
			writeError(w, 403, "by", fmt.Sprintf("the token belongs to %s, not %s", who, req.By))
			return
		}
		req.By = who
	}
	if req.By == "" {
		req.By = r.Header.Get("X-Quell-User")
	}
	if req.By == "" {
		writeError(w, 400, "by", "required: who is doing this (body field \"by\" or header X-Quell-User)")
		return
	}
	t, err := f(r.Context(), id, req.By, req.Comment)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.log.Info("transaction "+op, "txn", id, "by", req.By, "comment", req.Comment, "state", t.State)
	writeJSON(w, 200, t)
}

func (s *Server) listActions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]any{"actions": s.d.Registry.Specs()})
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	if s.d.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.d.Ready(ctx); err != nil {
			writeError(w, 503, "", "not ready: "+err.Error())
			return
		}
	}
	writeJSON(w, 200, map[string]string{"status": "ready", "mode": string(s.d.Engine.Mode()), "version": s.d.Version})
}

// BreakGlassRequest asks for time-bound elevated rights for a person.
type BreakGlassRequest struct {
	Person   string `json:"person"`
	Role     string `json:"role"`
	Duration string `json:"duration"` // Go duration; default and maximum 1h (the policy may allow less)
	Reason   string `json:"reason"`
	By       string `json:"by"` // the requester; with tokens, the token's name
}

// MaxBreakGlass bounds every grant, whatever the policy says.
const MaxBreakGlass = time.Hour

// breakGlass records a grant request as a transaction that needs another
// person's approval; it is granted when approved and revoked at expiry.
func (s *Server) breakGlass(w http.ResponseWriter, r *http.Request) {
	body, err := readLimited(w, r, 64<<10)
	if err != nil {
		writeErr(w, err)
		return
	}
	var req BreakGlassRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, jsonFieldError(err, ""))
		return
	}
	if who := caller(r); who != "" {
		if req.By != "" && req.By != who {
			writeError(w, 403, "by", fmt.Sprintf("the token belongs to %s, not %s", who, req.By))
			return
		}
		req.By = who
	}
	if req.By == "" {
		writeError(w, 400, "by", "required: who asks")
		return
	}
	ttl := MaxBreakGlass
	if req.Duration != "" {
		d, err := time.ParseDuration(req.Duration)
		if err != nil || d <= 0 {
			writeError(w, 400, "duration", "not a positive duration")
			return
		}
		if d > MaxBreakGlass {
			writeError(w, 400, "duration", fmt.Sprintf("at most %s", MaxBreakGlass))
			return
		}
		ttl = d
	}
	if _, ok := s.d.Registry.Lookup("breakglass.grant"); !ok {
		writeError(w, 404, "breakglass", "break-glass is not configured (actions.breakglass)")
		return
	}
	t, err := s.d.Engine.Submit(r.Context(), txn.Request{
		Action: "breakglass.grant", Params: map[string]string{"person": req.Person, "role": req.Role, "reason": req.Reason, "duration": ttl.String()},
		Mode: txn.ModeEnforce, TTL: ttl, Approval: true, Requester: req.By,
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	if t.State == txn.Failed {
		writeError(w, 400, "params", t.Error)
		return
	}
	s.log.Warn("break-glass requested", "person", req.Person, "role", req.Role, "by", req.By, "duration", ttl, "txn", t.ID, "state", t.State)
	writeJSON(w, http.StatusAccepted, t)
}
