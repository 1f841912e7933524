// Package generic maps arbitrary JSON to quell events with a declarative
// field mapping from configuration, for tools without a dedicated parser.
package generic

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/decode"
)

// Name is the default source name.
const Name = "generic"

// Fields lists the model fields a mapping may set.
var Fields = []string{
	"id", "rule", "message", "severity", "time", "type", "priority", "status", "count", "tags",
	"source_ip", "source_port", "source_hostname", "destination_ip", "destination_port", "destination_hostname", "domain",
	"user", "user_type", "access_key_id", "role",
	"cluster", "namespace", "pod", "node", "service_account", "container", "image",
	"process", "cmdline", "pid", "process_user",
	"account", "region", "instance_id",
}

// Mapping is one declarative mapping from a JSON document to an event.
type Mapping struct {
	// Source is the event's source name (default "generic").
	Source string `yaml:"source,omitempty" json:"source,omitempty"`
	// Events, when set, is a path to the array of event objects inside
	// each document, e.g. "$.alerts[*]" or "$.alerts".
	Events string `yaml:"events,omitempty" json:"events,omitempty"`
	// Fields maps model fields (see Fields) to paths, e.g.
	// {source_ip: "$.client.addr", rule: "$.alert.name"}. A path may list
	// alternatives: "$.src_ip | $.client.ip".
	Fields map[string]string `yaml:"fields" json:"fields"`
	// Labels maps label names to paths.
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	// SeverityMap maps the source's severity values (compared
	// case-insensitively) to OCSF severity names (informational, low,
	// medium, high, critical, fatal) or ids "1".."6".
	SeverityMap map[string]string `yaml:"severity_map,omitempty" json:"severity_map,omitempty"`
	// Type is the type used when neither the mapped type field nor the
	// rule name gives one.
	Type string `yaml:"type,omitempty" json:"type,omitempty"`
}

// DefaultMapping reads documents that use common field names directly.
func DefaultMapping() Mapping {
	return Mapping{
		Fields: map[string]string{
			"id":               "$.id",
			"rule":             "$.rule | $.rule_name | $.alert | $.name | $.title",
			"message":          "$.message | $.msg | $.description | $.summary",
			"severity":         "$.severity | $.level | $.priority",
			"time":             "$.time | $.timestamp | $['@timestamp'] | $.ts",
			"type":             "$.type | $.category",
			"source_ip":        "$.source_ip | $.src_ip | $.src | $.client_ip | $.source.ip",
			"source_port":      "$.source_port | $.src_port | $.source.port",
			"destination_ip":   "$.destination_ip | $.dst_ip | $.dest_ip | $.destination.ip",
			"destination_port": "$.destination_port | $.dst_port | $.dest_port | $.destination.port",
			"user":             "$.user | $.username | $.user.name",
			"namespace":        "$.namespace | $.kubernetes.namespace",
			"pod":              "$.pod | $.kubernetes.pod",
			"node":             "$.node | $.kubernetes.node",
			"tags":             "$.tags",
		},
	}
}

var sourceRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// Validate checks the mapping; errors name the field.
func (m Mapping) Validate() error {
	if m.Source != "" && !sourceRE.MatchString(m.Source) {
		return fmt.Errorf("source: must match %s, got %q", sourceRE, m.Source)
	}
	if m.Events != "" {
		if _, err := ParsePath(m.Events); err != nil {
			return fmt.Errorf("events: %w", err)
		}
	}
	if len(m.Fields) == 0 {
		return fmt.Errorf("fields: at least one field mapping is required")
	}
	known := map[string]bool{}
	for _, f := range Fields {
		known[f] = true
	}
	for _, k := range sortedKeys(m.Fields) {
		if !known[k] {
			return fmt.Errorf("fields.%s: unknown field (known: %s)", k, strings.Join(Fields, ", "))
		}
		p, err := ParsePath(m.Fields[k])
		if err != nil {
			return fmt.Errorf("fields.%s: %w", k, err)
		}
		if p.hasWildcard() && k != "tags" {
			return fmt.Errorf("fields.%s: [*] is only allowed for tags", k)
		}
	}
	for _, k := range sortedKeys(m.Labels) {
		if _, err := ParsePath(m.Labels[k]); err != nil {
			return fmt.Errorf("labels.%s: %w", k, err)
		}
	}
	for _, k := range sortedKeys(m.SeverityMap) {
		if sevID(m.SeverityMap[k]) == 0 {
			return fmt.Errorf("severity_map[%q]: %q is not an OCSF severity (informational, low, medium, high, critical, fatal or 1..6)", k, m.SeverityMap[k])
		}
	}
	if m.Type != "" && !classify.Known(m.Type) {
		return fmt.Errorf("type: unknown type %q", m.Type)
	}
	return nil
}

