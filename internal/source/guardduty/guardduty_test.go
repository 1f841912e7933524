package guardduty

import (
	"errors"
	"strings"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

const sampleFinding = `{"schemaVersion":"2.0","accountId":"123456789012","region":"us-east-1","id":"abc123","type":"UnauthorizedAccess:EC2/SSHBruteForce",
"resource":{"resourceType":"Instance","instanceDetails":{"instanceId":"i-0123456789abcdef0","networkInterfaces":[{"privateIpAddress":"10.0.0.5"}]}},
"service":{"action":{"actionType":"NETWORK_CONNECTION","networkConnectionAction":{"connectionDirection":"INBOUND","remoteIpDetails":{"ipAddressV4":"203.0.113.7","organization":{"asn":"64500","asnOrg":"Example"}},"remotePortDetails":{"port":"40000"},"localPortDetails":{"port":22},"protocol":"TCP","blocked":false}},
"eventFirstSeen":"2024-01-01T00:00:00Z","eventLastSeen":"2024-01-01T01:00:00Z","count":COUNT},
"severity":8.0,"createdAt":"2024-01-01T00:00:01Z","updatedAt":"2024-01-01T01:00:01Z","title":"203.0.113.7 is performing SSH brute force attacks"}`

func withCount(n string) string { return strings.Replace(sampleFinding, "COUNT", n, 1) }

func parse(t *testing.T, body string) []event.Event {
	t.Helper()
	res, err := New(nil).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return res.Events
}

func TestShapesGiveTheSameEvent(t *testing.T) {
	f := withCount("3")
	shapes := map[string]string{
		"bare":        f,
		"eventbridge": `{"version":"0","id":"x","detail-type":"GuardDuty Finding","source":"aws.guardduty","account":"123456789012","time":"2024-01-01T01:00:02Z","region":"us-east-1","resources":[],"detail":` + f + `}`,
		"detail only": `{"region":"us-east-1","detail":` + f + `}`,
		"findings":    `{"Findings":[` + f + `]}`,
		"array":       `[` + f + `]`,
	}
	for name, body := range shapes {
		t.Run(name, func(t *testing.T) {
			evs := parse(t, body)
			if len(evs) != 1 {
				t.Fatalf("%d events", len(evs))
			}
			e := evs[0]
			if e.ID != "gd-abc123" || e.Count != 3 || e.Type != "brute_force" || e.SeverityID != 4 || e.Priority != "P1" {
				t.Fatalf("id %q count %d type %q sev %d prio %q", e.ID, e.Count, e.Type, e.SeverityID, e.Priority)
			}
			if e.SrcEndpoint.IP != "203.0.113.7" || e.SrcEndpoint.Port != 40000 || e.SrcEndpoint.ASN != 64500 ||
				e.DstEndpoint.IP != "10.0.0.5" || e.DstEndpoint.Port != 22 || e.Cloud.InstanceID != "i-0123456789abcdef0" {
				t.Fatalf("src %+v dst %+v cloud %+v", e.SrcEndpoint, e.DstEndpoint, e.Cloud)
			}
			if !e.Time.Equal(e.Time) || e.Time.Format("15:04") != "01:00" {
				t.Fatalf("time %v, want eventLastSeen", e.Time)
			}
		})
	}
}

// A finding re-sent with a growing count is one event updated: same ID,
// higher Count.
func TestRepeatedFindingKeepsID(t *testing.T) {
	a, b := parse(t, withCount("1"))[0], parse(t, withCount("17"))[0]
	if a.ID != b.ID || a.Count != 1 || b.Count != 17 {
		t.Fatalf("ids %q %q counts %d %d", a.ID, b.ID, a.Count, b.Count)
	}
}

func TestErrorsNamePaths(t *testing.T) {
	for _, tc := range []struct{ body, field string }{
		{`{"detail-type":"GuardDuty Finding","detail":` + withCount(`"abc"`) + `}`, "detail.service.count"},
		{`{"detail-type":"EC2 Instance State-change Notification","detail":{}}`, "detail-type"},
		{`[` + withCount("1") + `,` + strings.Replace(withCount("1"), `"severity":8.0`, `"severity":"high"`, 1) + `]`, "[1].severity"},
		{`{"detail":{"type":"x"}}`, "detail.id"},
		{`{"id":"a/b","type":"x"}`, "id"},
		{strings.Replace(withCount("1"), `"severity":8.0`, `"severity":11`, 1), "severity"},
	} {
		_, err := New(nil).Parse([]byte(tc.body))
		var fe *event.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("error %v, want field %q", err, tc.field)
		}
	}
}

