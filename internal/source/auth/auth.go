// Package auth authenticates event intake: per-source bearer tokens and
// HMAC-SHA256 signatures over the request body, compared in constant time.
// Unauthenticated intake happens only where configuration says so
// explicitly (allow_unauthenticated: true); a source with no configuration
// is refused (fail closed).
package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// SecretRef names a secret: inline (value), an environment variable (env)
// or a file (file, trailing newline trimmed). Exactly one must be set.
type SecretRef struct {
	Value string `yaml:"value,omitempty" json:"value,omitempty"`
	Env   string `yaml:"env,omitempty" json:"env,omitempty"`
	File  string `yaml:"file,omitempty" json:"file,omitempty"`
}

// SourceAuth is how one source authenticates. A request passes when it
// carries any configured bearer token, or a valid signature by any
// configured HMAC secret.
type SourceAuth struct {
	Tokens               []SecretRef `yaml:"tokens,omitempty" json:"tokens,omitempty"`
	HMACSecrets          []SecretRef `yaml:"hmac_secrets,omitempty" json:"hmac_secrets,omitempty"`
	AllowUnauthenticated bool        `yaml:"allow_unauthenticated,omitempty" json:"allow_unauthenticated,omitempty"`
}

// Config is the intake authentication configuration.
type Config struct {
	// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>"
	// (default X-Quell-Signature). A bare hex digest is accepted too.
	SignatureHeader string `yaml:"signature_header,omitempty" json:"signature_header,omitempty"`
	// MaxBodyBytes bounds the body read for signature checks (default 16 MiB).
	MaxBodyBytes int64 `yaml:"max_body_bytes,omitempty" json:"max_body_bytes,omitempty"`
	// Sources maps source names to their authentication; the key "*"
	// applies to sources without an entry of their own.
	Sources map[string]SourceAuth `yaml:"sources,omitempty" json:"sources,omitempty"`
}

// Defaults.
const (
	DefaultSignatureHeader = "X-Quell-Signature"
	DefaultMaxBodyBytes    = 16 << 20
)

// DefaultConfig refuses every source until one is configured.
func DefaultConfig() Config {
	return Config{SignatureHeader: DefaultSignatureHeader, MaxBodyBytes: DefaultMaxBodyBytes}
}

func (c *Config) withDefaults() {
	if c.SignatureHeader == "" {
		c.SignatureHeader = DefaultSignatureHeader
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
}

// Validate checks the configuration without reading secrets; errors name
// the field.
func (c Config) Validate() error {
	c.withDefaults()
	if c.MaxBodyBytes < 0 {
		return fmt.Errorf("max_body_bytes: must be positive, got %d", c.MaxBodyBytes)
	}
	if strings.ContainsAny(c.SignatureHeader, " \t\r\n:") {
		return fmt.Errorf("signature_header: not a header name: %q", c.SignatureHeader)
	}
	for _, name := range sortedKeys(c.Sources) {
		s := c.Sources[name]
		field := fmt.Sprintf("sources[%q]", name)
		if !s.AllowUnauthenticated && len(s.Tokens) == 0 && len(s.HMACSecrets) == 0 {
			return fmt.Errorf("%s: no tokens or hmac_secrets; set allow_unauthenticated: true to accept anyone", field)
		}
		for i, r := range s.Tokens {
			if err := r.validate(); err != nil {
				return fmt.Errorf("%s.tokens[%d]: %w", field, i, err)
			}
		}
		for i, r := range s.HMACSecrets {
			if err := r.validate(); err != nil {
				return fmt.Errorf("%s.hmac_secrets[%d]: %w", field, i, err)
			}
		}
	}
	return nil
}

func (r SecretRef) validate() error {
	n := 0
	for _, v := range []string{r.Value, r.Env, r.File} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return errors.New("set exactly one of value, env, file")
	}
	return nil
}

func (r SecretRef) resolve() ([]byte, error) {
	var v string
	switch {
	case r.Value != "":
		v = r.Value
	case r.Env != "":
		v = os.Getenv(r.Env)
		if v == "" {
			return nil, fmt.Errorf("env %s: empty or unset", r.Env)
		}
	case r.File != "":
		b, err := os.ReadFile(r.File)
		if err != nil {
			return nil, fmt.Errorf("file: %w", err)
		}
		v = strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return nil, fmt.Errorf("file %s: empty", r.File)
		}
	}
	if len(v) < 16 {
		return nil, errors.New("secret shorter than 16 characters")
	}
	return []byte(v), nil
}

// Reasons a request is rejected (the reason label of the metric).
const (
	ReasonNotConfigured = "not_configured"
	ReasonMissing       = "missing_credentials"
	ReasonBadToken      = "bad_token"
	ReasonBadSignature  = "bad_signature"
	ReasonTooLarge      = "body_too_large"
	ReasonReadError     = "read_error"
)

