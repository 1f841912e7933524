package cloudtrail

import (
	"strings"

	"github.com/quell-ir/quell/internal/classify"
	"github.com/quell-ir/quell/internal/source/decode"
)

// Detection names: the Rule of a suspicious call, which configuration
// overrides refer to.
const (
	RuleConsoleLoginFailure = "ConsoleLogin failure"
	RuleConsoleLoginNoMFA   = "ConsoleLogin without MFA"
	RuleRootConsoleLogin    = "Root ConsoleLogin"
	RuleAccessKeyForOther   = "CreateAccessKey for another user"
	RuleLoginProfileOther   = "Login profile set for another user"
	RuleSecurityGroupWorld  = "Security group opened to the world"
	RuleBucketPublic        = "S3 bucket made public"
	RuleTrailStopped        = "CloudTrail logging stopped"
	RuleDetectorDeleted     = "GuardDuty detector deleted"
	RuleFlowLogsDeleted     = "VPC flow logs deleted"
	RuleAdminPolicyAttached = "Administrator policy attached"
)

type parsed struct {
	record
	req, resp, extra decode.Tree
}

type detection struct {
	Rule, Type, Priority, Message string
	Severity                      int
}

// detect runs the built-in detections on one record.
func detect(p *parsed) (detection, bool) {
	r := p.record
	caller := callerName(r.UserIdentity)
	failed := r.ErrorCode != "" || r.ErrorMessage != ""
	switch r.EventName {
	case "ConsoleLogin":
		outcome := p.resp.Get("ConsoleLogin").Str()
		if outcome == "Failure" || (outcome == "" && failed) {
			sev := classify.SevMedium
			if r.UserIdentity.Type == "Root" {
				sev = classify.SevHigh
			}
			return detection{Rule: RuleConsoleLoginFailure, Type: classify.FailedAuthentication, Severity: sev,
				Message: "Failed console sign-in for " + caller + " from " + r.SourceIPAddress + ": " + r.ErrorMessage}, true
		}
		if r.UserIdentity.Type == "Root" {
			return detection{Rule: RuleRootConsoleLogin, Type: classify.PolicyViolation, Severity: classify.SevHigh, Priority: classify.P1,
				Message: "Root user signed in to the console from " + r.SourceIPAddress}, true
		}
		if strings.EqualFold(p.extra.Get("MFAUsed").Str(), "No") && r.UserIdentity.Type == "IAMUser" {
			return detection{Rule: RuleConsoleLoginNoMFA, Type: classify.PolicyViolation, Severity: classify.SevMedium,
				Message: "Console sign-in without MFA for " + caller + " from " + r.SourceIPAddress}, true
		}
	case "CreateAccessKey":
		target := p.req.Get("userName").Str()
		if !failed && target != "" && target != caller {
			return detection{Rule: RuleAccessKeyForOther, Type: classify.Persistence, Severity: classify.SevHigh,
				Message: caller + " created an access key for " + target}, true
		}
	case "CreateLoginProfile", "UpdateLoginProfile":
		target := p.req.Get("userName").Str()
		if !failed && target != "" && target != caller {
			return detection{Rule: RuleLoginProfileOther, Type: classify.Persistence, Severity: classify.SevHigh,
				Message: caller + " set a console password for " + target}, true
		}
	case "AuthorizeSecurityGroupIngress":
		if !failed {
			if cidr, from, to, ok := worldIngress(p); ok {
				d := detection{Rule: RuleSecurityGroupWorld, Type: classify.PolicyViolation, Severity: classify.SevMedium,
					Message: caller + " opened security group " + p.req.Get("groupId").Str() + " to " + cidr + " on ports " + from + "-" + to}
				if adminPorts(from, to) {
					// SSH, RDP or every port open to the internet is an
					// exposure, not drift: raise it.
					d.Severity, d.Priority = classify.SevHigh, classify.P1
				}
				return d, true
			}
		}
	case "PutBucketAcl", "PutObjectAcl", "PutBucketPolicy", "DeleteBucketPublicAccessBlock", "PutBucketPublicAccessBlock", "DeleteAccountPublicAccessBlock", "PutAccountPublicAccessBlock":
		if !failed {
			if why, ok := bucketPublic(p); ok {
				return detection{Rule: RuleBucketPublic, Type: classify.PolicyViolation, Severity: classify.SevHigh, Priority: classify.P1,
					Message: caller + " made bucket " + p.req.Get("bucketName").Str() + " public (" + why + ")"}, true
			}
		}
	case "StopLogging", "DeleteTrail":
		if !failed {
			return detection{Rule: RuleTrailStopped, Type: classify.DefenseEvasion, Severity: classify.SevHigh,
				Message: caller + " called " + r.EventName + " on trail " + p.req.Get("name").Str()}, true
		}
	case "DeleteDetector", "DisassociateFromMasterAccount", "DisassociateFromAdministratorAccount":
		if !failed && r.EventSource == "guardduty.amazonaws.com" {
			return detection{Rule: RuleDetectorDeleted, Type: classify.DefenseEvasion, Severity: classify.SevHigh,
				Message: caller + " called " + r.EventName + " on GuardDuty"}, true
		}
	case "DeleteFlowLogs":
		if !failed {
			return detection{Rule: RuleFlowLogsDeleted, Type: classify.DefenseEvasion, Severity: classify.SevHigh,
				Message: caller + " deleted VPC flow logs"}, true
		}
	case "AttachUserPolicy", "AttachRolePolicy", "AttachGroupPolicy":
		if !failed && strings.HasSuffix(p.req.Get("policyArn").Str(), ":policy/AdministratorAccess") {
			return detection{Rule: RuleAdminPolicyAttached, Type: classify.PrivilegeEscalation, Severity: classify.SevHigh,
				Message: caller + " attached AdministratorAccess via " + r.EventName}, true
		}
	}
	return detection{}, false
}

