// Package cloudtrail parses AWS CloudTrail records in the four shapes they
// travel in: a log file ({"Records": [...]}), a bare record, a JSON array of
// records, and an EventBridge event ("AWS API Call via CloudTrail" and the
// other "... via CloudTrail" detail-types).
//
// Every record becomes an event. A built-in set of detections (see
// detections.go) marks the suspicious ones with a rule name, a type and a
// severity; every other call is an informational event whose rule is the
// API name, so that operators can still override a specific API (for
// example GetSecretValue) to a higher priority in configuration.
package cloudtrail

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
const Name = "cloudtrail"

// Parser parses CloudTrail records.
type Parser struct{ cls *classify.Classifier }

// New returns a Parser; a nil Classifier means the defaults.
func New(cls *classify.Classifier) *Parser { return &Parser{cls: cls} }

// Name implements source.Parser.
func (p *Parser) Name() string { return Name }

type wrapper struct {
	Records    json.RawMessage `json:"Records"`
	DetailType *string         `json:"detail-type"`
	Detail     json.RawMessage `json:"detail"`
	Account    string          `json:"account"`
	Region     string          `json:"region"`
	EventName  string          `json:"eventName"`
}

type identity struct {
	Type           string `json:"type"`
	PrincipalID    string `json:"principalId"`
	Arn            string `json:"arn"`
	AccountID      string `json:"accountId"`
	AccessKeyID    string `json:"accessKeyId"`
	UserName       string `json:"userName"`
	InvokedBy      string `json:"invokedBy"`
	SessionContext *struct {
		SessionIssuer *struct {
			Type     string `json:"type"`
			UserName string `json:"userName"`
			Arn      string `json:"arn"`
		} `json:"sessionIssuer"`
		Attributes *struct {
			MFAAuthenticated decode.String `json:"mfaAuthenticated"`
		} `json:"attributes"`
	} `json:"sessionContext"`
}

type record struct {
	EventVersion        string          `json:"eventVersion"`
	UserIdentity        identity        `json:"userIdentity"`
	EventTime           decode.Time     `json:"eventTime"`
	EventSource         string          `json:"eventSource"`
	EventName           string          `json:"eventName"`
	AWSRegion           string          `json:"awsRegion"`
	SourceIPAddress     string          `json:"sourceIPAddress"`
	UserAgent           string          `json:"userAgent"`
	ErrorCode           string          `json:"errorCode"`
	ErrorMessage        string          `json:"errorMessage"`
	RequestParameters   json.RawMessage `json:"requestParameters"`
	ResponseElements    json.RawMessage `json:"responseElements"`
	AdditionalEventData json.RawMessage `json:"additionalEventData"`
	EventID             string          `json:"eventID"`
	EventType           string          `json:"eventType"`
	RecipientAccountID  string          `json:"recipientAccountId"`
	ReadOnly            *bool           `json:"readOnly"`
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
			return decode.Result{}, event.Errorf(decode.Join(d.Path, "$"), "expected a CloudTrail record object")
		}
		var w wrapper
		if err := decode.Unmarshal(d.Path, d.Raw, &w); err != nil {
			return decode.Result{}, err
		}
		switch {
		case w.EventName == "" && len(w.Records) > 0:
			var recs []json.RawMessage
			if err := decode.Unmarshal(decode.Join(d.Path, "Records"), w.Records, &recs); err != nil {
				return decode.Result{}, err
			}
			if len(recs) > decode.MaxDocuments {
				return decode.Result{}, event.Errorf(decode.Join(d.Path, "Records"), "more than %d records", decode.MaxDocuments)
			}
			for i, r := range recs {
				if err := p.record(&res, decode.Join(d.Path, "Records["+strconv.Itoa(i)+"]"), r, r, w); err != nil {
					return decode.Result{}, err
				}
			}
		case w.EventName == "" && len(w.Detail) > 0:
			if w.DetailType != nil && !strings.HasSuffix(*w.DetailType, "via CloudTrail") {
				return decode.Result{}, event.Errorf(decode.Join(d.Path, "detail-type"), "expected an \"... via CloudTrail\" event, got %.60q", *w.DetailType)
			}
			if err := p.record(&res, decode.Join(d.Path, "detail"), w.Detail, d.Raw, w); err != nil {
				return decode.Result{}, err
			}
		default:
			if err := p.record(&res, d.Path, d.Raw, d.Raw, wrapper{}); err != nil {
				return decode.Result{}, err
			}
		}
	}
	return res, nil
}

var eventIDRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,100}$`)

func (p *Parser) record(res *decode.Result, path string, raw, whole json.RawMessage, env wrapper) error {
	if decode.Kind(raw) != '{' {
		return event.Errorf(decode.Join(path, "$"), "expected a CloudTrail record object")
	}
	var r record
	if err := decode.Unmarshal(path, raw, &r); err != nil {
		return err
	}
	if r.EventName == "" {
		return event.Errorf(decode.Join(path, "eventName"), "required")
	}
	if r.EventSource == "" {
		return event.Errorf(decode.Join(path, "eventSource"), "required")
	}
	if r.EventID != "" && !eventIDRE.MatchString(r.EventID) {
		return event.Errorf(decode.Join(path, "eventID"), "not a CloudTrail event id: %.60q", r.EventID)
	}
	req, err := decode.ParseTree(r.RequestParameters)
	if err != nil {
		return decode.Wrap(decode.Join(path, "requestParameters"), err)
	}
	resp, err := decode.ParseTree(r.ResponseElements)
	if err != nil {
		return decode.Wrap(decode.Join(path, "responseElements"), err)
	}
	extra, err := decode.ParseTree(r.AdditionalEventData)
	if err != nil {
		return decode.Wrap(decode.Join(path, "additionalEventData"), err)
	}
	rec := &parsed{record: r, req: req, resp: resp, extra: extra}

	e := event.Event{
		Source: Name,
		Time:   r.EventTime.Time,
		Raw:    whole,
		Cloud: &event.Cloud{
			Provider: "aws",
			Account:  decode.Clip(firstNonEmpty(r.RecipientAccountID, r.UserIdentity.AccountID, env.Account)),
			Region:   decode.Clip(firstNonEmpty(r.AWSRegion, env.Region)),
			API:      decode.Clip(r.EventName),
			Service:  decode.Clip(r.EventSource),
		},
	}
	if r.EventID != "" {
		e.ID = "ct-" + r.EventID
	}
	actor(&e, r)
	if src := strings.TrimSpace(r.SourceIPAddress); src != "" {
		if ip := decode.IP(src); ip != "" {
			e.SrcEndpoint = &event.Endpoint{IP: ip}
			decode.AddObservable(&e, "ip", ip)
		} else if looksLikeIP(src) {
			// Not usable as an address (e.g. the leading zeros of
			// anonymised logs, "211.9.016.253", ambiguous between decimal
			// and octal): kept visible, never an entity an action targets.
			decode.AddLabel(&e, "aws.source_ip_unparsed", src)
		} else {
			// An AWS service or "AWS Internal" acting on the caller's behalf.
			e.SrcEndpoint = &event.Endpoint{Domain: decode.Clip(src)}
		}
	}
	decode.AddLabel(&e, "aws.event_type", r.EventType)
	decode.AddLabel(&e, "aws.error_code", r.ErrorCode)
	decode.AddLabel(&e, "aws.error_message", r.ErrorMessage)
	if r.ReadOnly != nil {
		decode.AddLabel(&e, "aws.read_only", strconv.FormatBool(*r.ReadOnly))
	}
	resources(&e, rec)

	if d, ok := detect(rec); ok {
		e.Rule, e.Type, e.SeverityID, e.Priority = d.Rule, d.Type, d.Severity, d.Priority
		e.Message = d.Message
		e.Tags = append(e.Tags, "detection")
	} else {
		e.Rule = decode.Clip(r.EventName)
		e.Type = classify.Informational
		e.SeverityID = classify.SevInformational
		e.Message = decode.Clip(describe(r))
	}
	e.Severity = event.SeverityName(e.SeverityID)
	p.cls.Apply(&e)
	return res.AddEvent(path, e)
}

func describe(r record) string {
	who := r.UserIdentity.UserName
	if who == "" {
		who = r.UserIdentity.Arn
	}
	if who == "" {
		who = r.UserIdentity.Type
	}
	s := r.EventSource + " " + r.EventName + " by " + who
	if r.ErrorCode != "" {
		s += " failed: " + r.ErrorCode
	}
	return s
}

var ipLike = regexp.MustCompile(`^[0-9.]+$|^[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*$`)

func looksLikeIP(s string) bool { return ipLike.MatchString(s) }

func actor(e *event.Event, r record) {
	u := r.UserIdentity
	a := &event.Actor{
		User:        decode.Clip(u.UserName),
		UID:         decode.Clip(u.PrincipalID),
		Type:        decode.Clip(u.Type),
		AccessKeyID: decode.Clip(u.AccessKeyID),
		UserAgent:   decode.Clip(r.UserAgent),
	}
	if sc := u.SessionContext; sc != nil && sc.SessionIssuer != nil && sc.SessionIssuer.UserName != "" {
		if sc.SessionIssuer.Type == "Role" {
			a.Role = decode.Clip(sc.SessionIssuer.UserName)
		}
		if a.User == "" {
			// The session name is the part of the assumed-role ARN after the role.
			if i := strings.LastIndex(u.Arn, "/"); i >= 0 && strings.Contains(u.Arn, ":assumed-role/") {
				a.User = decode.Clip(u.Arn[i+1:])
			}
		}
	}
	if a.User == "" && u.Type == "Root" {
		a.User = "root"
	}
	if a.User == "" && u.InvokedBy != "" {
		a.User = decode.Clip(u.InvokedBy)
	}
	if a.User != "" || a.UID != "" || a.Type != "" || a.AccessKeyID != "" || a.Role != "" || a.UserAgent != "" {
		e.Actor = a
	}
}

func resources(e *event.Event, p *parsed) {
	add := func(typ, name, uid string) {
		if name == "" && uid == "" {
			return
		}
		if len(e.Resources) < decode.MaxLabels {
			e.Resources = append(e.Resources, event.Resource{Type: typ, Name: decode.Clip(name), UID: decode.Clip(uid)})
		}
	}
	add("aws:s3:bucket", p.req.Get("bucketName").Str(), "")
	add("aws:ec2:security_group", "", p.req.Get("groupId").Str())
	if p.record.EventSource == "iam.amazonaws.com" {
		add("aws:iam:user", p.req.Get("userName").Str(), "")
		add("aws:iam:role", p.req.Get("roleName").Str(), "")
	}
	if p.record.EventSource == "cloudtrail.amazonaws.com" {
		add("aws:cloudtrail:trail", p.req.Get("name").Str(), "")
	}
	if k := p.resp.Get("accessKey", "accessKeyId").Str(); k != "" {
		add("aws:iam:access_key", p.resp.Get("accessKey", "userName").Str(), k)
		decode.AddObservable(e, "access_key", k)
	}
	inst := p.req.Get("instanceId").Str()
	if inst == "" {
		if items := p.req.Get("instancesSet").List(); len(items) > 0 {
			inst = items[0].Get("instanceId").Str()
		}
	}
	if inst != "" {
		e.Cloud.InstanceID = decode.Clip(inst)
		add("aws:ec2:instance", "", inst)
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
