package playbook

import (
	"errors"
	"fmt"
)

// Config is the playbooks section of quell's configuration.
type Config struct {
	// Paths are playbook files or directories (every *.yaml / *.yml directly
	// inside; names starting with a dot are skipped, so a Kubernetes
	// ConfigMap mount is read once).
	Paths []string `yaml:"paths"`
	// MatchCostLimit bounds the CEL runtime cost of one match expression on
	// one event. An expression that exceeds it is a non-match with an error.
	MatchCostLimit uint64 `yaml:"match_cost_limit"`
	// MaxMatchLength bounds the source length of a match expression.
	MaxMatchLength int `yaml:"max_match_length"`
}

// Defaults for Config.
const (
	DefaultPath           = "/etc/quell/playbooks"
	DefaultMatchCostLimit = 1_000_000 // the Kubernetes per-call limit
	DefaultMaxMatchLength = 8192
)

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Paths:          []string{DefaultPath},
		MatchCostLimit: DefaultMatchCostLimit,
		MaxMatchLength: DefaultMaxMatchLength,
	}
}

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	var errs []error
	for i, p := range c.Paths {
		if p == "" {
			errs = append(errs, fmt.Errorf("playbooks.paths[%d]: must not be empty", i))
		}
	}
	if c.MatchCostLimit == 0 {
		errs = append(errs, errors.New("playbooks.match_cost_limit: must be positive"))
	}
	if c.MaxMatchLength <= 0 {
		errs = append(errs, errors.New("playbooks.max_match_length: must be positive"))
	}
	return errors.Join(errs...)
}

// withDefaults fills zero fields, so that a Config built in code by hand
// still bounds evaluation.
func (c Config) withDefaults() Config {
	if c.MatchCostLimit == 0 {
		c.MatchCostLimit = DefaultMatchCostLimit
	}
	if c.MaxMatchLength <= 0 {
		c.MaxMatchLength = DefaultMaxMatchLength
	}
	return c
}