func sevID(s string) int {
	if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n >= 1 && n <= 6 {
		return n
	}
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "informational", "info":
		return 1
	case "low":
		return 2
	case "medium":
		return 3
	case "high":
		return 4
	case "critical":
		return 5
	case "fatal":
		return 6
	}
	return 0
}

// Parser applies one Mapping.
type Parser struct {
	name   string
	source string
	events *Path
	fields map[string]Path
	labels map[string]Path
	sevMap map[string]int
	typ    string
	cls    *classify.Classifier
}

// New builds a Parser named name (the registry key) from a Mapping.
func New(name string, m Mapping, cls *classify.Classifier) (*Parser, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("generic mapping %s: %w", name, err)
	}
	p := &Parser{name: name, source: m.Source, fields: map[string]Path{}, labels: map[string]Path{}, sevMap: map[string]int{}, typ: m.Type, cls: cls}
	if p.source == "" {
		p.source = Name
	}
	if m.Events != "" {
		ep, _ := ParsePath(m.Events)
		p.events = &ep
	}
	for k, v := range m.Fields {
		p.fields[k], _ = ParsePath(v)
	}
	for k, v := range m.Labels {
		p.labels[k], _ = ParsePath(v)
	}
	for k, v := range m.SeverityMap {
		p.sevMap[strings.ToLower(k)] = sevID(v)
	}
	return p, nil
}

// Name implements source.Parser.
func (p *Parser) Name() string { return p.name }

// Parse implements source.Parser.
func (p *Parser) Parse(body []byte) (decode.Result, error) {
	docs, err := decode.Split(body)
	if err != nil {
		return decode.Result{}, err
	}
	var res decode.Result
	for _, d := range docs {
		dec := json.NewDecoder(bytes.NewReader(d.Raw))
		dec.UseNumber()
		var doc any
		if err := dec.Decode(&doc); err != nil {
			return decode.Result{}, decode.Wrap(d.Path, err)
		}
		if p.events == nil {
			if err := p.one(&res, d.Path, doc, d.Raw); err != nil {
				return decode.Result{}, err
			}
			continue
		}
		v, ok := p.events.Lookup(doc)
		if !ok {
			return decode.Result{}, event.Errorf(rootIfEmpty(decode.Join(d.Path, p.events.field())), "no events at this path")
		}
		items, ok := v.([]any)
		if !ok {
			items = []any{v}
		}
		if len(items) > decode.MaxDocuments {
			return decode.Result{}, event.Errorf(rootIfEmpty(decode.Join(d.Path, p.events.field())), "more than %d events", decode.MaxDocuments)
		}
		for i, it := range items {
			raw, err := json.Marshal(it)
			if err != nil {
				return decode.Result{}, decode.Wrap(d.Path, err)
			}
			if err := p.one(&res, fmt.Sprintf("%s[%d]", decode.Join(d.Path, strings.TrimSuffix(p.events.field(), "[*]")), i), it, raw); err != nil {
				return decode.Result{}, err
			}
		}
	}
	return res, nil
}

func scalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	}
	return ""
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,100}$`)

func (p *Parser) one(res *decode.Result, path string, doc any, raw []byte) error {
	if _, ok := doc.(map[string]any); !ok {
		return event.Errorf(rootIfEmpty(path), "expected an object")
	}
	get := func(f string) string {
		pt, ok := p.fields[f]
		if !ok {
			return ""
		}
		v, ok := pt.LookupScalar(doc)
		if !ok {
			return ""
		}
		return decode.Clip(strings.TrimSpace(scalar(v)))
	}
	fieldErr := func(f, format string, args ...any) error {
		return event.Errorf(rootIfEmpty(decode.Join(path, p.fields[f].field())), format, args...)
	}
	e := event.Event{Source: p.source, Raw: append(json.RawMessage(nil), raw...)}
	if id := get("id"); id != "" {
		if !idRE.MatchString(id) {
			return fieldErr("id", "not a usable id: %.60q", id)
		}
		e.ID = p.source + "-" + id
	}
	e.Rule, e.Message = get("rule"), get("message")
	if t := get("time"); t != "" {
		tm, err := decode.ParseTime(t)
		if err != nil {
			return fieldErr("time", "%v", err)
		}
		e.Time = tm
	}
	if s := get("severity"); s != "" {
		e.Severity = s
		if id, ok := p.sevMap[strings.ToLower(s)]; ok {
			e.SeverityID = id
		} else if id := classify.SeverityFromWord(s); id != 0 {
			e.SeverityID = id
		} else if n, err := strconv.Atoi(s); err == nil && n >= 1 && n <= 6 {
			e.SeverityID = n
		}
	}
	switch st := strings.ToLower(get("status")); st {
	case "resolved", "closed", "ok":
		e.Status = event.StatusResolved
	}
	if c := get("count"); c != "" {
		if n, ok := decode.ParseInt(c); ok && n > 0 && n < 1<<31 {
			e.Count = int(n)
		}
	}
	if pt, ok := p.fields["tags"]; ok {
		if v, ok := pt.Lookup(doc); ok {
			list, isList := v.([]any)
			if !isList {
				list = []any{v}
			}
			for _, t := range list {
				if s := scalar(t); s != "" && len(e.Tags) < decode.MaxLabels {
					e.Tags = append(e.Tags, decode.Clip(s))
				}
			}
		}
	}
	endpoint := func(ipField, portField, hostField string) (*event.Endpoint, error) {
		ep := &event.Endpoint{Hostname: get(hostField)}
		if s := get(ipField); s != "" {
			ip, port, ok := decode.HostPort(s)
			if !ok {
				return nil, fieldErr(ipField, "not an IP address: %.60q", s)
			}
			ep.IP, ep.Port = ip, port
		}
		if s := get(portField); s != "" {
			n, ok := decode.ParseInt(s)
			if !ok || decode.Port(n) == 0 {
				return nil, fieldErr(portField, "not a port: %.20q", s)
			}
			ep.Port = int(n)
		}
		if *ep == (event.Endpoint{}) {
			return nil, nil
		}
		if ep.IP != "" {
			decode.AddObservable(&e, "ip", ep.IP)
		}
		return ep, nil
	}
	var err error
	if e.SrcEndpoint, err = endpoint("source_ip", "source_port", "source_hostname"); err != nil {
		return err
	}
	if e.DstEndpoint, err = endpoint("destination_ip", "destination_port", "destination_hostname"); err != nil {
		return err
	}
	if d := get("domain"); d != "" {
		if e.DstEndpoint == nil {
			e.DstEndpoint = &event.Endpoint{}
		}
		e.DstEndpoint.Domain = d
		decode.AddObservable(&e, "domain", d)
	}
	if a := (event.Actor{User: get("user"), Type: get("user_type"), AccessKeyID: get("access_key_id"), Role: get("role")}); a.User != "" || a.Type != "" || a.AccessKeyID != "" || a.Role != "" {
		e.Actor = &a
	}
	k := event.Kubernetes{
		Cluster: get("cluster"), Namespace: get("namespace"), Pod: get("pod"), Node: get("node"),
		ServiceAccount: get("service_account"), Container: get("container"), Image: get("image"),
	}
	for f, v := range map[string]string{"namespace": k.Namespace, "pod": k.Pod, "node": k.Node, "service_account": k.ServiceAccount} {
		if v == "" {
			continue
		}
		valid := decode.K8sName(v) != ""
		if f == "namespace" {
			valid = decode.K8sLabel(v) != ""
		}
		if !valid {
			return fieldErr(f, "not a valid Kubernetes name: %.60q", v)
		}
	}
	if k != (event.Kubernetes{}) {
		e.Kubernetes = &k
	}
	pr := event.Process{Name: get("process"), CmdLine: get("cmdline"), User: get("process_user")}
	if s := get("pid"); s != "" {
		if n, ok := decode.ParseInt(s); ok && n > 0 && n < 1<<31 {
			pr.PID = int(n)
		}
	}
	if pr != (event.Process{}) {
		e.Process = &pr
	}
	if c := (event.Cloud{Account: get("account"), Region: get("region"), InstanceID: get("instance_id")}); c != (event.Cloud{}) {
		e.Cloud = &c
	}
	for _, name := range sortedPathKeys(p.labels) {
		if v, ok := p.labels[name].LookupScalar(doc); ok {
			decode.AddLabel(&e, name, scalar(v))
		}
	}
	if t := strings.ToLower(get("type")); classify.Known(t) {
		e.Type = t
	} else if p.typ != "" {
		e.Type = p.typ
	} else if t := classify.FromKeywords(e.Rule, e.Message); t != "" {
		e.Type = t
	}
	if pr := strings.ToUpper(get("priority")); pr == "P0" || pr == "P1" || pr == "P2" || pr == "P3" {
		e.Priority = pr
	}
	p.cls.Apply(&e)
	return res.AddEvent(path, e)
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedPathKeys(m map[string]Path) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func rootIfEmpty(p string) string {
	if p == "" {
		return "$"
	}
	return p
}
