// Package falco parses Falco's JSON output (json_output: true, as written to
// stdout, a file, program_output or http_output) and Falcosidekick's webhook,
// which forwards the same document with a uuid.
package falco

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/decode"
)

// Name is the source name.
const Name = "falco"

// Parser parses Falco alerts.
type Parser struct{ cls *classify.Classifier }

// New returns a Parser; a nil Classifier means the defaults.
func New(cls *classify.Classifier) *Parser { return &Parser{cls: cls} }

// Name implements source.Parser.
func (p *Parser) Name() string { return Name }

// alert is Falco's JSON alert. encoding/json matches keys
// case-insensitively, which is how the capitalised "Rule" key some senders
// use (Falco Talon's own examples) is read on purpose.
type alert struct {
	Output       string                     `json:"output"`
	Priority     string                     `json:"priority"`
	Rule         string                     `json:"rule"`
	Time         decode.Time                `json:"time"`
	OutputFields map[string]json.RawMessage `json:"output_fields"`
	Source       string                     `json:"source"`
	Tags         []string                   `json:"tags"`
	Hostname     string                     `json:"hostname"`
	UUID         string                     `json:"uuid"` // added by Falcosidekick
}

// Parse implements source.Parser. The body is one alert, a JSON array of
// alerts, or NDJSON (Falco's file_output).
func (p *Parser) Parse(body []byte) (decode.Result, error) {
	docs, err := decode.Split(body)
	if err != nil {
		return decode.Result{}, err
	}
	var res decode.Result
	for i, d := range docs {
		if decode.Kind(d.Raw) != '{' {
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "$"), "expected a Falco alert object")
		}
		var a alert
		if err := decode.Unmarshal(d.Path, d.Raw, &a); err != nil {
			return decode.Result{}, err
		}
		if reason, skip := internal(a); skip {
			res.AddSkip(i, reason)
			continue
		}
		if a.Rule == "" {
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "rule"), "required")
		}
		e, err := p.convert(d.Path, a)
		if err != nil {
			return decode.Result{}, err
		}
		e.Raw = d.Raw
		if err := res.AddEvent(d.Path, e); err != nil {
			return decode.Result{}, err
		}
	}
	return res, nil
}

// internal recognises Falco's own events, which are not alerts: metrics
// snapshots and syscall-drop reports (source "internal" or a rule named
// "Falco internal: ...").
func internal(a alert) (string, bool) {
	r := strings.ToLower(strings.TrimSpace(a.Rule))
	if !strings.HasPrefix(r, "falco internal") && !strings.EqualFold(a.Source, "internal") {
		return "", false
	}
	switch {
	case strings.Contains(r, "metrics snapshot"):
		return "falco internal: metrics snapshot", true
	case strings.Contains(r, "event drop"):
		return "falco internal: syscall event drop", true
	}
	return "falco internal event", true
}

// knownRules gives the type of Falco's stock rules whose names keyword
// matching would get wrong or only approximately right.
var knownRules = map[string]string{
	"terminal shell in container":                                           classify.Execution,
	"attach/exec pod":                                                       classify.Execution,
	"contact k8s api server from container":                                 classify.SuspiciousConnection,
	"write below binary dir":                                                classify.Persistence,
	"write below etc":                                                       classify.Persistence,
	"write below root":                                                      classify.Persistence,
	"modify binary dirs":                                                    classify.Persistence,
	"schedule cron jobs":                                                    classify.Persistence,
	"disallowed k8s user":                                                   classify.PolicyViolation,
	"read sensitive file untrusted":                                         classify.CredentialCompromise,
	"read sensitive file trusted after startup":                             classify.CredentialCompromise,
	"search private keys or passwords":                                      classify.CredentialCompromise,
	"detect crypto miners using the stratum protocol":                       classify.CryptoMining,
	"detect outbound connections to common miner pool ports":                classify.CryptoMining,
	"outbound connection to c2 servers":                                     classify.CommandAndControl,
	"unexpected outbound connection destination":                            classify.SuspiciousConnection,
	"unexpected inbound connection source":                                  classify.SuspiciousConnection,
	"outbound or inbound traffic not to authorized server process and port": classify.SuspiciousConnection,
	"disallowed ssh connection":                                             classify.LateralMovement,
	"launch privileged container":                                           classify.PrivilegeEscalation,
	"create privileged pod":                                                 classify.PrivilegeEscalation,
	"attach to cluster-admin role":                                          classify.PrivilegeEscalation,
	"ptrace attached to process":                                            classify.PrivilegeEscalation,
	"change thread namespace":                                               classify.PrivilegeEscalation,
	"clear log activities":                                                  classify.DefenseEvasion,
	"delete or rename shell history":                                        classify.DefenseEvasion,
	"fileless execution via memfd_create":                                   classify.DefenseEvasion,
	"drop and execute new binary in container":                              classify.Malware,
	"netcat remote code execution in container":                             classify.Execution,
	"redirect stdout/stdin to network connection in container":              classify.CommandAndControl,
	"launch suspicious network tool in container":                           classify.Reconnaissance,
	"packet socket created in container":                                    classify.Reconnaissance,
	"run shell untrusted":                                                   classify.Execution,
	"system user interactive":                                               classify.Execution,
	"k8s serviceaccount created":                                            classify.PolicyViolation,
	"create disallowed pod":                                                 classify.PolicyViolation,
	"anonymous request allowed":                                             classify.UnauthorizedAccess,
}

