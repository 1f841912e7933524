// Package guardduty parses Amazon GuardDuty findings: bare (as the
// GetFindings API and S3 export give them), wrapped in an EventBridge event
// (detail-type "GuardDuty Finding"), in a partial envelope holding only
// detail, or as a {"Findings": [...]} response.
//
// GuardDuty re-sends an ongoing finding with a growing service.count: the
// event ID is derived from the finding id ("gd-<id>") and Count carries
// service.count, so the store updates one event instead of adding new ones.
package guardduty

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
const Name = "guardduty"

// DetailType is the EventBridge detail-type of GuardDuty findings.
const DetailType = "GuardDuty Finding"

// Parser parses GuardDuty findings.
type Parser struct{ cls *classify.Classifier }

// New returns a Parser; a nil Classifier means the defaults.
func New(cls *classify.Classifier) *Parser { return &Parser{cls: cls} }

// Name implements source.Parser.
func (p *Parser) Name() string { return Name }

type envelope struct {
	DetailType *string         `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Region     string          `json:"region"`
	Time       decode.Time     `json:"time"`
	Detail     json.RawMessage `json:"detail"`
	Findings   json.RawMessage `json:"findings"`
}

type finding struct {
	SchemaVersion string       `json:"schemaVersion"`
	AccountID     string       `json:"accountId"`
	Region        string       `json:"region"`
	Partition     string       `json:"partition"`
	ID            string       `json:"id"`
	Arn           string       `json:"arn"`
	Type          string       `json:"type"`
	Resource      resource     `json:"resource"`
	Service       service      `json:"service"`
	Severity      decode.Float `json:"severity"`
	CreatedAt     decode.Time  `json:"createdAt"`
	UpdatedAt     decode.Time  `json:"updatedAt"`
	Title         string       `json:"title"`
	Description   string       `json:"description"`
}

type resource struct {
	ResourceType     string `json:"resourceType"`
	AccessKeyDetails *struct {
		AccessKeyID string `json:"accessKeyId"`
		PrincipalID string `json:"principalId"`
		UserType    string `json:"userType"`
		UserName    string `json:"userName"`
	} `json:"accessKeyDetails"`
	InstanceDetails *struct {
		InstanceID        string `json:"instanceId"`
		ImageID           string `json:"imageId"`
		NetworkInterfaces []struct {
			PrivateIPAddress string `json:"privateIpAddress"`
			PublicIP         string `json:"publicIp"`
		} `json:"networkInterfaces"`
	} `json:"instanceDetails"`
	S3BucketDetails []struct {
		Arn  string `json:"arn"`
		Name string `json:"name"`
	} `json:"s3BucketDetails"`
	EksClusterDetails *struct {
		Name string `json:"name"`
	} `json:"eksClusterDetails"`
	KubernetesDetails *struct {
		KubernetesUserDetails *struct {
			Username string   `json:"username"`
			Groups   []string `json:"groups"`
		} `json:"kubernetesUserDetails"`
		KubernetesWorkloadDetails *struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Namespace  string `json:"namespace"`
			Containers []struct {
				Name  string `json:"name"`
				Image string `json:"image"`
			} `json:"containers"`
		} `json:"kubernetesWorkloadDetails"`
	} `json:"kubernetesDetails"`
}

type ipDetails struct {
	IPAddressV4  string `json:"ipAddressV4"`
	IPAddressV6  string `json:"ipAddressV6"`
	Organization struct {
		Asn    decode.Int `json:"asn"`
		AsnOrg string     `json:"asnOrg"`
		Org    string     `json:"org"`
	} `json:"organization"`
	Country struct {
		CountryCode string `json:"countryCode"`
		CountryName string `json:"countryName"`
	} `json:"country"`
}

type portDetails struct {
	Port decode.Int `json:"port"`
}

type service struct {
	Action struct {
		ActionType              string `json:"actionType"`
		NetworkConnectionAction *struct {
			ConnectionDirection string      `json:"connectionDirection"`
			RemoteIPDetails     *ipDetails  `json:"remoteIpDetails"`
			RemotePortDetails   portDetails `json:"remotePortDetails"`
			LocalPortDetails    portDetails `json:"localPortDetails"`
			LocalIPDetails      *ipDetails  `json:"localIpDetails"`
			Protocol            string      `json:"protocol"`
			Blocked             bool        `json:"blocked"`
		} `json:"networkConnectionAction"`
		AwsAPICallAction *struct {
			API             string     `json:"api"`
			ServiceName     string     `json:"serviceName"`
			CallerType      string     `json:"callerType"`
			ErrorCode       string     `json:"errorCode"`
			UserAgent       string     `json:"userAgent"`
			RemoteIPDetails *ipDetails `json:"remoteIpDetails"`
			DomainDetails   *struct {
				Domain string `json:"domain"`
			} `json:"domainDetails"`
			AffectedResources map[string]decode.String `json:"affectedResources"`
		} `json:"awsApiCallAction"`
		PortProbeAction *struct {
			Blocked          bool `json:"blocked"`
			PortProbeDetails []struct {
				LocalPortDetails portDetails `json:"localPortDetails"`
				RemoteIPDetails  *ipDetails  `json:"remoteIpDetails"`
				LocalIPDetails   *ipDetails  `json:"localIpDetails"`
			} `json:"portProbeDetails"`
		} `json:"portProbeAction"`
		DNSRequestAction *struct {
			Domain   string `json:"domain"`
			Protocol string `json:"protocol"`
			Blocked  bool   `json:"blocked"`
		} `json:"dnsRequestAction"`
		KubernetesAPICallAction *struct {
			RequestURI      string     `json:"requestUri"`
			Verb            string     `json:"verb"`
			UserAgent       string     `json:"userAgent"`
			SourceIPs       []string   `json:"sourceIps"`
			RemoteIPDetails *ipDetails `json:"remoteIpDetails"`
		} `json:"kubernetesApiCallAction"`
	} `json:"action"`
	RuntimeDetails *struct {
		Process *struct {
			Name           string     `json:"name"`
			ExecutablePath string     `json:"executablePath"`
			Pid            decode.Int `json:"pid"`
			User           string     `json:"user"`
			Lineage        []struct {
				Name string `json:"name"`
			} `json:"lineage"`
		} `json:"process"`
	} `json:"runtimeDetails"`
	Count          decode.Int  `json:"count"`
	EventFirstSeen decode.Time `json:"eventFirstSeen"`
	EventLastSeen  decode.Time `json:"eventLastSeen"`
	Archived       bool        `json:"archived"`
	ResourceRole   string      `json:"resourceRole"`
	AdditionalInfo *struct {
		Sample bool `json:"sample"`
	} `json:"additionalInfo"`
}

// Parse implements source.Parser.
func (p *Parser) Parse(body []byte) (decode.Result, error) {
	docs, err := decode.Split(body)
	if err != nil {
		return decode.Result{}, err
	}
	var res decode.Result
	for _, d := range docs {
		if err := p.doc(&res, d.Path, d.Raw, envelope{}); err != nil {
			return decode.Result{}, err
		}
	}
	return res, nil
}

func (p *Parser) doc(res *decode.Result, path string, raw json.RawMessage, outer envelope) error {
	if decode.Kind(raw) != '{' {
		return event.Errorf(decode.Join(path, "$"), "expected a GuardDuty finding object")
	}
	var env envelope
	if err := decode.Unmarshal(path, raw, &env); err != nil {
		return err
	}
	switch {
	case len(env.Findings) > 0 && decode.Kind(env.Findings) == '[':
		var items []json.RawMessage
		if err := decode.Unmarshal(decode.Join(path, "Findings"), env.Findings, &items); err != nil {
			return err
		}
		if len(items) > decode.MaxDocuments {
			return event.Errorf(decode.Join(path, "Findings"), "more than %d findings", decode.MaxDocuments)
		}
		for i, it := range items {
			if err := p.finding(res, decode.Join(path, "Findings["+strconv.Itoa(i)+"]"), it, it, env); err != nil {
				return err
			}
		}
		return nil
	case len(env.Detail) > 0:
		if env.DetailType != nil && *env.DetailType != DetailType {
			return event.Errorf(decode.Join(path, "detail-type"), "expected %q, got %.60q", DetailType, *env.DetailType)
		}
		if decode.Kind(env.Detail) != '{' {
			return event.Errorf(decode.Join(path, "detail"), "expected an object")
		}
		// Raw is the whole envelope: it is the document EventBridge sent.
		return p.finding(res, decode.Join(path, "detail"), env.Detail, raw, env)
	}
	return p.finding(res, path, raw, raw, outer)
}

var findingID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,100}$`)

