// Package crowdsec parses CrowdSec alerts: the list of models.Alert that the
// HTTP notification plugin sends with format `{{.|toJson}}`, the body an
// agent pushes to LAPI, LAPI's GET /v1/alerts list and GET /v1/alerts/{id}
// object, and the bouncer decisions stream ({"new": [...], "deleted": [...]}).
package crowdsec

import (
	"encoding/json"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/decode"
)

// Name is the source name.
const Name = "crowdsec"

// Parser parses CrowdSec alerts and decisions.
type Parser struct{ cls *classify.Classifier }

// New returns a Parser; a nil Classifier means the defaults.
func New(cls *classify.Classifier) *Parser { return &Parser{cls: cls} }

// Name implements source.Parser.
func (p *Parser) Name() string { return Name }

type meta struct {
	Key   string        `json:"key"`
	Value decode.String `json:"value"`
}

type source struct {
	Scope    string        `json:"scope"`
	Value    string        `json:"value"`
	IP       string        `json:"ip"`
	Range    string        `json:"range"`
	AsName   string        `json:"as_name"`
	AsNumber decode.String `json:"as_number"`
	CN       string        `json:"cn"`
}

type decision struct {
	ID        decode.Int    `json:"id"`
	UUID      string        `json:"uuid"`
	Duration  string        `json:"duration"`
	Origin    string        `json:"origin"`
	Scenario  string        `json:"scenario"`
	Scope     string        `json:"scope"`
	Type      string        `json:"type"`
	Value     string        `json:"value"`
	Until     decode.String `json:"until"`
	Simulated bool          `json:"simulated"`
}

// alert is models.Alert. Keys are matched case-insensitively, so the
// "Events" spelling of LAPI's test fixtures is read like "events".
type alert struct {
	ID              decode.Int  `json:"id"`
	UUID            string      `json:"uuid"`
	MachineID       string      `json:"machine_id"`
	Scenario        string      `json:"scenario"`
	ScenarioVersion string      `json:"scenario_version"`
	Message         string      `json:"message"`
	EventsCount     decode.Int  `json:"events_count"`
	StartAt         decode.Time `json:"start_at"`
	StopAt          decode.Time `json:"stop_at"`
	CreatedAt       decode.Time `json:"created_at"`
	Capacity        decode.Int  `json:"capacity"`
	Leakspeed       string      `json:"leakspeed"`
	Simulated       bool        `json:"simulated"`
	Remediation     bool        `json:"remediation"`
	Source          *source     `json:"source"`
	Labels          []string    `json:"labels"`
	Meta            []meta      `json:"meta"`
	Decisions       []decision  `json:"decisions"`
	Events          []struct {
		Timestamp decode.Time `json:"timestamp"`
		Meta      []meta      `json:"meta"`
	} `json:"events"`
}

// shape tells the kinds of top-level object apart.
type shape struct {
	Scenario *string         `json:"scenario"`
	New      json.RawMessage `json:"new"`
	Deleted  json.RawMessage `json:"deleted"`
	Type     *string         `json:"type"`
	Value    *string         `json:"value"`
	Source   json.RawMessage `json:"source"`
}

// Parse implements source.Parser.
func (p *Parser) Parse(body []byte) (decode.Result, error) {
	docs, err := decode.Split(body)
	if err != nil {
		return decode.Result{}, err
	}
	var res decode.Result
	for _, d := range docs {
		if decode.Kind(d.Raw) != '{' {
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "$"), "expected a CrowdSec alert or decision object")
		}
		var s shape
		if err := decode.Unmarshal(d.Path, d.Raw, &s); err != nil {
			return decode.Result{}, err
		}
		switch {
		case s.Scenario == nil && (s.New != nil || s.Deleted != nil):
			if err := p.stream(&res, d.Path, s); err != nil {
				return decode.Result{}, err
			}
		case s.Source == nil && s.Type != nil && s.Value != nil:
			if err := p.decision(&res, d.Path, d.Raw, false); err != nil {
				return decode.Result{}, err
			}
		default:
			if err := p.alert(&res, d.Path, d.Raw); err != nil {
				return decode.Result{}, err
			}
		}
	}
	return res, nil
}

