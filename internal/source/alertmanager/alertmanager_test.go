package alertmanager

import (
	"errors"
	"strings"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

func webhook(status, alerts string) string {
	return `{"version":"4","groupKey":"{}:{alertname=\"X\"}","status":"` + status + `","receiver":"quell","groupLabels":{},"commonLabels":{},"externalURL":"http://am:9093","alerts":[` + alerts + `]}`
}

const firing = `{"status":"firing","labels":{"alertname":"SSHBruteForce","severity":"critical","instance":"10.1.2.3:9100","src_ip":"203.0.113.9","namespace":"prod","pod":"api-0"},"annotations":{"summary":"Many failed SSH logins"},"startsAt":"2024-03-01T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"abc123"}`

func parse(t *testing.T, body string) []event.Event {
	t.Helper()
	res, err := New(nil).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return res.Events
}

func TestFiringAndResolvedShareID(t *testing.T) {
	f := parse(t, webhook("firing", firing))[0]
	resolvedAlert := strings.Replace(firing, `"status":"firing"`, `"status":"resolved"`, 1) // endsAt still zero: a real quirk
	r := parse(t, webhook("resolved", resolvedAlert))[0]
	if f.ID == "" || f.ID != r.ID || f.Status != "" || r.Status != event.StatusResolved || r.Labels["resolves"] != f.ID {
		t.Fatalf("firing %q %q, resolved %q %q labels %v", f.ID, f.Status, r.ID, r.Status, r.Labels)
	}
	if f.Type != "brute_force" || f.Priority != "P0" || f.SeverityID != 5 {
		t.Fatalf("type %q prio %q sev %d", f.Type, f.Priority, f.SeverityID)
	}
	if f.SrcEndpoint.IP != "203.0.113.9" || f.DstEndpoint.IP != "10.1.2.3" || f.DstEndpoint.Port != 9100 || f.Kubernetes.Pod != "api-0" {
		t.Fatalf("src %+v dst %+v k8s %+v", f.SrcEndpoint, f.DstEndpoint, f.Kubernetes)
	}
	// A new firing of the same alert (new startsAt) is a new event.
	again := parse(t, webhook("firing", strings.Replace(firing, "10:00:00Z", "11:00:00Z", 1)))[0]
	if again.ID == f.ID {
		t.Fatal("a later firing reused the ID")
	}
}

func TestNoFingerprintNoStatus(t *testing.T) {
	a := `{"labels":{"alertname":"high_memory_load","instance":"web-1"},"annotations":{},"startsAt":"2018-03-07T06:33:21.873077559-05:00","endsAt":"0001-01-01T00:00:00Z"}`
	e1 := parse(t, webhook("firing", a))[0]
	e2 := parse(t, webhook("firing", a))[0]
	other := parse(t, webhook("firing", strings.Replace(a, "web-1", "web-2", 1)))[0]
	if e1.ID != e2.ID || e1.ID == other.ID || e1.Status != "" {
		t.Fatalf("ids %q %q %q status %q", e1.ID, e2.ID, other.ID, e1.Status)
	}
	if e1.DstEndpoint.Hostname != "web-1" {
		t.Fatalf("dst %+v", e1.DstEndpoint)
	}
}

func TestLabelsThatAreNotEntities(t *testing.T) {
	a := `{"status":"firing","labels":{"alertname":"X","namespace":"whatever/promstack","quell_type":"dns_tunneling"},"startsAt":"2020-10-11T14:34:11Z"}`
	e := parse(t, webhook("firing", a))[0]
	if e.Kubernetes != nil || e.Labels["namespace"] != "whatever/promstack" {
		t.Fatalf("k8s %+v labels %v", e.Kubernetes, e.Labels)
	}
	if e.Type != "dns_tunneling" || e.Priority != "P0" {
		t.Fatalf("type %q prio %q", e.Type, e.Priority)
	}
}

func TestTruncatedAlertsReported(t *testing.T) {
	body := strings.Replace(webhook("firing", firing), `"version":"4"`, `"version":"4","truncatedAlerts":3`, 1)
	res, err := New(nil).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Events) != 1 || len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0].Reason, "truncated 3") {
		t.Fatalf("%d events, skipped %v", len(res.Events), res.Skipped)
	}
}

func TestErrorsNamePaths(t *testing.T) {
	for _, tc := range []struct{ body, field string }{
		{strings.Replace(webhook("firing", firing), `"version":"4"`, `"version":"3"`, 1), "version"},
		{webhook("firing", firing+`,{"labels":{"alertname":"y"},"startsAt":"later"}`), "alerts[1].startsAt"},
		{webhook("firing", `{"labels":{},"startsAt":"2024-01-01T00:00:00Z"}`), "alerts[0].labels"},
		{webhook("firing", `{"labels":{"a":1},"startsAt":"2024-01-01T00:00:00Z"}`), "alerts[0].labels"},
		{`{"version":"4"}`, "alerts"},
		{webhook("firing", strings.Replace(firing, `"status":"firing"`, `"status":"pending"`, 1)), "alerts[0].status"},
	} {
		_, err := New(nil).Parse([]byte(tc.body))
		var fe *event.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("error %v, want field %q", err, tc.field)
		}
	}
}