func (p *Parser) finding(res *decode.Result, path string, raw, whole json.RawMessage, env envelope) error {
	if decode.Kind(raw) != '{' {
		return event.Errorf(decode.Join(path, "$"), "expected a GuardDuty finding object")
	}
	var f finding
	if err := decode.Unmarshal(path, raw, &f); err != nil {
		return err
	}
	if f.Type == "" {
		return event.Errorf(decode.Join(path, "type"), "required")
	}
	if f.ID == "" {
		return event.Errorf(decode.Join(path, "id"), "required")
	}
	if !findingID.MatchString(f.ID) {
		return event.Errorf(decode.Join(path, "id"), "not a GuardDuty finding id: %.60q", f.ID)
	}
	if f.Service.Count < 0 || f.Service.Count > 1<<31 {
		return event.Errorf(decode.Join(path, "service.count"), "out of range: %d", f.Service.Count)
	}
	sev := float64(f.Severity)
	if sev < 0 || sev > 10 {
		return event.Errorf(decode.Join(path, "severity"), "must be 0..10, got %v", sev)
	}
	e := event.Event{
		ID:         "gd-" + f.ID,
		Source:     Name,
		Rule:       decode.Clip(f.Type),
		Message:    decode.Clip(strings.TrimSpace(f.Title)),
		Severity:   strconv.FormatFloat(sev, 'f', -1, 64),
		SeverityID: SeverityID(sev),
		Count:      int(f.Service.Count),
		Raw:        whole,
	}
	for _, t := range []decode.Time{f.Service.EventLastSeen, f.UpdatedAt, f.CreatedAt, f.Service.EventFirstSeen, env.Time} {
		if !t.IsZero() && t.Year() > 1970 {
			e.Time = t.Time
			break
		}
	}
	if e.Message == "" {
		e.Message = decode.Clip(f.Description)
	}
	cloud := &event.Cloud{Provider: "aws", Account: firstNonEmpty(f.AccountID, env.Account), Region: firstNonEmpty(f.Region, env.Region)}
	if !f.Service.EventFirstSeen.IsZero() {
		decode.AddLabel(&e, "guardduty.first_seen", f.Service.EventFirstSeen.UTC().Format("2006-01-02T15:04:05.999Z07:00"))
	}
	decode.AddLabel(&e, "guardduty.finding_id", f.ID)
	decode.AddLabel(&e, "guardduty.arn", f.Arn)
	decode.AddLabel(&e, "guardduty.resource_type", f.Resource.ResourceType)
	decode.AddLabel(&e, "guardduty.resource_role", f.Service.ResourceRole)
	decode.AddLabel(&e, "guardduty.action_type", f.Service.Action.ActionType)
	if f.Service.Archived {
		e.Tags = append(e.Tags, "archived")
	}
	if f.Service.AdditionalInfo != nil && f.Service.AdditionalInfo.Sample {
		// Sample findings (GenerateSampleFindings) must be told apart so
		// that policy can refuse to act on them.
		e.Tags = append(e.Tags, "sample")
	}

	r := f.Resource
	if ak := r.AccessKeyDetails; ak != nil {
		e.Actor = &event.Actor{User: ak.UserName, UID: ak.PrincipalID, Type: ak.UserType, AccessKeyID: ak.AccessKeyID}
		if ak.UserType == "AssumedRole" || ak.UserType == "Role" {
			e.Actor.Role = ak.UserName
		}
		e.Resources = append(e.Resources, event.Resource{Type: "aws:iam:access_key", UID: decode.Clip(ak.AccessKeyID), Name: decode.Clip(ak.UserName)})
	}
	var localIP string
	if in := r.InstanceDetails; in != nil {
		cloud.InstanceID = decode.Clip(in.InstanceID)
		if in.InstanceID != "" {
			e.Resources = append(e.Resources, event.Resource{Type: "aws:ec2:instance", UID: decode.Clip(in.InstanceID)})
		}
		if len(in.NetworkInterfaces) > 0 {
			localIP = decode.IP(in.NetworkInterfaces[0].PrivateIPAddress)
		}
	}
	for i, b := range r.S3BucketDetails {
		if i >= decode.MaxLabels {
			break
		}
		e.Resources = append(e.Resources, event.Resource{Type: "aws:s3:bucket", Name: decode.Clip(b.Name), UID: decode.Clip(b.Arn)})
	}
	if k := r.KubernetesDetails; k != nil {
		kd := &event.Kubernetes{}
		if r.EksClusterDetails != nil {
			kd.Cluster = decode.Clip(r.EksClusterDetails.Name)
		}
		if w := k.KubernetesWorkloadDetails; w != nil {
			kd.Namespace = decode.K8sLabel(w.Namespace)
			if w.Name != "" {
				kd.Workload = decode.Clip(strings.ToLower(w.Type) + "/" + w.Name)
				if strings.EqualFold(w.Type, "pods") || strings.EqualFold(w.Type, "pod") {
					kd.Pod = decode.K8sName(w.Name)
				}
			}
			if len(w.Containers) > 0 {
				kd.Container, kd.Image = decode.Clip(w.Containers[0].Name), decode.Clip(w.Containers[0].Image)
			}
		}
		if u := k.KubernetesUserDetails; u != nil && u.Username != "" {
			if e.Actor == nil {
				e.Actor = &event.Actor{}
			}
			e.Actor.User = decode.Clip(u.Username)
			if len(u.Groups) <= decode.MaxLabels {
				e.Actor.Groups = u.Groups
			}
		}
		e.Kubernetes = kd
	}

	a := f.Service.Action
	remote := func(d *ipDetails) *event.Endpoint {
		if d == nil {
			return nil
		}
		ip := decode.IP(firstNonEmpty(d.IPAddressV4, d.IPAddressV6))
		if ip == "" {
			return nil
		}
		ep := &event.Endpoint{IP: ip, Country: decode.Clip(firstNonEmpty(d.Country.CountryCode, d.Country.CountryName)), Org: decode.Clip(firstNonEmpty(d.Organization.AsnOrg, d.Organization.Org))}
		if d.Organization.Asn > 0 && d.Organization.Asn < 1<<32 {
			ep.ASN = int(d.Organization.Asn)
		}
		decode.AddObservable(&e, "ip", ip)
		return ep
	}
	local := func(d *ipDetails, port decode.Int) *event.Endpoint {
		ip := localIP
		if d != nil {
			if v := decode.IP(firstNonEmpty(d.IPAddressV4, d.IPAddressV6)); v != "" {
				ip = v
			}
		}
		if ip == "" && decode.Port(int64(port)) == 0 {
			return nil
		}
		return &event.Endpoint{IP: ip, Port: decode.Port(int64(port)), Hostname: cloud.InstanceID}
	}
	switch {
	case a.NetworkConnectionAction != nil:
		n := a.NetworkConnectionAction
		rem := remote(n.RemoteIPDetails)
		if rem != nil {
			rem.Port = decode.Port(int64(n.RemotePortDetails.Port))
		}
		loc := local(n.LocalIPDetails, n.LocalPortDetails.Port)
		if strings.EqualFold(n.ConnectionDirection, "OUTBOUND") {
			e.SrcEndpoint, e.DstEndpoint = loc, rem
		} else {
			e.SrcEndpoint, e.DstEndpoint = rem, loc
		}
		decode.AddLabel(&e, "network.direction", strings.ToLower(n.ConnectionDirection))
		decode.AddLabel(&e, "network.protocol", strings.ToLower(n.Protocol))
		decode.AddLabel(&e, "network.blocked", strconv.FormatBool(n.Blocked))
	case a.PortProbeAction != nil:
		for i, d := range a.PortProbeAction.PortProbeDetails {
			if i >= decode.MaxLabels {
				break
			}
			rem := remote(d.RemoteIPDetails)
			if i == 0 {
				e.SrcEndpoint = rem
				e.DstEndpoint = local(d.LocalIPDetails, d.LocalPortDetails.Port)
			}
			if p := decode.Port(int64(d.LocalPortDetails.Port)); p > 0 {
				decode.AddObservable(&e, "port", strconv.Itoa(p))
			}
		}
		decode.AddLabel(&e, "network.blocked", strconv.FormatBool(a.PortProbeAction.Blocked))
	case a.AwsAPICallAction != nil:
		c := a.AwsAPICallAction
		e.SrcEndpoint = remote(c.RemoteIPDetails)
		cloud.API, cloud.Service = decode.Clip(c.API), decode.Clip(c.ServiceName)
		if c.DomainDetails != nil && c.DomainDetails.Domain != "" {
			if e.SrcEndpoint == nil {
				e.SrcEndpoint = &event.Endpoint{}
			}
			e.SrcEndpoint.Domain = decode.Clip(c.DomainDetails.Domain)
			decode.AddObservable(&e, "domain", c.DomainDetails.Domain)
		}
		if c.UserAgent != "" {
			if e.Actor == nil {
				e.Actor = &event.Actor{}
			}
			e.Actor.UserAgent = decode.Clip(c.UserAgent)
		}
		decode.AddLabel(&e, "aws.error_code", c.ErrorCode)
		decode.AddLabel(&e, "aws.caller_type", c.CallerType)
	case a.DNSRequestAction != nil:
		d := a.DNSRequestAction
		if d.Domain != "" {
			e.DstEndpoint = &event.Endpoint{Domain: decode.Clip(d.Domain)}
			decode.AddObservable(&e, "domain", d.Domain)
		}
		if localIP != "" || cloud.InstanceID != "" {
			e.SrcEndpoint = &event.Endpoint{IP: localIP, Hostname: cloud.InstanceID}
		}
		decode.AddLabel(&e, "network.blocked", strconv.FormatBool(d.Blocked))
	case a.KubernetesAPICallAction != nil:
		k := a.KubernetesAPICallAction
		e.SrcEndpoint = remote(k.RemoteIPDetails)
		if e.SrcEndpoint == nil && len(k.SourceIPs) > 0 {
			if ip := decode.IP(k.SourceIPs[0]); ip != "" {
				e.SrcEndpoint = &event.Endpoint{IP: ip}
			}
		}
		if e.Kubernetes == nil {
			e.Kubernetes = &event.Kubernetes{}
		}
		e.Kubernetes.Verb = decode.Clip(k.Verb)
		decode.AddLabel(&e, "k8s.request_uri", k.RequestURI)
	}
	if rd := f.Service.RuntimeDetails; rd != nil && rd.Process != nil {
		// Runtime Monitoring findings name the process on the host or
		// container.
		pr := &event.Process{Name: decode.Clip(rd.Process.Name), File: decode.Clip(rd.Process.ExecutablePath), User: decode.Clip(rd.Process.User)}
		if rd.Process.Pid > 0 && rd.Process.Pid < 1<<31 {
			pr.PID = int(rd.Process.Pid)
		}
		if len(rd.Process.Lineage) > 0 {
			pr.Parent = decode.Clip(rd.Process.Lineage[0].Name)
		}
		if *pr != (event.Process{}) {
			e.Process = pr
		}
	}
	if *cloud != (event.Cloud{Provider: "aws"}) {
		e.Cloud = cloud
	}
	if e.Kubernetes != nil && *e.Kubernetes == (event.Kubernetes{}) {
		e.Kubernetes = nil
	}
	e.Type = TypeOf(f.Type, a.ActionType)
	p.cls.Apply(&e)
	return res.AddEvent(path, e)
}