func callerName(u identity) string {
	if u.UserName != "" {
		return u.UserName
	}
	if sc := u.SessionContext; sc != nil && sc.SessionIssuer != nil && sc.SessionIssuer.UserName != "" {
		return sc.SessionIssuer.UserName
	}
	if u.Type == "Root" {
		return "root"
	}
	if u.Arn != "" {
		return u.Arn
	}
	return u.Type
}

// worldIngress finds a /0 range (IPv4 or IPv6) in the request or in the
// rules AWS reports as created. Any address with a /0 prefix is the whole
// internet, whatever the address part says.
func worldIngress(p *parsed) (cidr, from, to string, ok bool) {
	check := func(c string) bool { return strings.HasSuffix(strings.TrimSpace(c), "/0") }
	if c := p.req.Get("cidrIp").Str(); check(c) {
		return c, p.req.Get("fromPort").Str(), p.req.Get("toPort").Str(), true
	}
	for _, perm := range p.req.Get("ipPermissions").List() {
		for _, r := range perm.Get("ipRanges").List() {
			if c := r.Get("cidrIp").Str(); check(c) {
				return c, perm.Get("fromPort").Str(), perm.Get("toPort").Str(), true
			}
		}
		for _, r := range perm.Get("ipv6Ranges").List() {
			if c := r.Get("cidrIpv6").Str(); check(c) {
				return c, perm.Get("fromPort").Str(), perm.Get("toPort").Str(), true
			}
		}
	}
	for _, it := range p.resp.Get("securityGroupRuleSet").List() {
		if it.Get("isEgress").Str() == "true" {
			continue
		}
		for _, k := range []string{"cidrIpv4", "cidrIpv6"} {
			if c := it.Get(k).Str(); check(c) {
				return c, it.Get("fromPort").Str(), it.Get("toPort").Str(), true
			}
		}
	}
	return "", "", "", false
}

func adminPorts(from, to string) bool {
	f, okf := decode.ParseInt(from)
	t, okt := decode.ParseInt(to)
	if !okf || !okt || f < 0 || t < 0 { // -1 or absent: all ports
		return true
	}
	for _, port := range []int64{22, 3389} {
		if f <= port && port <= t {
			return true
		}
	}
	return t-f >= 1000
}

// bucketPublic recognises the ways a bucket becomes public: an ACL granting
// AllUsers or AuthenticatedUsers, a canned public ACL, a policy allowing
// Principal "*" without condition, or Block Public Access switched off.
func bucketPublic(p *parsed) (string, bool) {
	var why string
	p.req.Walk(func(k, v string) {
		if why != "" {
			return
		}
		lv := strings.ToLower(v)
		switch {
		case strings.Contains(lv, "acs.amazonaws.com/groups/global/allusers"):
			why = "ACL grants AllUsers"
		case strings.Contains(lv, "acs.amazonaws.com/groups/global/authenticatedusers"):
			why = "ACL grants AuthenticatedUsers"
		case strings.EqualFold(k, "x-amz-acl") && (lv == "public-read" || lv == "public-read-write" || lv == "authenticated-read"):
			why = "canned ACL " + lv
		}
	})
	if why != "" {
		return why, true
	}
	switch p.record.EventName {
	case "PutBucketPolicy":
		pol := p.req.Get("bucketPolicy")
		if s := pol.Str(); s != "" { // sometimes delivered as a JSON string
			if t, err := decode.ParseTree([]byte(s)); err == nil {
				pol = t
			}
		}
		for _, st := range pol.Get("Statement").List() {
			if !strings.EqualFold(st.Get("Effect").Str(), "Allow") || st.Get("Condition").V != nil {
				continue
			}
			pr := st.Get("Principal")
			if pr.Str() == "*" || pr.Get("AWS").Str() == "*" {
				return "policy allows Principal *", true
			}
			for _, a := range pr.Get("AWS").List() {
				if a.Str() == "*" {
					return "policy allows Principal *", true
				}
			}
		}
	case "DeleteBucketPublicAccessBlock", "DeleteAccountPublicAccessBlock":
		return "Block Public Access removed", true
	case "PutBucketPublicAccessBlock", "PutAccountPublicAccessBlock":
		conf := p.req.Get("PublicAccessBlockConfiguration")
		if conf.V == nil {
			return "", false
		}
		for _, k := range []string{"BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"} {
			if v := conf.Get(k).Str(); v == "true" {
				return "", false
			}
		}
		return "Block Public Access disabled", true
	}
	return "", false
}