func (p *Parser) stream(res *decode.Result, path string, s shape) error {
	for _, part := range []struct {
		name     string
		raw      json.RawMessage
		resolved bool
	}{{"new", s.New, false}, {"deleted", s.Deleted, true}} {
		if decode.Kind(part.raw) == 'n' || len(part.raw) == 0 {
			continue
		}
		var items []json.RawMessage
		if err := decode.Unmarshal(decode.Join(path, part.name), part.raw, &items); err != nil {
			return err
		}
		if len(items) > decode.MaxDocuments {
			return event.Errorf(decode.Join(path, part.name), "more than %d decisions", decode.MaxDocuments)
		}
		for i, it := range items {
			if err := p.decision(res, decode.Join(path, part.name+"["+strconv.Itoa(i)+"]"), it, part.resolved); err != nil {
				return err
			}
		}
	}
	return nil
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,100}$`)

// decision turns one bouncer decision into an event: a ban on an address
// is something quell may want to enforce too. Deleted decisions resolve the
// event of the same decision id.
func (p *Parser) decision(res *decode.Result, path string, raw json.RawMessage, resolved bool) error {
	if decode.Kind(raw) != '{' {
		return event.Errorf(path, "expected a decision object")
	}
	var d decision
	if err := decode.Unmarshal(path, raw, &d); err != nil {
		return err
	}
	if d.Value == "" {
		return event.Errorf(decode.Join(path, "value"), "required")
	}
	e := event.Event{Source: Name, Raw: raw, Severity: d.Type}
	switch {
	case d.UUID != "" && idRE.MatchString(d.UUID):
		e.ID = "cs-decision-" + d.UUID
	case d.ID > 0:
		e.ID = "cs-decision-" + strconv.FormatInt(int64(d.ID), 10)
	}
	if resolved {
		e.Status = event.StatusResolved
		decode.AddLabel(&e, "resolves", e.ID)
	}
	e.Rule = decode.Clip(d.Scenario)
	if strings.HasPrefix(d.Scenario, "manual '") || d.Origin == "cscli" {
		// Manual decisions carry the operator's machine id in their
		// scenario text; a stable rule name keeps overrides usable.
		e.Rule = "crowdsec/manual-" + strings.ToLower(decode.Clip(d.Type))
		decode.AddLabel(&e, "crowdsec.scenario", d.Scenario)
	}
	e.Message = decode.Clip("CrowdSec decision: " + d.Type + " " + d.Scope + " " + d.Value + " for " + d.Duration + " (" + d.Origin + ")")
	decode.AddLabel(&e, "crowdsec.origin", d.Origin)
	decode.AddLabel(&e, "crowdsec.decision", strings.ToLower(d.Type)+":"+d.Duration)
	decode.AddLabel(&e, "crowdsec.until", string(d.Until))
	scopeEntities(&e, d.Scope, d.Value, "")
	e.Tags = append(e.Tags, "decision:"+strings.ToLower(decode.Clip(d.Type)))
	if d.Simulated {
		e.Tags = append(e.Tags, "simulated")
	}
	e.SeverityID = decisionSeverity(d.Type, d.Simulated)
	e.Type = scenarioType(d.Scenario)
	p.cls.Apply(&e)
	return res.AddEvent(path, e)
}

func (p *Parser) alert(res *decode.Result, path string, raw json.RawMessage) error {
	var a alert
	if err := decode.Unmarshal(path, raw, &a); err != nil {
		return err
	}
	if a.Scenario == "" {
		return event.Errorf(decode.Join(path, "scenario"), "required")
	}
	if len(a.Decisions) > decode.MaxDocuments || len(a.Events) > decode.MaxDocuments {
		return event.Errorf(path, "too many decisions or events")
	}
	e := event.Event{
		Source:  Name,
		Rule:    decode.Clip(a.Scenario),
		Message: decode.Clip(a.Message),
		Raw:     raw,
	}
	switch {
	case a.UUID != "" && idRE.MatchString(a.UUID):
		e.ID = "cs-" + a.UUID
	case a.ID > 0:
		e.ID = "cs-" + strconv.FormatInt(int64(a.ID), 10)
	}
	for _, t := range []decode.Time{a.StartAt, a.StopAt, a.CreatedAt} {
		if !t.IsZero() {
			e.Time = t.Time
			break
		}
	}
	if e.Time.IsZero() && len(a.Events) > 0 {
		e.Time = a.Events[0].Timestamp.Time
	}
	if a.EventsCount > 0 && a.EventsCount < 1<<31 {
		e.Count = int(a.EventsCount)
	}
	if s := a.Source; s != nil {
		scopeEntities(&e, s.Scope, firstNonEmpty(s.IP, s.Value), s.Range)
		if e.SrcEndpoint != nil {
			e.SrcEndpoint.Country = decode.Clip(s.CN)
			e.SrcEndpoint.Org = decode.Clip(s.AsName)
			if n, ok := decode.ParseInt(string(s.AsNumber)); ok && n > 0 && n < 1<<32 {
				e.SrcEndpoint.ASN = int(n)
			}
		}
	}
	decode.AddLabel(&e, "crowdsec.machine_id", a.MachineID)
	decode.AddLabel(&e, "crowdsec.scenario_version", a.ScenarioVersion)
	decode.AddLabel(&e, "crowdsec.leakspeed", a.Leakspeed)
	if a.Capacity != 0 {
		decode.AddLabel(&e, "crowdsec.capacity", strconv.FormatInt(int64(a.Capacity), 10))
	}
	// Event meta (target_user, service, log_type, ...): the first value of
	// each key, in key order, bounded.
	seen := map[string]bool{}
	var metas []meta
	metas = append(metas, a.Meta...)
	for _, ev := range a.Events {
		metas = append(metas, ev.Meta...)
	}
	for _, m := range metas {
		if m.Key == "" || seen[m.Key] || len(seen) >= 32 {
			continue
		}
		seen[m.Key] = true
		decode.AddLabel(&e, "crowdsec.meta."+m.Key, string(m.Value))
	}
	if u := firstMeta(metas, "target_user"); u != "" {
		decode.AddObservable(&e, "user", u)
	}
	var decs []string
	worst := ""
	for _, d := range a.Decisions {
		decs = append(decs, strings.ToLower(d.Type)+":"+d.Duration)
		if worst == "" || strings.EqualFold(d.Type, "ban") {
			worst = d.Type
		}
	}
	sort.Strings(decs)
	if len(decs) > 0 {
		decode.AddLabel(&e, "crowdsec.decisions", strings.Join(decs, ","))
		e.Tags = append(e.Tags, "decision:"+strings.ToLower(decode.Clip(worst)))
	}
	for _, l := range a.Labels {
		if l != "" && len(e.Tags) < decode.MaxLabels {
			e.Tags = append(e.Tags, decode.Clip(l))
		}
	}
	if a.Simulated {
		e.Tags = append(e.Tags, "simulated")
	}
	e.SeverityID = decisionSeverity(worst, a.Simulated)
	e.Severity = event.SeverityName(e.SeverityID)
	e.Type = scenarioType(a.Scenario)
	p.cls.Apply(&e)
	return res.AddEvent(path, e)
}

func scopeEntities(e *event.Event, scope, value, rng string) {
	switch strings.ToLower(scope) {
	case "ip", "":
		if ip := decode.IP(value); ip != "" {
			e.SrcEndpoint = &event.Endpoint{IP: ip}
			decode.AddObservable(e, "ip", ip)
		}
	case "range":
		decode.AddObservable(e, "cidr", value)
	case "username":
		decode.AddObservable(e, "user", value)
	default:
		decode.AddLabel(e, "crowdsec.scope."+strings.ToLower(decode.Clip(scope)), value)
	}
	if rng != "" {
		decode.AddLabel(e, "crowdsec.source_range", rng)
	}
}

// decisionSeverity: CrowdSec has no severity of its own; what it decided
// to do is the best proxy.
func decisionSeverity(typ string, simulated bool) int {
	if simulated {
		return classify.SevLow
	}
	switch strings.ToLower(typ) {
	case "ban":
		return classify.SevHigh
	case "captcha", "throttle":
		return classify.SevMedium
	}
	return classify.SevMedium
}

// scenarioTypes maps the hub's common scenario families; the rest go
// through keyword inference.
var scenarioTypes = []struct{ sub, typ string }{
	{"path-traversal", classify.Exploitation},
	{"sqli", classify.Exploitation},
	{"xss", classify.Exploitation},
	{"cve", classify.Exploitation},
	{"backdoors-attempts", classify.Exploitation},
	{"exploit", classify.Exploitation},
	{"http-probing", classify.Reconnaissance},
	{"http-crawl", classify.Reconnaissance},
	{"sensitive-files", classify.Reconnaissance},
	{"bad-user-agent", classify.Reconnaissance},
	{"admin-interface-probing", classify.Reconnaissance},
	{"portscan", classify.PortScan},
	{"scan-multi_ports", classify.PortScan},
	{"ddos", classify.DenialOfService},
	{"http-dos", classify.DenialOfService},
	{"bf", classify.BruteForce},
	{"brute", classify.BruteForce},
}

func scenarioType(s string) string {
	l := strings.ToLower(s)
	if i := strings.LastIndex(l, "/"); i >= 0 {
		l = l[i+1:]
	}
	for _, st := range scenarioTypes {
		if st.sub == "bf" {
			if l == "bf" || strings.HasSuffix(l, "-bf") || strings.HasSuffix(l, "_bf") || strings.Contains(l, "-bf-") || strings.Contains(l, "_bf_") || strings.Contains(l, "-bf_") || strings.Contains(l, "_bf-") {
				return st.typ
			}
			continue
		}
		if strings.Contains(l, st.sub) {
			return st.typ
		}
	}
	if t := classify.FromKeywords(l); t != "" && t != classify.Informational {
		return t
	}
	// CrowdSec flagged this source as hostile: treat it as a suspicious
	// connection (P1).
	return classify.SuspiciousConnection
}

func firstMeta(ms []meta, key string) string {
	for _, m := range ms {
		if m.Key == key && m.Value != "" {
			return string(m.Value)
		}
	}
	return ""
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
