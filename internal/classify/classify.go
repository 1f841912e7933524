// Package classify gives every event a Type from quell's taxonomy and a
// Priority P0..P3 following the seed runbook, with per-rule overrides from
// configuration.
//
// Parsers decide the Type (they know what their tool's rule names mean) and
// the OCSF SeverityID (from the tool's own severity); the Classifier then
// derives the Priority and applies the operator's overrides, so that the
// priority policy lives in one place.
package classify

import (
	"fmt"
	"sort"
	"strings"

	"github.com/quell-ir/quell/internal/event"
)

// The taxonomy. docs/sources.md describes each type.
const (
	BruteForce           = "brute_force"
	FailedAuthentication = "failed_authentication"
	PortScan             = "port_scan"
	Malware              = "malware"
	CryptoMining         = "crypto_mining"
	DataExfiltration     = "data_exfiltration"
	DNSTunneling         = "dns_tunneling"
	CommandAndControl    = "command_and_control"
	CredentialCompromise = "credential_compromise"
	UnauthorizedAccess   = "unauthorized_access"
	PrivilegeEscalation  = "privilege_escalation"
	DefenseEvasion       = "defense_evasion"
	Persistence          = "persistence"
	Execution            = "execution"
	Exploitation         = "exploitation"
	LateralMovement      = "lateral_movement"
	SuspiciousConnection = "suspicious_connection"
	DenialOfService      = "denial_of_service"
	PolicyViolation      = "policy_violation"
	Reconnaissance       = "reconnaissance"
	Anomaly              = "anomaly"
	Informational        = "informational"
)

// Priorities.
const (
	P0 = "P0" // active intrusion, exfiltration, DNS tunneling, unauthorized access
	P1 = "P1" // suspicious external connections, inter-service traffic, failed auth
	P2 = "P2" // policy drift, unusual traffic
	P3 = "P3" // informational
)

// basePriority is the runbook, type by type.
var basePriority = map[string]string{
	Malware:              P0,
	CryptoMining:         P0,
	DataExfiltration:     P0,
	DNSTunneling:         P0,
	CommandAndControl:    P0,
	CredentialCompromise: P0,
	UnauthorizedAccess:   P0,
	PrivilegeEscalation:  P0,
	DefenseEvasion:       P0,
	Persistence:          P0,
	BruteForce:           P1,
	FailedAuthentication: P1,
	Execution:            P1,
	Exploitation:         P1,
	LateralMovement:      P1,
	SuspiciousConnection: P1,
	DenialOfService:      P1,
	PortScan:             P2,
	PolicyViolation:      P2,
	Reconnaissance:       P2,
	Anomaly:              P2,
	Informational:        P3,
}

// Types lists the taxonomy, sorted.
func Types() []string {
	out := make([]string, 0, len(basePriority))
	for t := range basePriority {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Known reports whether t is in the taxonomy.
func Known(t string) bool { _, ok := basePriority[t]; return ok }

// PriorityFor is the default priority of a type at a severity: the type's
// runbook priority, raised from P1 to P0 when the source itself calls the
// event critical (OCSF severity 5 or 6). Unknown types are P2 (unusual).
func PriorityFor(typ string, severityID int) string {
	p, ok := basePriority[typ]
	if !ok {
		p = P2
	}
	if p == P1 && severityID >= 5 && severityID <= 6 {
		p = P0
	}
	return p
}

// Override replaces what a parser decided for one rule name.
type Override struct {
	Type     string `yaml:"type,omitempty" json:"type,omitempty"`
	Priority string `yaml:"priority,omitempty" json:"priority,omitempty"`
	// SeverityID, when set (1..6), replaces the source's severity.
	SeverityID int `yaml:"severity_id,omitempty" json:"severity_id,omitempty"`
}

// Config is the classification configuration.
type Config struct {
	// Overrides maps a rule name (Falco rule, GuardDuty finding type,
	// CloudTrail detection, Alertmanager alertname, CrowdSec scenario, ...)
	// to the type and/or priority to use instead of the defaults. Rule names
	// are matched exactly, then case-insensitively.
	Overrides map[string]Override `yaml:"overrides,omitempty" json:"overrides,omitempty"`
}

// DefaultConfig has no overrides: the built-in taxonomy mapping applies.
func DefaultConfig() Config { return Config{} }

// Validate checks every override; errors name the field.
func (c Config) Validate() error {
	keys := make([]string, 0, len(c.Overrides))
	for k := range c.Overrides {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, rule := range keys {
		o := c.Overrides[rule]
		field := fmt.Sprintf("overrides[%q]", rule)
		if strings.TrimSpace(rule) == "" {
			return fmt.Errorf("%s: empty rule name", field)
		}
		if o.Type == "" && o.Priority == "" && o.SeverityID == 0 {
			return fmt.Errorf("%s: sets none of type, priority, severity_id", field)
		}
		if o.Type != "" && !Known(o.Type) {
			return fmt.Errorf("%s.type: unknown type %q (known: %s)", field, o.Type, strings.Join(Types(), ", "))
		}
		switch o.Priority {
		case "", P0, P1, P2, P3:
		default:
			return fmt.Errorf("%s.priority: must be P0, P1, P2 or P3, got %q", field, o.Priority)
		}
		if o.SeverityID < 0 || o.SeverityID > 6 {
			return fmt.Errorf("%s.severity_id: must be 1..6, got %d", field, o.SeverityID)
		}
	}
	return nil
}

// Classifier applies the priority policy and the overrides. It is immutable
// after New and safe for concurrent use.
type Classifier struct {
	exact map[string]Override
	fold  map[string]Override
}

// New builds a Classifier from a validated Config.
func New(c Config) (*Classifier, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("classify config: %w", err)
	}
	cl := &Classifier{exact: map[string]Override{}, fold: map[string]Override{}}
	for k, v := range c.Overrides {
		cl.exact[k] = v
		cl.fold[strings.ToLower(k)] = v
	}
	return cl, nil
}

// Default is a Classifier without overrides.
func Default() *Classifier {
	return &Classifier{exact: map[string]Override{}, fold: map[string]Override{}}
}

// Apply completes an event whose parser set Type and SeverityID: an empty
// or unknown Type becomes "anomaly", Priority follows PriorityFor unless the
// parser already chose one, and a matching override wins over both.
func (c *Classifier) Apply(e *event.Event) {
	if c == nil {
		c = Default()
	}
	if !Known(e.Type) {
		e.Type = Anomaly
	}
	if e.SeverityID < 0 || e.SeverityID > 6 {
		e.SeverityID = 0
	}
	o, ok := c.exact[e.Rule]
	if !ok {
		o, ok = c.fold[strings.ToLower(e.Rule)]
	}
	if ok {
		if o.Type != "" {
			e.Type = o.Type
			e.Priority = ""
		}
		if o.SeverityID != 0 {
			e.SeverityID = o.SeverityID
		}
	}
	if e.Priority == "" {
		e.Priority = PriorityFor(e.Type, e.SeverityID)
	}
	if ok && o.Priority != "" {
		e.Priority = o.Priority
	}
}
