// Package event holds quell's normalized security event. Field names follow
// OCSF where OCSF has one (class, severity_id, time, src_endpoint, actor,
// resources, observables); everything a source knows but the model does not
// is kept verbatim in Raw.
package event

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Event is one normalized security event. Every string in it came from an
// attacker-influenced document: actions never use these values without
// typing and validating them first (see package action).
type Event struct {
	ID         string    `json:"id,omitempty"`
	Source     string    `json:"source"`              // falco, guardduty, cloudtrail, alertmanager, crowdsec, k8saudit, generic
	Class      string    `json:"class,omitempty"`     // OCSF class name, e.g. "Detection Finding"
	ClassUID   int       `json:"class_uid,omitempty"` // OCSF class uid, e.g. 2004
	Type       string    `json:"type,omitempty"`      // quell taxonomy: brute_force, port_scan, ...
	SeverityID int       `json:"severity_id"`         // OCSF: 0 unknown, 1 info, 2 low, 3 medium, 4 high, 5 critical, 6 fatal
	Severity   string    `json:"severity,omitempty"`  // the source's own word, e.g. "Critical", "8.0"
	Priority   string    `json:"priority,omitempty"`  // P0..P3
	Time       time.Time `json:"time"`                // when it happened, per the source
	Rule       string    `json:"rule,omitempty"`      // the detection rule / finding type / scenario
	Message    string    `json:"message,omitempty"`
	Status     string    `json:"status,omitempty"` // "" (open) or "resolved"
	Count      int       `json:"count,omitempty"`  // how many times the source has seen it (GuardDuty service.count)
	Tags       []string  `json:"tags,omitempty"`

	SrcEndpoint *Endpoint         `json:"src_endpoint,omitempty"`
	DstEndpoint *Endpoint         `json:"dst_endpoint,omitempty"`
	Actor       *Actor            `json:"actor,omitempty"`
	Process     *Process          `json:"process,omitempty"`
	Kubernetes  *Kubernetes       `json:"kubernetes,omitempty"`
	Cloud       *Cloud            `json:"cloud,omitempty"`
	Resources   []Resource        `json:"resources,omitempty"`
	Observables []Observable      `json:"observables,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"` // free-form key/values the source supplied

	Fingerprint string          `json:"fingerprint,omitempty"`
	Raw         json.RawMessage `json:"raw,omitempty"`
	ReceivedAt  time.Time       `json:"received_at,omitempty"`
}