func (p *Parser) convert(path string, a alert) (event.Event, error) {
	e := event.Event{
		Source:     Name,
		Rule:       decode.Clip(a.Rule),
		Message:    decode.Clip(a.Output),
		Severity:   decode.Clip(a.Priority),
		SeverityID: classify.SeverityFromWord(a.Priority),
		Time:       a.Time.Time,
	}
	for _, t := range a.Tags {
		if t != "" && len(e.Tags) < decode.MaxLabels {
			e.Tags = append(e.Tags, decode.Clip(t))
		}
	}
	if a.UUID != "" && len(a.UUID) <= 64 && validID(a.UUID) {
		e.ID = "falco-" + a.UUID
	}
	decode.AddLabel(&e, "falco.source", a.Source)
	decode.AddLabel(&e, "falco.hostname", a.Hostname)
	if a.Hostname != "" {
		e.Resources = append(e.Resources, event.Resource{Type: "host", Name: decode.Clip(a.Hostname)})
	}
	f := fields(a.OutputFields)
	if e.Time.IsZero() {
		if n, ok := decode.ParseInt(f.str("evt.time")); ok {
			e.Time = decode.FromEpoch(n)
		}
	}
	p.kubernetes(&e, f)
	p.network(&e, f)
	p.process(&e, f)

	e.Type = typeOf(a, &e)
	p.cls.Apply(&e)
	return e, nil
}

