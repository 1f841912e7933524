package app_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/server"
	"github.com/quell-ir/quell/internal/source/auth"
	"github.com/quell-ir/quell/internal/txn"
)

// newAPI runs the whole app in-process (real SQLite store, real pipeline)
// behind an httptest server on loopback.
func newAPI(t *testing.T, mutate func(*config.Config)) (*app.App, *httptest.Server) {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Server.Addr = "127.0.0.1:0"
	if mutate != nil {
		mutate(&cfg)
	}
	a, err := app.New(context.Background(), cfg, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.Stop(ctx)
	})
	return a, srv
}

func do(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return resp.StatusCode, m
}

func errField(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	f, _ := e["field"].(string)
	return f
}

func TestIntakeAPI(t *testing.T) {
	_, srv := newAPI(t, func(c *config.Config) { c.Intake.MaxBodyBytes = 4096 })
	url := srv.URL + "/v1/events"
	cases := []struct {
		name       string
		body       string
		code       int
		field      string // for errors
		accepted   float64
		duplicates float64
		updated    float64
	}{
		{name: "object", body: `{"id":"a1","source":"t","type":"brute_force","src_endpoint":{"ip":"203.0.113.1"}}`, code: 202, accepted: 1},
		{name: "same id again", body: `{"id":"a1","source":"t","type":"brute_force","src_endpoint":{"ip":"203.0.113.1"}}`, code: 202, duplicates: 1},
		{name: "higher count updates", body: `{"id":"a1","source":"t","type":"brute_force","count":5,"src_endpoint":{"ip":"203.0.113.1"}}`, code: 202, updated: 1},
		{name: "array", body: `[{"source":"t","rule":"r1","time":"2026-01-01T00:00:00Z"},{"source":"t","rule":"r2","time":"2026-01-01T00:00:00Z"}]`, code: 202, accepted: 2},
		{name: "same fingerprint", body: `{"source":"t","rule":"r1","time":"2026-01-01T00:00:00Z"}`, code: 202, duplicates: 1},
		{name: "ndjson", body: "{\"source\":\"t\",\"rule\":\"n1\"}\n{\"source\":\"t\",\"rule\":\"n2\"}\n", code: 202, accepted: 2},
		{name: "bad ip", body: `{"source":"t","src_endpoint":{"ip":"999.1.1.1"}}`, code: 400, field: "src_endpoint.ip"},
		{name: "unknown field in array", body: `[{"source":"t"},{"source":"t","bogus":1}]`, code: 400, field: "[1].bogus"},
		{name: "wrong type", body: `{"source":"t","src_endpoint":{"port":"22"}}`, code: 400, field: "src_endpoint.port"},
		{name: "missing source", body: `{"rule":"x"}`, code: 400, field: "source"},
		{name: "bad priority in ndjson", body: "{\"source\":\"t\"}\n{\"source\":\"t\",\"priority\":\"P9\"}\n", code: 400, field: "[1].priority"},
		{name: "empty", body: ``, code: 400, field: "body"},
		{name: "not json", body: `hello`, code: 400, field: "body"},
		{name: "too large", body: `{"source":"t","message":"` + strings.Repeat("x", 5000) + `"}`, code: 413, field: "body"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, m := do(t, "POST", url, tc.body)
			if code != tc.code {
				t.Fatalf("status %d (%v), want %d", code, m, tc.code)
			}
			if tc.code != 202 {
				if errField(m) != tc.field {
					t.Fatalf("error field %q (%v), want %q", errField(m), m, tc.field)
				}
				return
			}
			if m["accepted"] != tc.accepted || m["duplicates"] != tc.duplicates || m["updated"] != tc.updated {
				t.Fatalf("answer %v, want accepted %v duplicates %v updated %v", m, tc.accepted, tc.duplicates, tc.updated)
			}
		})
	}
	code, m := do(t, "GET", srv.URL+"/v1/events/a1", "")
	if code != 200 || m["event"].(map[string]any)["count"] != float64(5) {
		t.Fatalf("GET event: %d %v", code, m)
	}
	if code, m := do(t, "GET", srv.URL+"/v1/events/nope", ""); code != 404 || errField(m) != "id" {
		t.Fatalf("GET missing event: %d %v", code, m)
	}
}

