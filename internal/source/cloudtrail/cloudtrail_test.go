package cloudtrail

import (
	"errors"
	"strings"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

func rec(name, src, params string) string {
	return `{"eventVersion":"1.09","userIdentity":{"type":"IAMUser","principalId":"AIDAEXAMPLE","arn":"arn:aws:iam::111122223333:user/alice","accountId":"111122223333","accessKeyId":"AKIAEXAMPLEKEY000001","userName":"alice"},
"eventTime":"2024-08-01T12:00:00Z","eventSource":"` + src + `","eventName":"` + name + `","awsRegion":"eu-west-1","sourceIPAddress":"203.0.113.50","userAgent":"aws-cli/2",
"requestParameters":` + params + `,"responseElements":null,"eventID":"11111111-2222-3333-4444-555555555555","eventType":"AwsApiCall","recipientAccountId":"111122223333"}`
}

func one(t *testing.T, body string) event.Event {
	t.Helper()
	res, err := New(nil).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Events) != 1 {
		t.Fatalf("%d events", len(res.Events))
	}
	return res.Events[0]
}

func TestShapes(t *testing.T) {
	r := rec("StopLogging", "cloudtrail.amazonaws.com", `{"name":"main"}`)
	for name, body := range map[string]string{
		"bare":        r,
		"array":       "[" + r + "]",
		"log file":    `{"Records":[` + r + `]}`,
		"eventbridge": `{"version":"0","detail-type":"AWS API Call via CloudTrail","source":"aws.cloudtrail","account":"111122223333","region":"eu-west-1","detail":` + r + `}`,
		"ndjson":      r + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			e := one(t, body)
			if e.ID != "ct-11111111-2222-3333-4444-555555555555" || e.Rule != RuleTrailStopped || e.Type != "defense_evasion" || e.Priority != "P0" {
				t.Fatalf("id %q rule %q type %q prio %q", e.ID, e.Rule, e.Type, e.Priority)
			}
			if e.Actor.User != "alice" || e.Actor.AccessKeyID != "AKIAEXAMPLEKEY000001" || e.Cloud.Account != "111122223333" || e.Cloud.Region != "eu-west-1" || e.SrcEndpoint.IP != "203.0.113.50" {
				t.Fatalf("actor %+v cloud %+v src %+v", e.Actor, e.Cloud, e.SrcEndpoint)
			}
		})
	}
}

func TestDetections(t *testing.T) {
	for _, tc := range []struct {
		name, body, rule, typ, prio string
	}{
		{"bucket ACL to AllUsers", rec("PutBucketAcl", "s3.amazonaws.com", `{"bucketName":"b","AccessControlPolicy":{"AccessControlList":{"Grant":[{"Grantee":{"xsi:type":"Group","URI":"http://acs.amazonaws.com/groups/global/AllUsers"},"Permission":"READ"}]}}}`), RuleBucketPublic, "policy_violation", "P1"},
		{"canned public-read", rec("PutBucketAcl", "s3.amazonaws.com", `{"bucketName":"b","x-amz-acl":["public-read"]}`), RuleBucketPublic, "policy_violation", "P1"},
		{"policy Principal *", rec("PutBucketPolicy", "s3.amazonaws.com", `{"bucketName":"b","bucketPolicy":{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}]}}`), RuleBucketPublic, "policy_violation", "P1"},
		{"policy Principal * with condition", rec("PutBucketPolicy", "s3.amazonaws.com", `{"bucketName":"b","bucketPolicy":{"Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}}]}}`), "PutBucketPolicy", "informational", "P3"},
		{"ACL to canonical user", rec("PutBucketAcl", "s3.amazonaws.com", `{"bucketName":"b","AccessControlPolicy":{"AccessControlList":{"Grant":{"Grantee":{"xsi:type":"CanonicalUser","ID":"abc"},"Permission":"FULL_CONTROL"}}}}`), "PutBucketAcl", "informational", "P3"},
		{"public access block removed", rec("DeleteBucketPublicAccessBlock", "s3.amazonaws.com", `{"bucketName":"b"}`), RuleBucketPublic, "policy_violation", "P1"},
		{"SG 443 to world", rec("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", `{"groupId":"sg-1","ipPermissions":{"items":[{"ipProtocol":"tcp","fromPort":443,"toPort":443,"ipRanges":{"items":[{"cidrIp":"0.0.0.0/0"}]}}]}}`), RuleSecurityGroupWorld, "policy_violation", "P2"},
		{"SG all ports ipv6 world", rec("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", `{"groupId":"sg-1","ipPermissions":{"items":[{"ipProtocol":"-1","ipv6Ranges":{"items":[{"cidrIpv6":"::/0"}]}}]}}`), RuleSecurityGroupWorld, "policy_violation", "P1"},
		{"SG to a /24", rec("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", `{"groupId":"sg-1","cidrIp":"198.51.100.0/24","fromPort":22,"toPort":22}`), "AuthorizeSecurityGroupIngress", "informational", "P3"},
		{"own access key", rec("CreateAccessKey", "iam.amazonaws.com", `{"userName":"alice"}`), "CreateAccessKey", "informational", "P3"},
		{"admin policy", rec("AttachUserPolicy", "iam.amazonaws.com", `{"userName":"bob","policyArn":"arn:aws:iam::aws:policy/AdministratorAccess"}`), RuleAdminPolicyAttached, "privilege_escalation", "P0"},
		{"guardduty detector deleted", rec("DeleteDetector", "guardduty.amazonaws.com", `{"detectorId":"x"}`), RuleDetectorDeleted, "defense_evasion", "P0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := one(t, tc.body)
			if e.Rule != tc.rule || e.Type != tc.typ || e.Priority != tc.prio {
				t.Fatalf("rule %q type %q prio %q; want %q %q %q", e.Rule, e.Type, e.Priority, tc.rule, tc.typ, tc.prio)
			}
		})
	}
}

