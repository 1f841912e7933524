package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/quell-ir/quell/internal/source/auth"
)

// Roles an API token may hold.
const (
	RoleRead    = "read"    // GET everything
	RoleWrite   = "write"   // POST /v1/events, revert transactions
	RoleApprove = "approve" // approve and reject transactions
)

// AuthConfig protects the API (everything under /v1 except
// /v1/sources/*, which has its own per-source authentication).
type AuthConfig struct {
	// Tokens are the API's bearer tokens. The token's name is the
	// caller's identity: approvals and reverts are recorded under it and a
	// request cannot claim to be someone else.
	Tokens []APIToken `yaml:"tokens"`
	// AllowOpen serves the API without tokens on a non-loopback address.
	// Without tokens quell otherwise listens only on loopback.
	AllowOpen bool `yaml:"allow_open"`
}

// APIToken is one bearer token.
type APIToken struct {
	Name  string         `yaml:"name"`
	Token auth.SecretRef `yaml:"token"`
	Roles []string       `yaml:"roles"`
	// Groups are checked against the approver group a policy requires
	// (e.g. incident-commanders for eradication).
	Groups []string `yaml:"groups"`
}

// Validate names the bad field.
func (c AuthConfig) Validate() error {
	seen := map[string]bool{}
	for i, t := range c.Tokens {
		if t.Name == "" || seen[t.Name] {
			return fmt.Errorf("tokens[%d].name: required and unique", i)
		}
		seen[t.Name] = true
		if err := t.Token.Validate(); err != nil {
			return fmt.Errorf("tokens[%d].token: %v", i, err)
		}
		if len(t.Roles) == 0 {
			return fmt.Errorf("tokens[%d].roles: at least one of read, write, approve", i)
		}
		for _, r := range t.Roles {
			if r != RoleRead && r != RoleWrite && r != RoleApprove {
				return fmt.Errorf("tokens[%d].roles: unknown role %q (read, write, approve)", i, r)
			}
		}
	}
	return nil
}

type principal struct {
	name   string
	roles  map[string]bool
	groups []string
	hash   [32]byte
}

// authenticator checks API bearer tokens.
type authenticator struct {
	tokens []principal
}

func newAuthenticator(c AuthConfig) (*authenticator, error) {
	a := &authenticator{}
	for i, t := range c.Tokens {
		v, err := t.Token.Resolve()
		if err != nil {
			return nil, fmt.Errorf("server.auth.tokens[%d].token: %w", i, err)
		}
		if len(v) < 16 {
			return nil, fmt.Errorf("server.auth.tokens[%d].token: shorter than 16 bytes", i)
		}
		p := principal{name: t.Name, roles: map[string]bool{}, groups: t.Groups, hash: sha256.Sum256(v)}
		for _, r := range t.Roles {
			p.roles[r] = true
		}
		a.tokens = append(a.tokens, p)
	}
	return a, nil
}

var errUnauthenticated = errors.New("missing or invalid bearer token")

// check returns the caller for a request that needs role. With no tokens
// configured every request passes anonymously.
func (a *authenticator) check(r *http.Request, role string) (string, error) {
	p, err := a.principal(r, role)
	return p.name, err
}

// groups of a verified caller.
func (a *authenticator) groups(name string) []string {
	for _, p := range a.tokens {
		if p.name == name {
			return p.groups
		}
	}
	return nil
}

func (a *authenticator) principal(r *http.Request, role string) (principal, error) {
	if a == nil || len(a.tokens) == 0 {
		return principal{}, nil
	}
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return principal{}, errUnauthenticated
	}
	sum := sha256.Sum256([]byte(tok))
	for _, p := range a.tokens {
		// Compare digests in constant time: no early exit on a prefix.
		if subtle.ConstantTimeCompare(sum[:], p.hash[:]) == 1 {
			if !p.roles[role] {
				return p, fmt.Errorf("%s lacks the %s role", p.name, role)
			}
			return p, nil
		}
	}
	return principal{}, errUnauthenticated
}