// RejectError says why a request was refused. It never contains a secret.
type RejectError struct {
	Source, Reason string
}

func (e *RejectError) Error() string { return "intake " + e.Source + ": " + e.Reason }

type sourceKeys struct {
	tokens [][32]byte // SHA-256 of each token: fixed length for constant-time compare
	hmacs  [][]byte
	open   bool
}

// Checker authenticates intake requests. Immutable after New.
type Checker struct {
	header   string
	maxBody  int64
	sources  map[string]sourceKeys
	rejected *prometheus.CounterVec
	log      *slog.Logger
}

// New resolves the secrets and builds a Checker. reg may be nil.
func New(c Config, reg prometheus.Registerer, log *slog.Logger) (*Checker, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("intake auth config: %w", err)
	}
	c.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ch := &Checker{header: c.SignatureHeader, maxBody: c.MaxBodyBytes, sources: map[string]sourceKeys{}, log: log}
	for _, name := range sortedKeys(c.Sources) {
		s := c.Sources[name]
		k := sourceKeys{open: s.AllowUnauthenticated}
		for i, r := range s.Tokens {
			v, err := r.resolve()
			if err != nil {
				return nil, fmt.Errorf("intake auth config: sources[%q].tokens[%d]: %w", name, i, err)
			}
			k.tokens = append(k.tokens, sha256.Sum256(v))
		}
		for i, r := range s.HMACSecrets {
			v, err := r.resolve()
			if err != nil {
				return nil, fmt.Errorf("intake auth config: sources[%q].hmac_secrets[%d]: %w", name, i, err)
			}
			k.hmacs = append(k.hmacs, v)
		}
		ch.sources[name] = k
	}
	ch.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quell_intake_auth_rejected_total",
		Help: "Intake requests refused by authentication, by source and reason.",
	}, []string{"source", "reason"})
	if reg != nil {
		if err := reg.Register(ch.rejected); err != nil {
			return nil, fmt.Errorf("register intake auth metrics: %w", err)
		}
	}
	return ch, nil
}

// Check authenticates a request for source whose body has been read.
func (c *Checker) Check(r *http.Request, source string, body []byte) error {
	k, ok := c.sources[source]
	if !ok {
		k, ok = c.sources["*"]
	}
	if !ok {
		return c.reject(r, source, ReasonNotConfigured)
	}
	if k.open {
		return nil
	}
	tok, hasTok := bearer(r)
	sig := r.Header.Get(c.header)
	if !hasTok && sig == "" {
		return c.reject(r, source, ReasonMissing)
	}
	if hasTok {
		sum := sha256.Sum256([]byte(tok))
		match := 0
		for _, t := range k.tokens {
			match |= subtle.ConstantTimeCompare(sum[:], t[:])
		}
		if match == 1 {
			return nil
		}
	}
	if sig != "" {
		got, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(sig), "sha256="))
		if err == nil && len(got) == sha256.Size {
			for _, key := range k.hmacs {
				m := hmac.New(sha256.New, key)
				m.Write(body)
				if hmac.Equal(m.Sum(nil), got) {
					return nil
				}
			}
		}
		return c.reject(r, source, ReasonBadSignature)
	}
	return c.reject(r, source, ReasonBadToken)
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:]), true
	}
	return "", false
}

func (c *Checker) reject(r *http.Request, source, reason string) error {
	label := source
	if _, ok := c.sources[source]; !ok {
		label = "other" // unbounded names from the URL never become labels
	}
	c.rejected.WithLabelValues(label, reason).Inc()
	c.log.Warn("intake request rejected", "source", label, "reason", reason, "remote", r.RemoteAddr)
	return &RejectError{Source: source, Reason: reason}
}

// Sign returns the signature header value for body under secret, for
// clients and tests.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Middleware authenticates requests before next. sourceOf names the source
// of a request (e.g. func(r) string { return r.PathValue("name") }). The
// body is read (bounded), checked and handed on intact.
func (c *Checker) Middleware(sourceOf func(*http.Request) string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src := sourceOf(r)
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, c.maxBody))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				_ = c.reject(r, src, ReasonTooLarge)
				http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
				return
			}
			_ = c.reject(r, src, ReasonReadError)
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		if err := c.Check(r, src, body); err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="quell"`)
			http.Error(w, "unauthorized: "+err.(*RejectError).Reason, http.StatusUnauthorized)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

func sortedKeys(m map[string]SourceAuth) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Validate checks that exactly one of value, env and file is set.
func (r SecretRef) Validate() error { return r.validate() }

// Resolve reads the secret from wherever it is kept.
func (r SecretRef) Resolve() ([]byte, error) { return r.resolve() }