func TestTransactionAPIAndAuditFlow(t *testing.T) {
	dir := t.TempDir()
	pb := filepath.Join(dir, "pb.yaml")
	os.WriteFile(pb, []byte(`apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: note}
spec:
  match: 'event.type == "brute_force"'
  mode: enforce
  steps:
    - action: log
      params: {message: 'from {{ .event.src_endpoint.ip }}'}
`), 0o644)
	a, srv := newAPI(t, func(c *config.Config) { c.Playbooks = []string{pb} })
	code, _ := do(t, "POST", srv.URL+"/v1/events", `{"id":"e1","source":"t","type":"brute_force","src_endpoint":{"ip":"203.0.113.2"}}`)
	if code != 202 {
		t.Fatal(code)
	}
	// The pipeline decides asynchronously: wait for the transaction.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var id string
	for ctx.Err() == nil && id == "" {
		ts, err := a.Store.ListTxns(ctx, txn.Filter{EventID: "e1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) > 0 {
			id = ts[0].ID
			break
		}
		time.Sleep(5 * time.Millisecond) // the pipeline has no completion signal for an outside observer
	}
	tr, err := a.Engine.WaitResting(ctx, id)
	if err != nil || tr.State != txn.Audited {
		t.Fatalf("transaction %v err %v, want audited (global mode audit)", tr, err)
	}
	code, m := do(t, "GET", srv.URL+"/v1/transactions/"+id, "")
	if code != 200 || len(m["journal"].([]any)) != 2 || m["decision"] == nil {
		t.Fatalf("GET txn: %d %v", code, m)
	}
	// The event's context is stored when its processing completes, which
	// may be just after its transaction settled.
	for ctx.Err() == nil {
		if code, m = do(t, "GET", srv.URL+"/v1/events/e1", ""); m["context"] != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code != 200 || len(m["transactions"].([]any)) != 1 || m["context"] == nil {
		t.Fatalf("GET event: %d %v", code, m)
	}
	if code, m := do(t, "POST", srv.URL+"/v1/transactions/"+id+"/approve", `{"by":"bob"}`); code != 409 || errField(m) != "state" {
		t.Fatalf("approve audited: %d %v", code, m)
	}
	if code, m := do(t, "POST", srv.URL+"/v1/transactions/"+id+"/revert", `{}`); code != 400 || errField(m) != "by" {
		t.Fatalf("revert without identity: %d %v", code, m)
	}
	if code, _ := do(t, "POST", srv.URL+"/v1/transactions/nope/revert", `{"by":"bob"}`); code != 404 {
		t.Fatalf("revert missing: %d", code)
	}
	if code, m := do(t, "GET", srv.URL+"/v1/transactions?state=bogus", ""); code != 400 || errField(m) != "state" {
		t.Fatalf("bad filter: %d %v", code, m)
	}
	if code, _ := do(t, "GET", srv.URL+"/readyz", ""); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`quell_events_total{outcome="created",source="t"} 1`, `quell_transactions_total{action="log",mode="audit",state="audited"} 1`} {
		if !strings.Contains(string(b), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
}

func TestAPIAuthentication(t *testing.T) {
	t.Setenv("QUELL_TEST_TOKEN_OPS", "ops-token-0123456789")
	_, srv := newAPI(t, func(c *config.Config) {
		c.Server.Auth.Tokens = []server.APIToken{
			{Name: "reader", Token: auth.SecretRef{Value: "reader-token-0123456789"}, Roles: []string{server.RoleRead}},
			{Name: "ops", Token: auth.SecretRef{Env: "QUELL_TEST_TOKEN_OPS"}, Roles: []string{server.RoleRead, server.RoleWrite, server.RoleApprove}},
		}
	})
	call := func(method, path, token, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	ev := `{"source":"t","rule":"x"}`
	cases := []struct {
		name, method, path, token, body string
		code                            int
	}{
		{"no token", "GET", "/v1/events", "", "", 401},
		{"wrong token", "GET", "/v1/events", "nope-nope-nope-nope", "", 401},
		{"reader reads", "GET", "/v1/events", "reader-token-0123456789", "", 200},
		{"reader cannot write", "POST", "/v1/events", "reader-token-0123456789", ev, 403},
		{"ops writes", "POST", "/v1/events", "ops-token-0123456789", ev, 202},
		{"reader cannot approve", "POST", "/v1/transactions/x/approve", "reader-token-0123456789", `{}`, 403},
		{"ops cannot approve as someone else", "POST", "/v1/transactions/x/approve", "ops-token-0123456789", `{"by":"alice"}`, 403},
		{"ops approves as itself", "POST", "/v1/transactions/x/approve", "ops-token-0123456789", `{}`, 404},
		{"health is open", "GET", "/healthz", "", "", 200},
		{"unknown route is JSON", "GET", "/v2/nothing", "", "", 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, m := call(tc.method, tc.path, tc.token, tc.body)
			if code != tc.code {
				t.Fatalf("status %d (%v), want %d", code, m, tc.code)
			}
			if code >= 400 && m["error"] == nil {
				t.Fatalf("error answer is not the JSON error format: %v", m)
			}
		})
	}
}

func TestNonLoopbackNeedsTokens(t *testing.T) {
	_, err := config.Load("", []string{"QUELL_SERVER_ADDR=0.0.0.0:8080"})
	if err == nil || !strings.Contains(err.Error(), "server.addr") {
		t.Fatalf("got %v, want a server.addr error", err)
	}
	if _, err := config.Load("", []string{"QUELL_SERVER_ADDR=0.0.0.0:8080", "QUELL_SERVER_AUTH_ALLOW_OPEN=true"}); err != nil {
		t.Fatal(err)
	}
}

func httpRequest(method, url, body string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(body))
}

func doReq(t *testing.T, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}
