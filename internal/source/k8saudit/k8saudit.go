// Package k8saudit parses Kubernetes audit events (audit.k8s.io/v1 and
// v1beta1): a single Event, an EventList, a JSON array, or NDJSON as the
// API server's log backend writes them. Older captures without apiVersion
// are accepted when kind is "Event" or absent.
//
// Each audit event becomes an event. Built-in detections (exec/attach into
// pods, secrets read by users that are not control-plane components,
// bindings to cluster-admin, privileged pods, anonymous access, wildcard
// ClusterRoles, failed authentication) name the suspicious ones; everything
// else is informational. The stages of one request (ResponseStarted,
// ResponseComplete) share the event ID ("k8s-<auditID>") and time, so they
// collapse into one event.
package k8saudit

import (
	"encoding/json"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source/decode"
)

// Name is the source name.
const Name = "k8saudit"

// Detection rule names.
const (
	RuleExec             = "K8s exec into pod"
	RuleAttach           = "K8s attach to pod"
	RulePortForward      = "K8s port-forward to pod"
	RuleSecretRead       = "K8s secret read by unusual user"
	RuleClusterAdmin     = "K8s binding to cluster-admin"
	RulePrivilegedPod    = "K8s privileged pod created"
	RuleAnonymous        = "K8s anonymous request allowed"
	RuleWildcardRole     = "K8s role with wildcard permissions"
	RuleAuthFailed       = "K8s authentication failed"
	RuleHostNetworkOrPID = "K8s pod with host namespaces created"
)

// Parser parses Kubernetes audit events.
type Parser struct{ cls *classify.Classifier }

// New returns a Parser; a nil Classifier means the defaults.
func New(cls *classify.Classifier) *Parser { return &Parser{cls: cls} }

// Name implements source.Parser.
func (p *Parser) Name() string { return Name }

type auditEvent struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Level      string `json:"level"`
	AuditID    string `json:"auditID"`
	Stage      string `json:"stage"`
	RequestURI string `json:"requestURI"`
	Verb       string `json:"verb"`
	User       struct {
		Username string   `json:"username"`
		UID      string   `json:"uid"`
		Groups   []string `json:"groups"`
	} `json:"user"`
	ImpersonatedUser *struct {
		Username string `json:"username"`
	} `json:"impersonatedUser"`
	SourceIPs []string `json:"sourceIPs"`
	UserAgent string   `json:"userAgent"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		UID         string `json:"uid"`
		APIGroup    string `json:"apiGroup"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code    decode.Int `json:"code"`
		Reason  string     `json:"reason"`
		Message string     `json:"message"`
	} `json:"responseStatus"`
	RequestObject            json.RawMessage   `json:"requestObject"`
	ResponseObject           json.RawMessage   `json:"responseObject"`
	RequestReceivedTimestamp decode.Time       `json:"requestReceivedTimestamp"`
	StageTimestamp           decode.Time       `json:"stageTimestamp"`
	Timestamp                decode.Time       `json:"timestamp"`
	Annotations              map[string]string `json:"annotations"`
	Items                    json.RawMessage   `json:"items"`
}

// Parse implements source.Parser.
func (p *Parser) Parse(body []byte) (decode.Result, error) {
	docs, err := decode.Split(body)
	if err != nil {
		return decode.Result{}, err
	}
	var res decode.Result
	for _, d := range docs {
		if err := p.doc(&res, d.Path, d.Raw); err != nil {
			return decode.Result{}, err
		}
	}
	return res, nil
}

func (p *Parser) doc(res *decode.Result, path string, raw json.RawMessage) error {
	if decode.Kind(raw) != '{' {
		return event.Errorf(decode.Join(path, "$"), "expected an audit event object")
	}
	var a auditEvent
	if err := decode.Unmarshal(path, raw, &a); err != nil {
		return err
	}
	if a.Kind == "EventList" {
		var items []json.RawMessage
		if err := decode.Unmarshal(decode.Join(path, "items"), a.Items, &items); err != nil {
			return err
		}
		if len(items) > decode.MaxDocuments {
			return event.Errorf(decode.Join(path, "items"), "more than %d events", decode.MaxDocuments)
		}
		for i, it := range items {
			ip := decode.Join(path, "items["+strconv.Itoa(i)+"]")
			if decode.Kind(it) != '{' {
				return event.Errorf(ip, "expected an audit event object")
			}
			var ev auditEvent
			if err := decode.Unmarshal(ip, it, &ev); err != nil {
				return err
			}
			if err := p.event(res, ip, it, ev); err != nil {
				return err
			}
		}
		return nil
	}
	return p.event(res, path, raw, a)
}

