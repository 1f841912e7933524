// Package alertmanager parses Prometheus Alertmanager webhook payloads
// (version 4): one event per alert.
//
// Firing and resolved notifications of the same alert share one event ID,
// "am-" + a hash of the alert's fingerprint (or, when absent, of its sorted
// labels) and its startsAt, so the resolved event can be linked to (and
// update) the firing one. The same key is in Labels["alertmanager.alert_key"],
// and a resolved event also carries Labels["resolves"] = the firing event's ID.
package alertmanager

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/decode"
)

// Name is the source name.
const Name = "alertmanager"

// Parser parses Alertmanager webhook payloads.
type Parser struct{ cls *classify.Classifier }

// New returns a Parser; a nil Classifier means the defaults.
func New(cls *classify.Classifier) *Parser { return &Parser{cls: cls} }

// Name implements source.Parser.
func (p *Parser) Name() string { return Name }

type payload struct {
	Version         string            `json:"version"`
	GroupKey        string            `json:"groupKey"`
	TruncatedAlerts decode.Int        `json:"truncatedAlerts"`
	Status          string            `json:"status"`
	Receiver        string            `json:"receiver"`
	GroupLabels     map[string]string `json:"groupLabels"`
	CommonLabels    map[string]string `json:"commonLabels"`
	ExternalURL     string            `json:"externalURL"`
	Alerts          []json.RawMessage `json:"alerts"`
}