func TestPortProbe(t *testing.T) {
	body := `{"id":"pp1","type":"Recon:EC2/PortProbeUnprotectedPort","accountId":"123456789012","region":"eu-west-1","severity":2,
"resource":{"resourceType":"Instance","instanceDetails":{"instanceId":"i-1"}},
"service":{"count":4,"eventLastSeen":"2024-02-02T00:00:00Z","action":{"actionType":"PORT_PROBE","portProbeAction":{"blocked":false,"portProbeDetails":[
{"localPortDetails":{"port":3389,"portName":"RDP"},"remoteIpDetails":{"ipAddressV4":"198.51.100.9","organization":{"asn":-1}}},
{"localPortDetails":{"port":22},"remoteIpDetails":{"ipAddressV4":"198.51.100.10"}}]}}}}`
	e := parse(t, body)[0]
	if e.Type != "port_scan" || e.Priority != "P2" || e.SeverityID != 2 || e.SrcEndpoint.IP != "198.51.100.9" || e.DstEndpoint.Port != 3389 || e.Count != 4 {
		t.Fatalf("%+v src %+v dst %+v", e, e.SrcEndpoint, e.DstEndpoint)
	}
	var ips int
	for _, o := range e.Observables {
		if o.Type == "ip" {
			ips++
		}
	}
	if ips != 2 {
		t.Fatalf("observables %v: want both probing addresses", e.Observables)
	}
}

func TestSeverityBands(t *testing.T) {
	for _, tc := range []struct {
		s    float64
		want int
	}{{0, 0}, {1.0, 2}, {3.9, 2}, {4.0, 3}, {6.9, 3}, {7.0, 4}, {8.9, 4}, {9.0, 5}, {10, 5}} {
		if got := SeverityID(tc.s); got != tc.want {
			t.Errorf("%v: %d, want %d", tc.s, got, tc.want)
		}
	}
}

func TestTypeOf(t *testing.T) {
	for _, tc := range []struct{ typ, action, want string }{
		{"Trojan:EC2/DNSDataExfiltration", "", "dns_tunneling"},
		{"UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS", "", "credential_compromise"},
		{"CryptoCurrency:EC2/BitcoinTool.B!DNS", "", "crypto_mining"},
		{"Impact:EC2/PortSweep", "", "port_scan"},
		{"Stealth:IAMUser/CloudTrailLoggingDisabled", "", "defense_evasion"},
		{"Policy:IAMUser/RootCredentialUsage", "", "policy_violation"},
		{"Exfiltration:S3/AnomalousBehavior", "", "data_exfiltration"},
		{"PrivilegeEscalation:Kubernetes/PrivilegedContainer", "", "privilege_escalation"},
		{"UnauthorizedAccess:EC2/TorClient", "", "suspicious_connection"},
		{"Backdoor:EC2/DenialOfService.Tcp", "", "denial_of_service"},
		{"Execution:EC2/MaliciousFile", "", "malware"},
		{"Canary:EC2/Stateless.IntegTest", "NETWORK_CONNECTION", "suspicious_connection"},
		{"Unknown:X/Y", "AWS_API_CALL", "anomaly"},
	} {
		if got := TypeOf(tc.typ, tc.action); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.typ, got, tc.want)
		}
	}
}

func TestRuntimeMonitoringFinding(t *testing.T) {
	body := `{"id":"rt1","type":"CryptoCurrency:Runtime/BitcoinTool.B","accountId":"123456789012","region":"us-east-1","severity":8,
"resource":{"resourceType":"EKSCluster","eksClusterDetails":{"name":"prod"},"kubernetesDetails":{"kubernetesWorkloadDetails":{"name":"miner-7f","type":"pods","namespace":"shop","containers":[{"name":"app","image":"evil:latest"}]}}},
"service":{"count":1,"eventLastSeen":"2024-03-03T00:00:00Z","runtimeDetails":{"process":{"name":"xmrig","executablePath":"/tmp/xmrig","pid":4242,"lineage":[{"name":"sh"}]}}}}`
	e := parse(t, body)[0]
	if e.Type != "crypto_mining" || e.Priority != "P0" || e.Kubernetes.Pod != "miner-7f" || e.Kubernetes.Namespace != "shop" || e.Kubernetes.Cluster != "prod" ||
		e.Process.Name != "xmrig" || e.Process.PID != 4242 || e.Process.Parent != "sh" {
		t.Fatalf("%+v k8s %+v proc %+v", e, e.Kubernetes, e.Process)
	}
}
