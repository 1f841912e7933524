package source_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/source"
)

// sampleCase is what one sample file must parse into.
type sampleCase struct {
	file     string // dir/file under samples
	parser   string
	events   int
	skipped  int
	typ      string   // type of every event
	priority string   // priority of every event ("" = not checked)
	idPrefix string   // every event's ID starts with this ("" = ID must be empty)
	entities []string // entities of the first event that must be present
}

var sampleCases = []sampleCase{
	// Falco
	{"falco/falco-talon-examples_test-networkpolicy-fd-rip.json", "falco", 1, 0, "suspicious_connection", "P0", "", []string{"ip:8.8.8.8", "namespace:default", "pod:default/static-web"}},
	{"falco/falco-website_contact-k8s-api-server-from-container.json", "falco", 1, 0, "suspicious_connection", "P1", "", []string{"ip:172.17.0.9", "ip:10.96.0.1", "pod:openfaas-fn/falco-pod-delete-7dc9f5fbb8-gbfk7"}},
	{"falco/falco-website_internal-metrics-snapshot.json", "falco", 0, 1, "", "", "", nil},
	{"falco/falco-website_k8saudit-eks_attach-exec-pod.json", "falco", 1, 0, "execution", "P1", "", []string{"pod:default/kubecon", "user:kubernetes-admin"}},
	{"falco/falco-website_k8saudit-ovh_user-not-in-allowed-list.json", "falco", 1, 0, "policy_violation", "P2", "", []string{"user:yacht"}},
	{"falco/falco-website_terminal-shell-in-container.json", "falco", 1, 0, "execution", "P0", "", []string{"namespace:default", "pod:default/kubecon"}},
	{"falco/falcosidekick-readme_write-below-binary-dir.json", "falco", 1, 0, "persistence", "P0", "", nil},
	{"falco/falcosidekick-test_syscall-event-drop.json", "falco", 0, 1, "", "", "", nil},
	// GuardDuty
	{"guardduty/aws-samples-automated-response_finding_ec2-network-connection.json", "guardduty", 1, 0, "suspicious_connection", "P1", "gd-16afba5c5c43e07c9e3e5e2e544e95df", []string{"instance:i-05746eb48123455e0", "account:123456789012"}},
	{"guardduty/aws-samples-automated-response_finding_iam-maliciousipcaller.json", "guardduty", 1, 0, "reconnaissance", "P2", "gd-30bf285e52a1e405084ff6ec28e06e17", []string{"ip:198.51.100.0", "access_key:GeneratedFindingAccessKeyId", "user:GeneratedFindingUserName"}},
	{"guardduty/aws-samples-automated-response_finding_s3.json", "guardduty", 1, 0, "reconnaissance", "P2", "gd-2cbf285e52a6e74ff96f4cb3cf93296d", []string{"ip:198.51.100.0", "access_key:GeneratedFindingAccessKeyId"}},
	{"guardduty/aws-samples-waf-acl_detail-only_ec2-ssh-bruteforce.json", "guardduty", 1, 0, "brute_force", "P1", "gd-02be5693b63eea1d67e6f321c6aee4f3", []string{"ip:198.51.100.0", "ip:10.0.0.1", "instance:i-99999999"}},
	{"guardduty/cloud-custodian_eventbridge_ec2-c2-dns-request.json", "guardduty", 1, 0, "command_and_control", "P0", "gd-b4b01b60fc24a199139f8f5f490edd81", []string{"instance:i-99999999", "account:883606788610"}},
	{"guardduty/cloud-custodian_eventbridge_iam-accesskey-tor-api-call.json", "guardduty", 1, 0, "credential_compromise", "P0", "gd-36b01b60fc22bb4edb19d62d9899e953", []string{"ip:198.51.100.0", "access_key:GeneratedFindingAccessKeyId", "account:883606788610"}},
	// CloudTrail
	{"cloudtrail/awsdocs-cloudtrail_consolelogin-failure-iam-user.json", "cloudtrail", 1, 0, "failed_authentication", "P1", "ct-d38ce1b3-4575-4cb8-a632-611b8243bfc3", []string{"ip:192.0.2.0", "user:anaya", "account:111122223333"}},
	{"cloudtrail/awsdocs-cloudtrail_consolelogin-failure-root.json", "cloudtrail", 1, 0, "failed_authentication", "P1", "ct-a4fbbe77-91a0-4238-804a-64314184edb6", []string{"ip:192.0.2.0", "user:root"}},
	{"cloudtrail/awsdocs-s3_records_listbuckets-putbucketacl-getbucketversioning.json", "cloudtrail", 3, 0, "informational", "P3", "ct-", []string{"ip:127.0.0.1", "access_key:AKIAIOSFODNN7EXAMPLE", "user:myUserName"}},
	{"cloudtrail/cloud-custodian_eventbridge_aws-api-call-via-cloudtrail_createbucket.json", "cloudtrail", 1, 0, "informational", "P3", "ct-80486b96-9f31-441e-b4e2-b85a4e520a07", []string{"ip:101.244.214.105", "role:Sandbox_Dev", "account:101010101111"}},
	{"cloudtrail/stratus-red-team_aws.defense-evasion.cloudtrail-stop.json", "cloudtrail", 1, 0, "defense_evasion", "P0", "ct-10163ed2-2253-469d-a5ee-cbc6651f8934", []string{"ip:86.245.153.234", "user:christophe", "access_key:AKIAGGWFBBHBE7D3M9WI"}},
	{"cloudtrail/stratus-red-team_aws.exfiltration.ec2-security-group-open-port-22-ingress.json", "cloudtrail", 1, 0, "policy_violation", "P1", "ct-9fd68588-ecbf-4528-a345-199fa6bb0821", []string{"ip:253.243.215.253", "user:christophe"}},
	{"cloudtrail/stratus-red-team_aws.initial-access.console-login-without-mfa.json", "cloudtrail", 1, 0, "policy_violation", "P2", "ct-865d9377-9c6b-4fd7-8aad-725e95f6a140", []string{"user:stratus-red-team-nmfalu-jfzdtsvchl", "account:562283505220"}},
	{"cloudtrail/stratus-red-team_aws.persistence.iam-backdoor-user.json", "cloudtrail", 1, 0, "persistence", "P0", "ct-c64c4ded-ef03-4e5c-81eb-153b118d72f2", []string{"user:christophe", "access_key:AKIA30BEZSJBVKOFKZW0", "account:946986569305"}},
	// Alertmanager
	{"alertmanager/alerta-test_heartbeat_v4_truncatedalerts.json", "alertmanager", 1, 0, "informational", "P3", "am-", nil},
	{"alertmanager/alerta-test_prometheus_v4_alert.json", "alertmanager", 1, 0, "anomaly", "P2", "am-", nil},
	{"alertmanager/prometheus-msteams-example_grafana-inspired-payload.json", "alertmanager", 3, 0, "anomaly", "P2", "am-", nil},
	{"alertmanager/prometheus-msteams-testdata_prom_post_request.json", "alertmanager", 1, 0, "anomaly", "P2", "am-", []string{"host:instance-with-hyphen_and_underscore"}},
	{"alertmanager/zulip_alert_firing-two-alerts.json", "alertmanager", 2, 0, "anomaly", "P2", "am-", []string{"host:andromeda"}},
	{"alertmanager/zulip_single_alert_no_generatorurl.json", "alertmanager", 1, 0, "anomaly", "P2", "am-", []string{"host:andromeda"}},
	{"alertmanager/zulip_single_alert_resolved.json", "alertmanager", 1, 0, "anomaly", "P2", "am-", []string{"host:andromeda"}},
	// CrowdSec
	{"crowdsec/crowdsec-apiclient-test_lapi-decisions-stream-response.json", "crowdsec", 1, 0, "suspicious_connection", "P1", "cs-decision-4", []string{"ip:1.2.3.4"}},
	{"crowdsec/crowdsec-apiclient-test_lapi-get-alert-by-id-response.json", "crowdsec", 1, 0, "brute_force", "P1", "cs-1", []string{"ip:1.1.1.172"}},
	{"crowdsec/crowdsec-apiclient-test_lapi-get-alerts-response.json", "crowdsec", 1, 0, "brute_force", "P1", "cs-1", []string{"ip:1.1.1.172"}},
	{"crowdsec/crowdsec-test_agent-push-alert_ssh-bf.json", "crowdsec", 1, 0, "brute_force", "P1", "", []string{"ip:91.121.79.195"}},
	{"crowdsec/crowdsec-test_lapi-alert-with-decisions_sample.json", "crowdsec", 1, 0, "suspicious_connection", "P1", "cs-42", []string{"ip:127.0.0.1"}},
	{"crowdsec/crowdsec-test_lapi-alerts_stream-fixture.json", "crowdsec", 3, 0, "", "P1", "cs-4", []string{"ip:127.0.0.1"}},
	// Kubernetes audit
	{"k8s-audit/falco-test_anonymous_creates_namespace_foo.json", "k8saudit", 1, 0, "unauthorized_access", "P0", "k8s-841d3e6d-90d2-43df-8da4-684738bee3d5", []string{"ip:192.168.99.1", "user:system:anonymous"}},
	{"k8s-audit/falco-test_attach_cluster_admin_role.json", "k8saudit", 1, 0, "privilege_escalation", "P0", "k8s-c97244c7-4aec-4714-946a-8204d00ecdca", []string{"user:minikube-user"}},
	{"k8s-audit/falco-test_attach_pod.json", "k8saudit", 1, 0, "execution", "P1", "k8s-14933b4e-7b09-4964-af09-b7987367e1ba", []string{"pod:default/nginx-deployment-7998647bdf-phvq7", "namespace:default", "user:minikube-user"}},
	{"k8s-audit/falco-test_create_cluster_role_wildcard_verbs.json", "k8saudit", 1, 0, "policy_violation", "P2", "k8s-0dc97dd4-aa34-4071-b8cc-e1a1036c9ae9", []string{"user:minikube-user"}},
	{"k8s-audit/falco-test_create_kube_system_secret.json", "k8saudit", 1, 0, "informational", "P3", "k8s-263db4e4-f0bb-41b4-913d-c03815f49be5", []string{"namespace:kube-system", "user:admin"}},
	{"k8s-audit/falco-test_create_nginx_pod_privileged.json", "k8saudit", 1, 0, "privilege_escalation", "P1", "k8s-a362d22b-db3c-4590-9505-23782f12925f", []string{"pod:default/nginx-deployment-5cdcc99dbf-rgw6z", "ip:::1"}},
	{"k8s-audit/falco-test_exec_pod.json", "k8saudit", 1, 0, "execution", "P1", "k8s-ca1ed9f4-7bf4-4c85-81a8-1b11253d1ba6", []string{"pod:default/nginx-deployment-7998647bdf-phvq7", "ip:192.168.99.1"}},
}