// Endpoint is a network endpoint (OCSF network_endpoint).
type Endpoint struct {
	IP       string `json:"ip,omitempty"`
	Port     int    `json:"port,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	Domain   string `json:"domain,omitempty"`
	Country  string `json:"country,omitempty"`
	ASN      int    `json:"asn,omitempty"`
	Org      string `json:"org,omitempty"`
}

// Actor is who did it (OCSF actor): a user, a role, a key.
type Actor struct {
	User        string   `json:"user,omitempty"`
	UID         string   `json:"uid,omitempty"`
	Type        string   `json:"type,omitempty"` // IAMUser, AssumedRole, Root, ServiceAccount, ...
	AccessKeyID string   `json:"access_key_id,omitempty"`
	Role        string   `json:"role,omitempty"`
	Groups      []string `json:"groups,omitempty"`
	UserAgent   string   `json:"user_agent,omitempty"`
}

// Process is the process that triggered a host or container detection.
type Process struct {
	Name    string `json:"name,omitempty"`
	PID     int    `json:"pid,omitempty"`
	CmdLine string `json:"cmd_line,omitempty"`
	User    string `json:"user,omitempty"`
	Parent  string `json:"parent,omitempty"`
	File    string `json:"file,omitempty"`
}

// Kubernetes holds the cluster entities an event names.
type Kubernetes struct {
	Cluster        string `json:"cluster,omitempty"`
	Namespace      string `json:"namespace,omitempty"`
	Pod            string `json:"pod,omitempty"`
	Node           string `json:"node,omitempty"`
	ServiceAccount string `json:"service_account,omitempty"`
	Container      string `json:"container,omitempty"`
	ContainerID    string `json:"container_id,omitempty"`
	Image          string `json:"image,omitempty"`
	Workload       string `json:"workload,omitempty"` // kind/name, e.g. deployment/web
	Verb           string `json:"verb,omitempty"`     // audit events
	Resource       string `json:"resource,omitempty"` // audit events: pods/exec, secrets, ...
}

// Cloud holds the cloud entities an event names.
type Cloud struct {
	Provider   string `json:"provider,omitempty"` // aws
	Account    string `json:"account,omitempty"`
	Region     string `json:"region,omitempty"`
	InstanceID string `json:"instance_id,omitempty"`
	API        string `json:"api,omitempty"`     // eventName for CloudTrail, action api for GuardDuty
	Service    string `json:"service,omitempty"` // eventSource, e.g. iam.amazonaws.com
}

// Resource is an affected resource (OCSF resource_details).
type Resource struct {
	Type string `json:"type"`
	Name string `json:"name,omitempty"`
	UID  string `json:"uid,omitempty"`
}

// Observable is an indicator named in the event (OCSF observable).
type Observable struct {
	Type  string `json:"type"` // ip, domain, hash, user, ...
	Value string `json:"value"`
}

// Status values.
const (
	StatusOpen     = ""
	StatusResolved = "resolved"
)

// FieldError says which field of an input is wrong and why. Parsers and the
// API return it so that a client can fix its document.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Errorf builds a FieldError.
func Errorf(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

var (
	sourceRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	priorityRE = regexp.MustCompile(`^P[0-3]$`)
)

// MaxIDLen bounds ids supplied by clients.
const MaxIDLen = 128

// Validate checks the fields quell relies on. Values that later feed actions
// (addresses, names) are validated again, typed, by the action.
func (e *Event) Validate() error {
	if len(e.ID) > MaxIDLen {
		return Errorf("id", "longer than %d characters", MaxIDLen)
	}
	if strings.ContainsAny(e.ID, "\x00\n\r/") {
		return Errorf("id", "contains a control character or '/'")
	}
	if e.Source == "" {
		return Errorf("source", "required")
	}
	if !sourceRE.MatchString(e.Source) {
		return Errorf("source", "must match %s", sourceRE)
	}
	if e.SeverityID < 0 || e.SeverityID > 6 && e.SeverityID != 99 {
		return Errorf("severity_id", "must be 0..6 or 99 (OCSF), got %d", e.SeverityID)
	}
	if e.Priority != "" && !priorityRE.MatchString(e.Priority) {
		return Errorf("priority", "must be one of P0, P1, P2, P3, got %q", e.Priority)
	}
	if e.Status != StatusOpen && e.Status != StatusResolved {
		return Errorf("status", "must be empty or %q, got %q", StatusResolved, e.Status)
	}
	if e.Count < 0 {
		return Errorf("count", "must not be negative")
	}
	for _, ep := range []struct {
		name string
		e    *Endpoint
	}{{"src_endpoint", e.SrcEndpoint}, {"dst_endpoint", e.DstEndpoint}} {
		if ep.e == nil {
			continue
		}
		if ep.e.IP != "" {
			if _, err := netip.ParseAddr(ep.e.IP); err != nil {
				return Errorf(ep.name+".ip", "not an IP address: %q", ep.e.IP)
			}
		}
		if ep.e.Port < 0 || ep.e.Port > 65535 {
			return Errorf(ep.name+".port", "must be 0..65535, got %d", ep.e.Port)
		}
	}
	for i, o := range e.Observables {
		if o.Type == "" {
			return Errorf(fmt.Sprintf("observables[%d].type", i), "required")
		}
	}
	for i, r := range e.Resources {
		if r.Type == "" {
			return Errorf(fmt.Sprintf("resources[%d].type", i), "required")
		}
	}
	return nil
}

// Normalize fills derived fields: time defaults, severity_id from priority and
// the fingerprint. It is idempotent.
func (e *Event) Normalize(now time.Time) {
	if e.ReceivedAt.IsZero() {
		e.ReceivedAt = now.UTC()
	}
	// The fingerprint is taken before the time is defaulted: a redelivery
	// of an event without its own time must still match the first copy.
	if e.Fingerprint == "" {
		e.Fingerprint = e.ComputeFingerprint()
	}
	if e.Time.IsZero() {
		e.Time = e.ReceivedAt
	}
	e.Time = e.Time.UTC()
	if e.Class == "" {
		e.Class, e.ClassUID = "Detection Finding", 2004
	}
	if e.Count == 0 {
		e.Count = 1
	}
}

// ComputeFingerprint is the dedup key: the same detection on the same
// entities at the same source time is the same event, however many times a
// webhook redelivers it.
func (e *Event) ComputeFingerprint() string {
	// The bytes hashed are exactly those of the original
	// fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%s\x00", ...) and
	// fmt.Fprintf(h, "%s=%s\x00", kind, value) per entity, built without fmt.
	var stack [512]byte
	b := stack[:0]
	b = append(b, e.Source...)
	b = append(b, 0)
	b = append(b, e.Rule...)
	b = append(b, 0)
	b = append(b, e.Type...)
	b = append(b, 0)
	if !e.Time.IsZero() {
		b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	}
	b = append(b, 0)
	b = append(b, e.Status...)
	b = append(b, 0)
	for _, k := range e.Entities() {
		b = append(b, k.Kind...)
		b = append(b, '=')
		b = append(b, k.Value...)
		b = append(b, 0)
	}
	if e.Rule == "" && e.Message != "" {
		b = append(b, e.Message...)
	}
	sum := sha256.Sum256(b)
	var out [32]byte
	hex.Encode(out[:], sum[:16])
	return string(out[:])
}

// Entity is one thing an event names that correlation and actions care about.
type Entity struct {
	Kind  string `json:"kind"` // ip, pod, node, service_account, namespace, access_key, user, role, instance, account, process, host
	Value string `json:"value"`
}

func (k Entity) String() string { return k.Kind + ":" + k.Value }

// Entities lists the entities an event names, sorted and without repeats.
// Namespaced Kubernetes names are qualified (ns/name) so that two pods with
// the same name in different namespaces stay apart.
func (e *Event) Entities() []Entity {
	out := make([]Entity, 0, 8)
	add := func(kind, v string) {
		if v != "" {
			out = append(out, Entity{kind, v})
		}
	}
	if e.SrcEndpoint != nil {
		add("ip", e.SrcEndpoint.IP)
		add("host", e.SrcEndpoint.Hostname)
	}
	if e.DstEndpoint != nil {
		add("ip", e.DstEndpoint.IP)
		add("host", e.DstEndpoint.Hostname)
	}
	if k := e.Kubernetes; k != nil {
		qual := func(n string) string {
			if n == "" || k.Namespace == "" {
				return n
			}
			return k.Namespace + "/" + n
		}
		add("namespace", k.Namespace)
		add("pod", qual(k.Pod))
		add("node", k.Node)
		add("service_account", qual(k.ServiceAccount))
	}
	if a := e.Actor; a != nil {
		add("user", a.User)
		add("access_key", a.AccessKeyID)
		add("role", a.Role)
	}
	if c := e.Cloud; c != nil {
		add("instance", c.InstanceID)
		add("account", c.Account)
	}
	slices.SortFunc(out, func(a, b Entity) int {
		if c := strings.Compare(a.Kind, b.Kind); c != 0 {
			return c
		}
		return strings.Compare(a.Value, b.Value)
	})
	if len(out) == 0 {
		return nil
	}
	dedup := out[:0]
	for i, k := range out {
		if i == 0 || k != out[i-1] {
			dedup = append(dedup, k)
		}
	}
	return dedup
}

// PartitionKey picks the entity whose events must be decided in order. The
// attacker address is the usual one; otherwise the most specific entity.
func (e *Event) PartitionKey() string {
	if e.SrcEndpoint != nil && e.SrcEndpoint.IP != "" {
		return "ip:" + e.SrcEndpoint.IP
	}
	if k := e.Kubernetes; k != nil && k.Pod != "" {
		return "pod:" + k.Namespace + "/" + k.Pod
	}
	if a := e.Actor; a != nil && a.AccessKeyID != "" {
		return "access_key:" + a.AccessKeyID
	}
	if ents := e.Entities(); len(ents) > 0 {
		return ents[0].String()
	}
	return "source:" + e.Source
}

// SeverityName maps an OCSF severity id to its name.
func SeverityName(id int) string {
	switch id {
	case 1:
		return "informational"
	case 2:
		return "low"
	case 3:
		return "medium"
	case 4:
		return "high"
	case 5:
		return "critical"
	case 6:
		return "fatal"
	default:
		return "unknown"
	}
}

// AsMap renders the event as the generic map that playbook expressions and
// templates see. It goes through JSON so that expressions use the same field
// names as the API.
func (e *Event) AsMap() map[string]any {
	c := *e
	c.Raw = nil
	b, _ := json.Marshal(&c)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	// Expressions test scalar fields without has(): a missing type is "",
	// not an error.
	for _, k := range []string{"type", "rule", "message", "priority", "severity", "status"} {
		if _, ok := m[k]; !ok {
			m[k] = ""
		}
	}
	if len(e.Raw) > 0 {
		var raw any
		if json.Unmarshal(e.Raw, &raw) == nil {
			m["raw"] = raw
		}
	}
	return m
}