func TestFailedCallIsNotADetection(t *testing.T) {
	body := strings.Replace(rec("StopLogging", "cloudtrail.amazonaws.com", `{"name":"main"}`), `"eventType"`, `"errorCode":"AccessDenied","eventType"`, 1)
	e := one(t, body)
	if e.Type != "informational" || e.Labels["aws.error_code"] != "AccessDenied" {
		t.Fatalf("type %q labels %v", e.Type, e.Labels)
	}
}

func TestSourceAddressQuirks(t *testing.T) {
	for _, tc := range []struct{ src, ip, domain, label string }{
		{"211.9.016.253", "", "", "211.9.016.253"}, // anonymised, ambiguous: never an entity
		{"", "", "", ""},
		{"ec2.amazonaws.com", "", "ec2.amazonaws.com", ""},
		{"2001:db8::1", "2001:db8::1", "", ""},
	} {
		e := one(t, strings.Replace(rec("ListBuckets", "s3.amazonaws.com", "null"), "203.0.113.50", tc.src, 1))
		var ip, dom string
		if e.SrcEndpoint != nil {
			ip, dom = e.SrcEndpoint.IP, e.SrcEndpoint.Domain
		}
		if ip != tc.ip || dom != tc.domain || e.Labels["aws.source_ip_unparsed"] != tc.label {
			t.Errorf("%q: ip %q domain %q label %q", tc.src, ip, dom, e.Labels["aws.source_ip_unparsed"])
		}
	}
}

func TestErrorsNamePaths(t *testing.T) {
	for _, tc := range []struct{ body, field string }{
		{`[` + rec("ListBuckets", "s3.amazonaws.com", "null") + `,{"eventSource":"s3.amazonaws.com"}]`, "[1].eventName"},
		{`{"Records":[` + strings.Replace(rec("ListBuckets", "s3.amazonaws.com", "null"), `"eventTime":"2024-08-01T12:00:00Z"`, `"eventTime":"soon"`, 1) + `]}`, "Records[0].eventTime"},
		{`{"detail-type":"GuardDuty Finding","detail":{}}`, "detail-type"},
		{`{"detail-type":"AWS API Call via CloudTrail","detail":{"eventName":"X","eventSource":"s3.amazonaws.com","userIdentity":[]}}`, "detail.userIdentity"},
	} {
		_, err := New(nil).Parse([]byte(tc.body))
		var fe *event.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("error %v, want field %q", err, tc.field)
		}
	}
}