func validID(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func typeOf(a alert, e *event.Event) string {
	if t, ok := knownRules[strings.ToLower(strings.TrimSpace(a.Rule))]; ok {
		return t
	}
	weak := func(t string) bool { return t == "" || t == classify.PolicyViolation || t == classify.Anomaly }
	t := classify.FromKeywords(a.Rule)
	if weak(t) {
		if mt := classify.FromMITRETags(a.Tags); mt != "" {
			t = mt
		}
	}
	if weak(t) && (e.DstEndpoint != nil && e.DstEndpoint.IP != "" || e.SrcEndpoint != nil && e.SrcEndpoint.IP != "") {
		t = classify.SuspiciousConnection
	}
	if t == "" {
		t = classify.PolicyViolation // a Falco rule fired: the workload broke a runtime policy
	}
	return t
}

// fieldMap reads output_fields values whatever their JSON type.
type fieldMap map[string]json.RawMessage

func fields(m map[string]json.RawMessage) fieldMap { return fieldMap(m) }

func (f fieldMap) str(keys ...string) string {
	for _, k := range keys {
		raw, ok := f[k]
		if !ok {
			continue
		}
		var s decode.String
		if json.Unmarshal(raw, &s) == nil && s != "" && s != "<NA>" {
			return decode.Clip(string(s))
		}
	}
	return ""
}

func (f fieldMap) int(keys ...string) int64 {
	s := f.str(keys...)
	n, _ := decode.ParseInt(s)
	return n
}

var saUser = regexp.MustCompile(`^system:serviceaccount:([a-z0-9][-a-z0-9]*):([a-z0-9][-a-z0-9.]*)$`)

func (p *Parser) kubernetes(e *event.Event, f fieldMap) {
	k := &event.Kubernetes{
		Namespace:      decode.K8sLabel(f.str("k8s.ns.name", "k8smeta.ns.name", "ka.target.namespace")),
		Pod:            decode.K8sName(f.str("k8s.pod.name", "k8smeta.pod.name")),
		Node:           decode.K8sName(f.str("k8s.node.name", "k8smeta.node.name")),
		ServiceAccount: decode.K8sName(f.str("k8s.pod.sa", "k8smeta.pod.sa.name", "k8s.sa.name")),
		Container:      f.str("container.name"),
		ContainerID:    f.str("container.id"),
		Verb:           f.str("ka.verb"),
	}
	if img := f.str("container.image"); img != "" {
		k.Image = img
	} else if repo := f.str("container.image.repository"); repo != "" {
		k.Image = repo
		if tag := f.str("container.image.tag"); tag != "" {
			k.Image += ":" + tag
		}
	}
	if res := f.str("ka.target.resource"); res != "" {
		k.Resource = res
		if sub := f.str("ka.target.subresource"); sub != "" {
			k.Resource += "/" + sub
		}
		if res == "pods" && k.Pod == "" {
			k.Pod = decode.K8sName(f.str("ka.target.name"))
		}
	}
	if u := f.str("ka.user.name"); u != "" {
		e.Actor = &event.Actor{User: u, Groups: nil}
		if m := saUser.FindStringSubmatch(u); m != nil {
			e.Actor.Type = "ServiceAccount"
			if k.Namespace == "" || k.Namespace == m[1] {
				k.Namespace, k.ServiceAccount = m[1], m[2]
			}
		}
	}
	if cmd := f.str("ka.uri.param[command]"); cmd != "" {
		decode.AddLabel(e, "k8s.exec_command", cmd)
	}
	if code := f.str("ka.response.code"); code != "" {
		decode.AddLabel(e, "k8s.response_code", code)
	}
	if name := f.str("ka.target.name"); name != "" {
		e.Resources = append(e.Resources, event.Resource{Type: "k8s:" + firstNonEmpty(f.str("ka.target.resource"), "object"), Name: name})
	}
	if *k != (event.Kubernetes{}) {
		e.Kubernetes = k
	}
}

// connTuple is how Falco prints a socket in fd.name: "cip:cport->sip:sport".
var connTuple = regexp.MustCompile(`^(\[?[0-9A-Fa-f:.]+\]?):(\d+)->(\[?[0-9A-Fa-f:.]+\]?):(\d+)$`)

func (p *Parser) network(e *event.Event, f fieldMap) {
	var src, dst event.Endpoint
	setEP := func(ep *event.Endpoint, ip string, port int64) {
		if a := decode.IP(strings.Trim(ip, "[]")); a != "" {
			ep.IP = a
			ep.Port = decode.Port(port)
		}
	}
	// Client/server are unambiguous; local/remote are relative to the
	// monitored process, which is the victim side: the remote peer goes to
	// dst when it is the server, else src.
	setEP(&src, f.str("fd.cip"), f.int("fd.cport"))
	setEP(&dst, f.str("fd.sip"), f.int("fd.sport"))
	if src.IP == "" && dst.IP == "" {
		if m := connTuple.FindStringSubmatch(f.str("fd.name")); m != nil {
			cp, _ := strconv.ParseInt(m[2], 10, 64)
			sp, _ := strconv.ParseInt(m[4], 10, 64)
			setEP(&src, m[1], cp)
			setEP(&dst, m[3], sp)
		}
	}
	if src.IP == "" && dst.IP == "" {
		setEP(&dst, f.str("fd.rip"), f.int("fd.rport"))
		setEP(&src, f.str("fd.lip"), f.int("fd.lport"))
	}
	// Falco resolves names when it can (fd.sip.name, fd.rip.name): a
	// domain is an observable, never an address.
	if d := f.str("fd.sip.name", "fd.rip.name"); d != "" {
		dst.Domain = d
		decode.AddObservable(e, "domain", d)
	}
	if src.IP != "" {
		e.SrcEndpoint = &src
		decode.AddObservable(e, "ip", src.IP)
	}
	if dst.IP != "" || dst.Domain != "" {
		e.DstEndpoint = &dst
		decode.AddObservable(e, "ip", dst.IP)
	}
	if fn := f.str("fd.name"); fn != "" && strings.HasPrefix(fn, "/") {
		decode.AddObservable(e, "file", fn)
	}
}

func (p *Parser) process(e *event.Event, f fieldMap) {
	pr := event.Process{
		Name:    f.str("proc.name"),
		CmdLine: f.str("proc.cmdline"),
		User:    f.str("user.name"),
		Parent:  f.str("proc.pname"),
		File:    f.str("proc.exepath", "proc.exe"),
	}
	if pid := f.int("proc.pid"); pid > 0 && pid < 1<<31 {
		pr.PID = int(pid)
	}
	if pr != (event.Process{}) {
		e.Process = &pr
	}
	if w := strings.Fields(pr.CmdLine); pr.Name == "" && len(w) > 0 {
		e.Process.Name = w[0]
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
