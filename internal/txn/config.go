package txn

import (
	"fmt"
	"time"
)

// Config tunes the engine. Zero values take the defaults.
type Config struct {
	// Mode is the global mode. audit (the default) overrides every
	// playbook's enforce: a fresh install changes nothing.
	Mode Mode `yaml:"mode"`
	// Concurrency bounds transactions running at once (the seed's lesson
	// from 500 simultaneous pod deletions).
	Concurrency int `yaml:"concurrency"`
	// MaxDuration is the deadline of one run (guards to commit).
	MaxDuration time.Duration `yaml:"max_duration"`
	// Retry governs retries of errors an action marks retryable.
	Retry RetryConfig `yaml:"retry"`
	// RateLimits caps calls per second per provider (firewall, kube, aws...).
	RateLimits map[string]RateLimit `yaml:"rate_limits"`
	// ApprovalTimeout is how long a transaction waits for approval when the
	// policy does not say.
	ApprovalTimeout time.Duration `yaml:"approval_timeout"`
	// DefaultTTL applies to reversible containment steps without a TTL.
	// Zero means containment without a TTL stays until reverted by hand.
	DefaultTTL time.Duration `yaml:"default_ttl"`
}

// RetryConfig is exponential backoff with full jitter.
type RetryConfig struct {
	MaxAttempts int           `yaml:"max_attempts"`
	Base        time.Duration `yaml:"base"`
	Max         time.Duration `yaml:"max"`
}

// RateLimit is a token bucket.
type RateLimit struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeAudit
	}
	if c.Concurrency == 0 {
		c.Concurrency = 50
	}
	if c.MaxDuration == 0 {
		c.MaxDuration = 2 * time.Minute
	}
	if c.Retry.MaxAttempts == 0 {
		c.Retry.MaxAttempts = 5
	}
	if c.Retry.Base == 0 {
		c.Retry.Base = 100 * time.Millisecond
	}
	if c.Retry.Max == 0 {
		c.Retry.Max = 10 * time.Second
	}
	if c.ApprovalTimeout == 0 {
		c.ApprovalTimeout = time.Hour
	}
	return c
}

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	if c.Mode != "" && c.Mode != ModeAudit && c.Mode != ModeEnforce {
		return fmt.Errorf("mode: must be audit or enforce, got %q", c.Mode)
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("concurrency: must be positive, got %d", c.Concurrency)
	}
	if c.MaxDuration < 0 {
		return fmt.Errorf("max_duration: must be positive")
	}
	if c.Retry.MaxAttempts < 0 {
		return fmt.Errorf("retry.max_attempts: must be positive")
	}
	if c.Retry.Base < 0 || c.Retry.Max < 0 {
		return fmt.Errorf("retry: durations must be positive")
	}
	for p, rl := range c.RateLimits {
		if rl.PerSecond <= 0 {
			return fmt.Errorf("rate_limits.%s.per_second: must be > 0", p)
		}
		if rl.Burst < 0 {
			return fmt.Errorf("rate_limits.%s.burst: must not be negative", p)
		}
	}
	if c.ApprovalTimeout < 0 {
		return fmt.Errorf("approval_timeout: must be positive")
	}
	return nil
}
