package auth

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const (
	falcoToken = "falco-token-0123456789abcdef"
	gdSecret   = "guardduty-hmac-secret-0123456789"
)

func newServer(t *testing.T) (*httptest.Server, *Checker) {
	t.Helper()
	t.Setenv("QUELL_TEST_GD_SECRET", gdSecret)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "tok")
	if err := os.WriteFile(tokFile, []byte(falcoToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Sources: map[string]SourceAuth{
		"falco":        {Tokens: []SecretRef{{File: tokFile}, {Value: "second-falco-token-xyz"}}},
		"guardduty":    {HMACSecrets: []SecretRef{{Env: "QUELL_TEST_GD_SECRET"}}},
		"alertmanager": {AllowUnauthenticated: true},
	}}
	reg := prometheus.NewRegistry()
	c, err := New(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/sources/{name}", c.Middleware(func(r *http.Request) string { return r.PathValue("name") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.WriteHeader(http.StatusAccepted)
			w.Write(b) // echo: proves the body reaches the handler intact
		})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, c
}

func TestMiddleware(t *testing.T) {
	srv, c := newServer(t)
	body := []byte(`{"rule":"x"}`)
	cases := []struct {
		name, source, auth, sig string
		want                    int
		reason                  string
	}{
		{"token from file", "falco", "Bearer " + falcoToken, "", 202, ""},
		{"second inline token", "falco", "bearer second-falco-token-xyz", "", 202, ""},
		{"wrong token", "falco", "Bearer nope-nope-nope-nope", "", 401, ReasonBadToken},
		{"no credentials", "falco", "", "", 401, ReasonMissing},
		{"valid signature", "guardduty", "", Sign([]byte(gdSecret), body), 202, ""},
		{"bare hex signature", "guardduty", "", strings.TrimPrefix(Sign([]byte(gdSecret), body), "sha256="), 202, ""},
		{"signature of other body", "guardduty", "", Sign([]byte(gdSecret), []byte("other")), 401, ReasonBadSignature},
		{"signature with wrong key", "guardduty", "", Sign([]byte("another-secret-0123456789"), body), 401, ReasonBadSignature},
		{"token where hmac is required", "guardduty", "Bearer " + falcoToken, "", 401, ReasonBadToken},
		{"explicitly open source", "alertmanager", "", "", 202, ""},
		{"unconfigured source", "crowdsec", "Bearer " + falcoToken, "", 401, ReasonNotConfigured},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", srv.URL+"/v1/sources/"+tc.source, bytes.NewReader(body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			if tc.sig != "" {
				req.Header.Set(DefaultSignatureHeader, tc.sig)
			}
			label := tc.source
			if _, ok := c.sources[label]; !ok {
				label = "other"
			}
			before := testutil.ToFloat64(c.rejected.WithLabelValues(label, tc.reason))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.want, got)
			}
			if tc.want == 202 && !bytes.Equal(got, body) {
				t.Fatalf("handler saw body %q", got)
			}
			if tc.reason != "" {
				if !strings.Contains(string(got), tc.reason) {
					t.Fatalf("answer %q lacks reason %s", got, tc.reason)
				}
				if d := testutil.ToFloat64(c.rejected.WithLabelValues(label, tc.reason)) - before; d != 1 {
					t.Fatalf("rejected counter moved by %v, want 1", d)
				}
				if strings.Contains(string(got), falcoToken) || strings.Contains(string(got), gdSecret) {
					t.Fatal("secret leaked in the answer")
				}
			}
		})
	}
}

func TestBodyTooLarge(t *testing.T) {
	c, err := New(Config{MaxBodyBytes: 8, Sources: map[string]SourceAuth{"*": {AllowUnauthenticated: true}}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := c.Middleware(func(*http.Request) string { return "falco" }, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("handler reached")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/", strings.NewReader("0123456789")))
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", rec.Code)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Setenv("QUELL_TEST_EMPTY", "")
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"nothing configured for a source", Config{Sources: map[string]SourceAuth{"falco": {}}}, `sources["falco"]: no tokens`},
		{"two refs in one", Config{Sources: map[string]SourceAuth{"falco": {Tokens: []SecretRef{{Value: "0123456789abcdefg", Env: "X"}}}}}, `sources["falco"].tokens[0]: set exactly one`},
		{"empty env", Config{Sources: map[string]SourceAuth{"falco": {HMACSecrets: []SecretRef{{Env: "QUELL_TEST_EMPTY"}}}}}, `sources["falco"].hmac_secrets[0]: env QUELL_TEST_EMPTY`},
		{"short secret", Config{Sources: map[string]SourceAuth{"falco": {Tokens: []SecretRef{{Value: "short"}}}}}, `shorter than 16`},
		{"missing file", Config{Sources: map[string]SourceAuth{"falco": {Tokens: []SecretRef{{File: "/nonexistent/quell"}}}}}, `tokens[0]: file`},
		{"bad header", Config{SignatureHeader: "X Bad", Sources: map[string]SourceAuth{}}, `signature_header`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "0123456789abcdefg") {
				t.Fatal("secret in error")
			}
		})
	}
}
