// Package policy decides with policy as code whether quell may run an
// action: an embedded OPA evaluates Rego policies loaded from a directory or a
// (signed) bundle, prepared once and swapped atomically on reload. It also
// runs preparation checks over Terraform plans and Kubernetes manifests and
// the Rego unit tests of a policy tree.
package policy

import (
	"errors"
	"fmt"
	"time"
)

// DefaultQuery is the rule the decider evaluates. Its contract is documented
// in docs/policy.md.
const DefaultQuery = "data.quell.decision"

// Config configures the policy decider. The lead embeds it in the main
// configuration under `policy:`.
type Config struct {
	// Enabled turns the OPA decider on. When false the engine keeps its
	// built-in default (allow what the guards allow).
	Enabled bool `yaml:"enabled"`
	// Dir is a directory of .rego and data.json/data.yaml files (loaded as a
	// bundle tree; *_test.rego files are skipped). Exactly one of Dir and
	// Bundle is required when Enabled.
	Dir string `yaml:"dir"`
	// Bundle is an OPA bundle file (.tar.gz with .manifest).
	Bundle string `yaml:"bundle"`
	// Query is the decision rule.
	Query string `yaml:"query"`
	// Watch re-prepares the policy when its files change.
	Watch bool `yaml:"watch"`
	// WatchDebounce waits for the files to be quiet this long before a
	// reload, so that an editor's save or a bundle copy is seen whole.
	WatchDebounce time.Duration `yaml:"watch_debounce"`
	// IncludeRaw adds the event's original document as input.event.raw.
	// It costs latency on every decision; policies rarely need it.
	IncludeRaw bool `yaml:"include_raw"`
	// Verification checks bundle signatures when keys are configured.
	Verification Verification `yaml:"verification"`
	// Timeout bounds one evaluation; an evaluation that runs out denies.
	Timeout time.Duration `yaml:"timeout"`
}

// Verification configures bundle signature verification. When PublicKeys is
// empty, signatures are not checked; when it is set, an unsigned or
// wrongly-signed bundle (or directory) is refused.
type Verification struct {
	// PublicKeys maps a key id to a PEM public key file (RSA or ECDSA) or,
	// for HMAC algorithms, a file holding the shared secret.
	PublicKeys map[string]PublicKey `yaml:"public_keys"`
	// KeyID is the key to use when the signature names none.
	KeyID string `yaml:"key_id"`
	// Scope, when set, must equal the signature's scope claim.
	Scope string `yaml:"scope"`
	// Exclude lists bundle files that are not covered by the signature.
	Exclude []string `yaml:"exclude_files"`
}

// PublicKey is one verification key.
type PublicKey struct {
	// File holds the PEM public key (or HMAC secret).
	File string `yaml:"file"`
	// Algorithm is the JWS algorithm: RS256 (default), RS384, RS512,
	// PS256.., ES256, ES384, ES512, HS256...
	Algorithm string `yaml:"algorithm"`
}

// DefaultConfig returns the defaults: disabled, query data.quell.decision,
// watch on with a 250ms debounce, 1s evaluation timeout.
func DefaultConfig() Config {
	return Config{
		Query:         DefaultQuery,
		Watch:         true,
		WatchDebounce: 250 * time.Millisecond,
		Timeout:       time.Second,
	}
}

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	var errs []error
	if c.Enabled {
		switch {
		case c.Dir == "" && c.Bundle == "":
			errs = append(errs, errors.New("policy.dir or policy.bundle: one is required when policy.enabled is true"))
		case c.Dir != "" && c.Bundle != "":
			errs = append(errs, errors.New("policy.dir and policy.bundle: set only one"))
		}
	}
	if c.Query == "" {
		errs = append(errs, errors.New("policy.query: required"))
	}
	if c.WatchDebounce < 0 {
		errs = append(errs, fmt.Errorf("policy.watch_debounce: must not be negative, got %s", c.WatchDebounce))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("policy.timeout: must be positive, got %s", c.Timeout))
	}
	for id, k := range c.Verification.PublicKeys {
		if k.File == "" {
			errs = append(errs, fmt.Errorf("policy.verification.public_keys.%s.file: required", id))
		}
	}
	if c.Verification.KeyID != "" {
		if _, ok := c.Verification.PublicKeys[c.Verification.KeyID]; !ok {
			errs = append(errs, fmt.Errorf("policy.verification.key_id: %q is not in policy.verification.public_keys", c.Verification.KeyID))
		}
	}
	return errors.Join(errs...)
}
