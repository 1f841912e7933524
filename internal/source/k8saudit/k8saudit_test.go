package k8saudit

import (
	"errors"
	"strings"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

func audit(verb, user, objectRef, extra string) string {
	return `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"aaaaaaaa-0000-0000-0000-` + strings.Repeat("0", 12-len(verb)) + verb +
		`","stage":"ResponseComplete","requestURI":"/api/v1/x","verb":"` + verb + `","user":{"username":"` + user + `","groups":["system:authenticated"]},"sourceIPs":["10.0.0.9"],` +
		`"objectRef":` + objectRef + `,"responseStatus":{"code":200},"requestReceivedTimestamp":"2024-06-01T00:00:00.000001Z","stageTimestamp":"2024-06-01T00:00:00.1Z"` + extra + `}`
}

func parse(t *testing.T, body string) []event.Event {
	t.Helper()
	res, err := New(nil).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return res.Events
}

func TestShapes(t *testing.T) {
	a := audit("get", "alice", `{"resource":"secrets","namespace":"prod","name":"db"}`, "")
	b := audit("list", "bob", `{"resource":"pods","namespace":"prod"}`, "")
	for name, body := range map[string]string{
		"ndjson":    a + "\n" + b + "\n",
		"array":     "[" + a + "," + b + "]",
		"eventlist": `{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[` + a + "," + b + `]}`,
	} {
		t.Run(name, func(t *testing.T) {
			evs := parse(t, body)
			if len(evs) != 2 || evs[0].Rule != RuleSecretRead || evs[0].Priority != "P1" || evs[1].Type != "informational" {
				t.Fatalf("%d events: %+v", len(evs), evs)
			}
		})
	}
}

func TestSecretReadByControlPlaneIsInformational(t *testing.T) {
	e := parse(t, audit("get", "system:kube-controller-manager", `{"resource":"secrets","namespace":"kube-system","name":"x"}`, ""))[0]
	if e.Type != "informational" {
		t.Fatalf("type %q", e.Type)
	}
	e = parse(t, audit("get", "system:serviceaccount:prod:ci", `{"resource":"secrets","namespace":"prod","name":"x"}`, ""))[0]
	if e.Rule != RuleSecretRead || e.Kubernetes.ServiceAccount != "ci" || e.Actor.Type != "ServiceAccount" {
		t.Fatalf("rule %q k8s %+v", e.Rule, e.Kubernetes)
	}
}

func TestStagesShareIDAndFingerprint(t *testing.T) {
	started := strings.Replace(audit("create", "alice", `{"resource":"pods","namespace":"default","name":"web","subresource":"exec"}`, ""), "ResponseComplete", "ResponseStarted", 1)
	done := audit("create", "alice", `{"resource":"pods","namespace":"default","name":"web","subresource":"exec"}`, "")
	a, b := parse(t, started)[0], parse(t, done)[0]
	if a.ID != b.ID || a.ComputeFingerprint() != b.ComputeFingerprint() || a.Rule != RuleExec {
		t.Fatalf("ids %q %q rule %q", a.ID, b.ID, a.Rule)
	}
}

func TestAuthFailedAndForbidden(t *testing.T) {
	e := parse(t, strings.Replace(audit("get", "system:anonymous", `{"resource":"secrets","namespace":"prod","name":"db"}`, ""), `"code":200`, `"code":401`, 1))[0]
	if e.Type != "failed_authentication" {
		t.Fatalf("type %q", e.Type)
	}
	e = parse(t, strings.Replace(audit("get", "mallory", `{"resource":"secrets","namespace":"prod","name":"db"}`, ""), `"code":200`, `"code":403`, 1))[0]
	if e.Type != "informational" {
		t.Fatalf("forbidden read: type %q", e.Type)
	}
}

func TestErrorsNamePaths(t *testing.T) {
	for _, tc := range []struct{ body, field string }{
		{`{"kind":"Event","apiVersion":"v1","verb":"get","involvedObject":{}}`, "apiVersion"},
		{`{"kind":"Pod","verb":"get"}`, "kind"},
		{`{"kind":"EventList","items":[{"verb":"get"},{"auditID":"x"}]}`, "items[1].verb"},
		{audit("get", "a", `{"resource":"pods"}`, "") + "\n" + `{"verb":"get","sourceIPs":"1.2.3.4"}`, "[1].sourceIPs"},
	} {
		_, err := New(nil).Parse([]byte(tc.body))
		var fe *event.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: error %v, want field %q", tc.body, err, tc.field)
		}
	}
}