var (
	auditIDRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,100}$`)
	saUser    = regexp.MustCompile(`^system:serviceaccount:([a-z0-9][-a-z0-9]*):([a-z0-9][-a-z0-9.]*)$`)
)

func (p *Parser) event(res *decode.Result, path string, raw json.RawMessage, a auditEvent) error {
	if a.Kind != "" && a.Kind != "Event" {
		return event.Errorf(decode.Join(path, "kind"), "expected Event or EventList, got %.40q", a.Kind)
	}
	if a.APIVersion != "" && !strings.HasPrefix(a.APIVersion, "audit.k8s.io/") {
		return event.Errorf(decode.Join(path, "apiVersion"), "not an audit event: %.40q", a.APIVersion)
	}
	if a.Verb == "" {
		return event.Errorf(decode.Join(path, "verb"), "required")
	}
	if a.AuditID != "" && !auditIDRE.MatchString(a.AuditID) {
		return event.Errorf(decode.Join(path, "auditID"), "not an audit id: %.60q", a.AuditID)
	}
	e := event.Event{Source: Name, Raw: raw}
	if a.AuditID != "" {
		e.ID = "k8s-" + a.AuditID
	}
	for _, t := range []decode.Time{a.RequestReceivedTimestamp, a.Timestamp, a.StageTimestamp} {
		if !t.IsZero() {
			e.Time = t.Time
			break
		}
	}
	k := &event.Kubernetes{Verb: decode.Clip(a.Verb)}
	var resource, sub, name string
	if o := a.ObjectRef; o != nil {
		resource, sub, name = o.Resource, o.Subresource, o.Name
		k.Namespace = decode.K8sLabel(o.Namespace)
		k.Resource = decode.Clip(resource)
		if sub != "" {
			k.Resource += "/" + decode.Clip(sub)
		}
	}
	req, _ := decode.ParseTree(a.RequestObject)
	resp, _ := decode.ParseTree(a.ResponseObject)
	if resource == "pods" {
		if name == "" {
			name = resp.Get("metadata", "name").Str()
		}
		k.Pod = decode.K8sName(name)
		if sa := resp.Get("spec", "serviceAccountName").Str(); sa != "" && a.Verb == "create" {
			k.ServiceAccount = decode.K8sName(sa)
		}
	}
	if name != "" {
		e.Resources = append(e.Resources, event.Resource{Type: "k8s:" + decode.Clip(resource), Name: decode.Clip(name), UID: decode.Clip(a.ObjectRef.UID)})
	}
	q := parseQuery(a.RequestURI)
	if c := q.Get("container"); c != "" {
		k.Container = decode.K8sLabel(c)
	}
	user := a.User.Username
	actor := &event.Actor{User: decode.Clip(user), UID: decode.Clip(a.User.UID), UserAgent: decode.Clip(a.UserAgent)}
	if len(a.User.Groups) <= decode.MaxLabels {
		actor.Groups = a.User.Groups
	}
	if m := saUser.FindStringSubmatch(user); m != nil {
		actor.Type = "ServiceAccount"
		if k.Namespace == "" || k.Namespace == m[1] {
			k.Namespace, k.ServiceAccount = m[1], m[2]
		}
	} else if strings.HasPrefix(user, "system:node:") {
		actor.Type = "Node"
		k.Node = decode.K8sName(strings.TrimPrefix(user, "system:node:"))
	} else if user != "" {
		actor.Type = "User"
	}
	e.Actor = actor
	if a.ImpersonatedUser != nil {
		decode.AddLabel(&e, "k8s.impersonated_user", a.ImpersonatedUser.Username)
	}
	if len(a.SourceIPs) > 0 {
		if ip := decode.IP(a.SourceIPs[0]); ip != "" {
			e.SrcEndpoint = &event.Endpoint{IP: ip}
			decode.AddObservable(&e, "ip", ip)
		}
	}
	e.Kubernetes = k
	code := int64(0)
	if a.ResponseStatus != nil {
		code = int64(a.ResponseStatus.Code)
		decode.AddLabel(&e, "k8s.response_code", strconv.FormatInt(code, 10))
	}
	decode.AddLabel(&e, "k8s.stage", a.Stage)
	decode.AddLabel(&e, "k8s.level", a.Level)
	decode.AddLabel(&e, "k8s.request_uri", a.RequestURI)
	decode.AddLabel(&e, "k8s.decision", a.Annotations["authorization.k8s.io/decision"])
	decode.AddLabel(&e, "k8s.reason", a.Annotations["authorization.k8s.io/reason"])
	if cmd := q["command"]; len(cmd) > 0 {
		decode.AddLabel(&e, "k8s.exec_command", strings.Join(cmd, " "))
	}

	target := k.Namespace + "/" + name
	if k.Namespace == "" {
		target = name
	}
	d, ok := detect(a, resource, sub, code, req)
	if ok {
		e.Rule, e.Type, e.SeverityID, e.Priority = d.rule, d.typ, d.sev, d.prio
		e.Tags = append(e.Tags, "detection")
	} else {
		e.Rule = decode.Clip("K8s " + a.Verb + " " + strings.TrimSuffix(resource+"/"+sub, "/"))
		e.Type, e.SeverityID = classify.Informational, classify.SevInformational
	}
	e.Message = decode.Clip(e.Rule + ": " + user + " " + a.Verb + " " + k.Resource + " " + target)
	e.Severity = event.SeverityName(e.SeverityID)
	p.cls.Apply(&e)
	return res.AddEvent(path, e)
}

func parseQuery(uri string) url.Values {
	_, q, ok := strings.Cut(uri, "?")
	if !ok {
		return url.Values{}
	}
	v, err := url.ParseQuery(q)
	if err != nil {
		return url.Values{}
	}
	return v
}

type detection struct {
	rule, typ, prio string
	sev             int
}

// controlPlane reports users that read secrets as part of running the
// cluster: the node, controller, scheduler and apiserver identities and
// kube-system service accounts.
func controlPlane(user string) bool {
	switch {
	case user == "system:kube-controller-manager", user == "system:kube-scheduler", user == "system:apiserver",
		strings.HasPrefix(user, "system:node:"),
		strings.HasPrefix(user, "system:serviceaccount:kube-system:"):
		return true
	}
	return false
}

func detect(a auditEvent, resource, sub string, code int64, req decode.Tree) (detection, bool) {
	user := a.User.Username
	allowed := code == 0 || code < 400
	write := a.Verb == "create" || a.Verb == "update" || a.Verb == "patch"
	switch {
	case code == 401:
		return detection{rule: RuleAuthFailed, typ: classify.FailedAuthentication, sev: classify.SevMedium}, true
	case user == "system:anonymous" && allowed && a.Annotations["authorization.k8s.io/decision"] != "forbid" && !publicPath(a.RequestURI):
		return detection{rule: RuleAnonymous, typ: classify.UnauthorizedAccess, sev: classify.SevHigh}, true
	case resource == "pods" && sub == "exec" && allowed:
		return detection{rule: RuleExec, typ: classify.Execution, sev: classify.SevMedium}, true
	case resource == "pods" && sub == "attach" && allowed:
		return detection{rule: RuleAttach, typ: classify.Execution, sev: classify.SevMedium}, true
	case resource == "pods" && sub == "portforward" && allowed:
		return detection{rule: RulePortForward, typ: classify.SuspiciousConnection, sev: classify.SevMedium}, true
	case resource == "secrets" && sub == "" && (a.Verb == "get" || a.Verb == "list" || a.Verb == "watch") && allowed && !controlPlane(user):
		// Access to secrets, not proof of compromise: P1, not P0.
		return detection{rule: RuleSecretRead, typ: classify.CredentialCompromise, sev: classify.SevMedium, prio: classify.P1}, true
	case (resource == "clusterrolebindings" || resource == "rolebindings") && write && allowed &&
		req.Get("roleRef", "name").Str() == "cluster-admin":
		return detection{rule: RuleClusterAdmin, typ: classify.PrivilegeEscalation, sev: classify.SevHigh}, true
	case resource == "pods" && sub == "" && a.Verb == "create" && allowed && privileged(req):
		// A privileged container can take the node; often a deployment
		// misconfiguration rather than an intrusion, hence P1.
		return detection{rule: RulePrivilegedPod, typ: classify.PrivilegeEscalation, sev: classify.SevHigh, prio: classify.P1}, true
	case resource == "pods" && sub == "" && a.Verb == "create" && allowed && hostNamespaces(req):
		return detection{rule: RuleHostNetworkOrPID, typ: classify.PrivilegeEscalation, sev: classify.SevMedium, prio: classify.P1}, true
	case (resource == "clusterroles" || resource == "roles") && write && allowed && wildcard(req):
		return detection{rule: RuleWildcardRole, typ: classify.PolicyViolation, sev: classify.SevMedium}, true
	}
	return detection{}, false
}

func publicPath(uri string) bool {
	p, _, _ := strings.Cut(uri, "?")
	switch p {
	case "/healthz", "/livez", "/readyz", "/version", "/.well-known/openid-configuration", "/openid/v1/jwks":
		return true
	}
	return false
}

func privileged(pod decode.Tree) bool {
	spec := pod.Get("spec")
	for _, list := range []string{"containers", "initContainers", "ephemeralContainers"} {
		for _, c := range spec.Get(list).List() {
			if c.Get("securityContext", "privileged").Str() == "true" {
				return true
			}
		}
	}
	return false
}

func hostNamespaces(pod decode.Tree) bool {
	spec := pod.Get("spec")
	return spec.Get("hostPID").Str() == "true" || spec.Get("hostNetwork").Str() == "true" || spec.Get("hostIPC").Str() == "true"
}

func wildcard(role decode.Tree) bool {
	for _, r := range role.Get("rules").List() {
		for _, k := range []string{"verbs", "resources"} {
			for _, v := range r.Get(k).List() {
				if v.Str() == "*" {
					return true
				}
			}
		}
	}
	return false
}