type alert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     decode.Time       `json:"startsAt"`
	EndsAt       decode.Time       `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// Parse implements source.Parser. The body is one webhook payload, or
// several (array or NDJSON) when replayed from a file.
func (p *Parser) Parse(body []byte) (decode.Result, error) {
	docs, err := decode.Split(body)
	if err != nil {
		return decode.Result{}, err
	}
	var res decode.Result
	for _, d := range docs {
		if decode.Kind(d.Raw) != '{' {
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "$"), "expected an Alertmanager webhook object")
		}
		var pl payload
		if err := decode.Unmarshal(d.Path, d.Raw, &pl); err != nil {
			return decode.Result{}, err
		}
		if pl.Version != "" && pl.Version != "4" {
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "version"), "unsupported webhook version %.20q (want \"4\")", pl.Version)
		}
		if pl.Alerts == nil {
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "alerts"), "required")
		}
		if len(pl.Alerts) > decode.MaxDocuments {
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "alerts"), "more than %d alerts", decode.MaxDocuments)
		}
		if pl.TruncatedAlerts > 0 {
			// Alertmanager dropped alerts to respect max_alerts: say so
			// rather than pretend the group is complete.
			res.AddSkip(-1, "alertmanager truncated "+strconv.FormatInt(int64(pl.TruncatedAlerts), 10)+" alerts")
		}
		for i, raw := range pl.Alerts {
			path := decode.Join(d.Path, "alerts["+strconv.Itoa(i)+"]")
			e, err := p.alert(path, raw, pl)
			if err != nil {
				return decode.Result{}, err
			}
			if err := res.AddEvent(path, e); err != nil {
				return decode.Result{}, err
			}
		}
	}
	return res, nil
}

func (p *Parser) alert(path string, raw json.RawMessage, pl payload) (event.Event, error) {
	if decode.Kind(raw) != '{' {
		return event.Event{}, event.Errorf(path, "expected an alert object")
	}
	var a alert
	if err := decode.Unmarshal(path, raw, &a); err != nil {
		return event.Event{}, err
	}
	if len(a.Labels) == 0 {
		return event.Event{}, event.Errorf(decode.Join(path, "labels"), "required")
	}
	if a.StartsAt.IsZero() {
		return event.Event{}, event.Errorf(decode.Join(path, "startsAt"), "required")
	}
	// An alert without status (old senders) takes the group's status, and
	// firing when that is missing too.
	status := strings.ToLower(firstNonEmpty(a.Status, pl.Status, "firing"))
	if status != "firing" && status != "resolved" {
		return event.Event{}, event.Errorf(decode.Join(path, "status"), "must be firing or resolved, got %.20q", status)
	}
	name := a.Labels["alertname"]
	e := event.Event{
		Source: Name,
		Rule:   decode.Clip(name),
		Time:   a.StartsAt.Time,
		Raw:    raw,
	}
	key := alertKey(a)
	e.ID = "am-" + key
	decode.AddLabel(&e, "alertmanager.alert_key", key)
	decode.AddLabel(&e, "alertmanager.fingerprint", a.Fingerprint)
	decode.AddLabel(&e, "alertmanager.starts_at", a.StartsAt.UTC().Format("2006-01-02T15:04:05.999999999Z07:00"))
	if status == "resolved" {
		e.Status = event.StatusResolved
		// The resolved notification points at the firing event it closes.
		// Its endsAt may still be the zero time (seen in real payloads):
		// the status field decides, not endsAt.
		decode.AddLabel(&e, "resolves", e.ID)
		if !a.EndsAt.IsZero() {
			decode.AddLabel(&e, "alertmanager.ends_at", a.EndsAt.UTC().Format("2006-01-02T15:04:05.999999999Z07:00"))
		}
	}
	decode.AddLabel(&e, "alertmanager.receiver", pl.Receiver)
	decode.AddLabel(&e, "alertmanager.group_key", pl.GroupKey)
	decode.AddLabel(&e, "alertmanager.generator_url", a.GeneratorURL)
	decode.AddLabel(&e, "alertmanager.external_url", pl.ExternalURL)
	for _, k := range sortedKeys(a.Labels) {
		decode.AddLabel(&e, k, a.Labels[k])
	}
	e.Message = decode.Clip(firstNonEmpty(a.Annotations["summary"], a.Annotations["description"], a.Annotations["message"], a.Annotations["title"], name))
	if d := a.Annotations["description"]; d != "" && d != e.Message {
		decode.AddLabel(&e, "annotation.description", d)
	}
	sevWord := firstNonEmpty(a.Labels["severity"], a.Labels["priority"], a.Annotations["severity"])
	e.Severity = decode.Clip(sevWord)
	e.SeverityID = classify.SeverityFromWord(sevWord)

	entities(&e, a.Labels)

	e.Type = typeOf(a)
	if pr := strings.ToUpper(a.Labels["quell_priority"]); pr == "P0" || pr == "P1" || pr == "P2" || pr == "P3" {
		e.Priority = pr
	}
	p.cls.Apply(&e)
	return e, nil
}

// alertKey is stable across the firing and resolved notifications of one
// alert instance: Alertmanager's fingerprint identifies the label set, and
// startsAt tells apart two separate firings of it.
func alertKey(a alert) string {
	h := sha256.New()
	if a.Fingerprint != "" {
		h.Write([]byte("fp\x00" + a.Fingerprint))
	} else {
		h.Write([]byte("labels\x00"))
		for _, k := range sortedKeys(a.Labels) {
			h.Write([]byte(k + "\x00" + a.Labels[k] + "\x00"))
		}
	}
	h.Write([]byte("\x00" + a.StartsAt.UTC().Format("2006-01-02T15:04:05.999999999Z")))
	return hex.EncodeToString(h.Sum(nil))[:24]
}

func typeOf(a alert) string {
	for _, k := range []string{"quell_type", "threat_type", "category", "type"} {
		if t := strings.ToLower(a.Labels[k]); classify.Known(t) {
			return t
		}
	}
	if t := classify.FromKeywords(a.Labels["alertname"]); t != "" {
		return t
	}
	// A monitoring alert quell has no meaning for: unusual behaviour (P2).
	return classify.Anomaly
}

// entities lifts the labels Prometheus conventionally uses into entities;
// values that do not parse (a namespace with a '/', an instance that is no
// address) stay labels only.
func entities(e *event.Event, l map[string]string) {
	k := &event.Kubernetes{
		Cluster:        decode.Clip(l["cluster"]),
		Namespace:      decode.K8sLabel(firstNonEmpty(l["namespace"], l["exported_namespace"])),
		Pod:            decode.K8sName(firstNonEmpty(l["pod"], l["pod_name"], l["exported_pod"])),
		Node:           decode.K8sName(firstNonEmpty(l["node"], l["kubernetes_node"])),
		ServiceAccount: decode.K8sName(l["service_account"]),
		Container:      decode.K8sLabel(l["container"]),
	}
	if *k != (event.Kubernetes{}) {
		e.Kubernetes = k
	}
	for _, key := range []string{"src_ip", "source_ip", "client_ip", "remote_addr", "src", "source_address"} {
		if ip, port, ok := decode.HostPort(l[key]); ok {
			e.SrcEndpoint = &event.Endpoint{IP: ip, Port: port}
			decode.AddObservable(e, "ip", ip)
			break
		}
	}
	dst := &event.Endpoint{}
	for _, key := range []string{"dst_ip", "destination_ip", "target_ip"} {
		if ip, port, ok := decode.HostPort(l[key]); ok {
			dst.IP, dst.Port = ip, port
			decode.AddObservable(e, "ip", ip)
			break
		}
	}
	if inst := l["instance"]; inst != "" {
		if ip, port, ok := decode.HostPort(inst); ok && dst.IP == "" {
			dst.IP, dst.Port = ip, port
		} else if h := hostOf(inst); h != "" && dst.IP == "" {
			dst.Hostname = h
		}
	}
	if h := firstNonEmpty(l["host"], l["hostname"]); h != "" && dst.Hostname == "" {
		dst.Hostname = decode.Clip(h)
	}
	if *dst != (event.Endpoint{}) {
		e.DstEndpoint = dst
	}
}

func hostOf(inst string) string {
	if u, err := url.Parse("//" + inst); err == nil && u.Hostname() != "" {
		return decode.Clip(u.Hostname())
	}
	return ""
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