// SeverityID maps GuardDuty's 0..10 severity to OCSF: low 1.0–3.9, medium
// 4.0–6.9, high 7.0–8.9, critical 9.0–10.0.
func SeverityID(s float64) int {
	switch {
	case s >= 9:
		return classify.SevCritical
	case s >= 7:
		return classify.SevHigh
	case s >= 4:
		return classify.SevMedium
	case s >= 1:
		return classify.SevLow
	case s > 0:
		return classify.SevInformational
	}
	return classify.SevUnknown
}

// TypeOf maps a finding type ("ThreatPurpose:ResourceType/ThreatFamily.Mechanism!Artifact")
// to the taxonomy: specific threat families first, then the threat
// purpose, then the action type for unknown purposes (Canary, new ones).
func TypeOf(findingType, actionType string) string {
	l := strings.ToLower(findingType)
	purpose, rest, _ := strings.Cut(l, ":")
	resType, _, _ := strings.Cut(rest, "/")
	has := func(s ...string) bool {
		for _, v := range s {
			if strings.Contains(l, v) {
				return true
			}
		}
		return false
	}
	switch {
	case has("dnsdataexfiltration"):
		return classify.DNSTunneling
	case has("instancecredentialexfiltration", "metadatadnsrebind"):
		return classify.CredentialCompromise
	case has("bruteforce"):
		return classify.BruteForce
	case has("portprobe", "portsweep", "portscan"):
		return classify.PortScan
	case has("cryptocurrency", "bitcoin", "cryptomin"):
		return classify.CryptoMining
	case has("c&c", "dgadomain", "blackhole", "drivebysourcetraffic") && purpose != "trojan":
		return classify.CommandAndControl
	case has("maliciousfile"):
		return classify.Malware
	case has("denialofservice"):
		return classify.DenialOfService
	}
	switch purpose {
	case "backdoor":
		return classify.CommandAndControl
	case "behavior":
		return classify.Anomaly
	case "credentialaccess":
		return classify.CredentialCompromise
	case "cryptocurrency":
		return classify.CryptoMining
	case "defenseevasion", "stealth":
		return classify.DefenseEvasion
	case "discovery", "recon", "pentest":
		return classify.Reconnaissance
	case "execution":
		return classify.Execution
	case "exfiltration":
		return classify.DataExfiltration
	case "impact":
		if has("domainrequest", "maliciousipcaller") {
			return classify.SuspiciousConnection
		}
		return classify.Anomaly
	case "initialaccess":
		return classify.UnauthorizedAccess
	case "object", "trojan":
		return classify.Malware
	case "persistence":
		return classify.Persistence
	case "policy":
		return classify.PolicyViolation
	case "privilegeescalation":
		return classify.PrivilegeEscalation
	case "unauthorizedaccess":
		switch resType {
		case "iamuser", "s3", "rdsdbinstance", "lambda":
			return classify.CredentialCompromise
		case "ec2":
			return classify.SuspiciousConnection
		}
		return classify.UnauthorizedAccess
	}
	switch strings.ToUpper(actionType) {
	case "NETWORK_CONNECTION", "DNS_REQUEST":
		return classify.SuspiciousConnection
	case "PORT_PROBE":
		return classify.PortScan
	}
	return classify.Anomaly
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