// repoRoot walks up from the working directory to the directory holding go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// sharedSamples is ../shared/samples next to the repository; missing, it
// skips, or fails under QUELL_REQUIRE_INTEGRATION=1.
func sharedSamples(t testing.TB) string {
	dir := filepath.Join(repoRoot(t), "..", "shared", "samples")
	if _, err := os.Stat(dir); err != nil {
		if os.Getenv("QUELL_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("shared samples missing at %s (QUELL_REQUIRE_INTEGRATION=1)", dir)
		}
		t.Skipf("shared samples missing at %s", dir)
	}
	return dir
}

func newRegistry(t testing.TB) *source.Registry {
	t.Helper()
	r, err := source.New(source.DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSamplesTestdata(t *testing.T) { runSamples(t, "testdata/samples") }

func TestSamplesShared(t *testing.T) { runSamples(t, sharedSamples(t)) }

// TestSamplesAllCovered fails when a sample file has no expectation, so a
// new sample cannot slip in untested.
func TestSamplesAllCovered(t *testing.T) {
	for _, root := range []string{"testdata/samples"} {
		files, err := filepath.Glob(filepath.Join(root, "*", "*.json"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no samples under %s: %v", root, err)
		}
		for _, f := range files {
			rel, _ := filepath.Rel(root, f)
			if !slices.ContainsFunc(sampleCases, func(c sampleCase) bool { return c.file == rel }) {
				t.Errorf("sample %s has no expectation in sampleCases", rel)
			}
		}
	}
}

func runSamples(t *testing.T, root string) {
	r := newRegistry(t)
	for _, tc := range sampleCases {
		t.Run(tc.file, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join(root, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			res, err := r.Parse(context.Background(), tc.parser, body)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if len(res.Events) != tc.events || len(res.Skipped) != tc.skipped {
				t.Fatalf("got %d events, %d skipped; want %d, %d (skipped: %v)", len(res.Events), len(res.Skipped), tc.events, tc.skipped, res.Skipped)
			}
			for i, e := range res.Events {
				if tc.typ != "" && e.Type != tc.typ {
					t.Errorf("event %d: type %q, want %q", i, e.Type, tc.typ)
				}
				if tc.priority != "" && e.Priority != tc.priority {
					t.Errorf("event %d: priority %q, want %q", i, e.Priority, tc.priority)
				}
				if tc.idPrefix == "" && e.ID != "" {
					t.Errorf("event %d: ID %q, want none", i, e.ID)
				}
				if len(e.ID) < len(tc.idPrefix) || e.ID[:len(tc.idPrefix)] != tc.idPrefix {
					t.Errorf("event %d: ID %q, want prefix %q", i, e.ID, tc.idPrefix)
				}
				if e.Source != tc.parser {
					t.Errorf("event %d: source %q", i, e.Source)
				}
				if e.Time.IsZero() && tc.parser != "crowdsec" {
					t.Errorf("event %d: no time", i)
				}
				if e.Rule == "" || e.SeverityID < 0 || e.SeverityID > 6 {
					t.Errorf("event %d: rule %q severity_id %d", i, e.Rule, e.SeverityID)
				}
				if len(e.Raw) == 0 {
					t.Errorf("event %d: no raw", i)
				}
				c := e
				c.Normalize(time.Now())
				if err := c.Validate(); err != nil {
					t.Errorf("event %d: invalid after Normalize: %v", i, err)
				}
			}
			if len(tc.entities) > 0 {
				have := map[string]bool{}
				for _, en := range res.Events[0].Entities() {
					have[en.String()] = true
				}
				for _, want := range tc.entities {
					if !have[want] {
						t.Errorf("entity %s missing; have %v", want, res.Events[0].Entities())
					}
				}
			}
		})
	}
}

func TestRegistryNamesAndUnknown(t *testing.T) {
	r := newRegistry(t)
	want := []string{"alertmanager", "cloudtrail", "crowdsec", "falco", "generic", "guardduty", "k8saudit"}
	if got := r.Names(); !slices.Equal(got, want) {
		t.Fatalf("names %v, want %v", got, want)
	}
	if !r.Known("falco") || r.Known("nope") {
		t.Fatal("Known")
	}
	if _, err := r.Parse(context.Background(), "nope", []byte(`{}`)); err == nil {
		t.Fatal("unknown source accepted")
	}
	_, err := r.Parse(context.Background(), "falco", []byte(`{"rule":"x","time":"yesterday"}`))
	fe, ok := source.FieldError(err)
	if !ok || fe.Field != "time" {
		t.Fatalf("want FieldError on time, got %v", err)
	}
}

var _ = event.StatusResolved
