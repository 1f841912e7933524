package crowdsec

import (
	"errors"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/event"
)

func parse(t *testing.T, body string) []event.Event {
	t.Helper()
	res, err := New(nil).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return res.Events
}

// The notification plugin's {{.|toJson}}: a list of models.Alert.
const notification = `[{"uuid":"3f1c2e9a-5b7d-4c1e-8f2a-9d0b1c2d3e4f","capacity":5,"decisions":[{"duration":"4h","origin":"crowdsec","scenario":"crowdsecurity/ssh-slow-bf","scope":"Ip","type":"ban","value":"192.0.2.44","uuid":"d-1"}],
"events":[{"meta":[{"key":"target_user","value":"admin"},{"key":"service","value":"ssh"}],"timestamp":"2024-05-01T10:00:00Z"}],"events_count":10,"labels":null,"leakspeed":"60s",
"message":"Ip 192.0.2.44 performed 'crowdsecurity/ssh-slow-bf' (10 events over 5m) at 2024-05-01 10:05:00 +0000 UTC","scenario":"crowdsecurity/ssh-slow-bf","scenario_hash":"x","scenario_version":"0.2","simulated":false,
"source":{"as_name":"EXAMPLE","as_number":"64496","cn":"NL","ip":"192.0.2.44","range":"192.0.2.0/24","scope":"Ip","value":"192.0.2.44"},
"start_at":"2024-05-01T10:00:00Z","stop_at":"2024-05-01T10:05:00Z"},
{"capacity":0,"decisions":[],"events":[],"events_count":1,"scenario":"crowdsecurity/http-path-traversal-probing","simulated":true,"source":{"scope":"Range","value":"198.51.100.0/24"},"start_at":"2024-05-01T11:00:00Z"}]`

func TestNotificationPlugin(t *testing.T) {
	evs := parse(t, notification)
	if len(evs) != 2 {
		t.Fatalf("%d events", len(evs))
	}
	e := evs[0]
	if e.ID != "cs-3f1c2e9a-5b7d-4c1e-8f2a-9d0b1c2d3e4f" || e.Type != "brute_force" || e.Priority != "P1" || e.Count != 10 {
		t.Fatalf("id %q type %q prio %q count %d", e.ID, e.Type, e.Priority, e.Count)
	}
	if e.SrcEndpoint.IP != "192.0.2.44" || e.SrcEndpoint.ASN != 64496 || e.SrcEndpoint.Country != "NL" || e.Labels["crowdsec.meta.target_user"] != "admin" || e.Labels["crowdsec.decisions"] != "ban:4h" {
		t.Fatalf("src %+v labels %v", e.SrcEndpoint, e.Labels)
	}
	r := evs[1]
	if r.Type != "exploitation" || r.SrcEndpoint != nil || r.SeverityID != 2 {
		t.Fatalf("type %q src %+v sev %d", r.Type, r.SrcEndpoint, r.SeverityID)
	}
	hasSim := false
	for _, tg := range r.Tags {
		hasSim = hasSim || tg == "simulated"
	}
	if !hasSim || r.Observables[0] != (event.Observable{Type: "cidr", Value: "198.51.100.0/24"}) {
		t.Fatalf("tags %v observables %v", r.Tags, r.Observables)
	}
}

func TestCapitalEventsAndGoTimeString(t *testing.T) {
	body := `{"id":7,"scenario":"crowdsecurity/ssh-bf","Events":[{"meta":[{"key":"target_user","value":"root"}],"timestamp":"2020-11-28 10:20:46 +0000 UTC"}],
"source":{"scope":"Ip","value":"1.1.1.172","ip":"1.1.1.172"},"start_at":"2020-11-28 10:20:46.842701127 +0100 +0100","stop_at":"2020-11-28 10:20:46.845621385 +0100 CET m=+5.903899761"}`
	e := parse(t, body)[0]
	want := time.Date(2020, 11, 28, 9, 20, 46, 842701127, time.UTC)
	if !e.Time.Equal(want) || e.Labels["crowdsec.meta.target_user"] != "root" || e.ID != "cs-7" {
		t.Fatalf("time %v labels %v id %q", e.Time, e.Labels, e.ID)
	}
}

func TestDecisionStream(t *testing.T) {
	body := `{"new":[{"duration":"3h59m","id":4,"origin":"cscli","scenario":"manual 'ban' from 'machine1'","scope":"Ip","type":"ban","value":"1.2.3.4"}],
"deleted":[{"duration":"-1s","id":3,"origin":"crowdsec","scenario":"crowdsecurity/ssh-bf","scope":"Ip","type":"ban","value":"5.6.7.8"}]}`
	evs := parse(t, body)
	if len(evs) != 2 {
		t.Fatalf("%d events", len(evs))
	}
	if evs[0].ID != "cs-decision-4" || evs[0].Rule != "crowdsec/manual-ban" || evs[0].Status != "" || evs[0].SrcEndpoint.IP != "1.2.3.4" {
		t.Fatalf("new: %+v", evs[0])
	}
	if evs[1].ID != "cs-decision-3" || evs[1].Status != event.StatusResolved || evs[1].Labels["resolves"] != "cs-decision-3" || evs[1].Type != "brute_force" {
		t.Fatalf("deleted: %+v", evs[1])
	}
}

func TestScenarioTypes(t *testing.T) {
	for s, want := range map[string]string{
		"crowdsecurity/ssh-bf":                    "brute_force",
		"crowdsecurity/http_bf":                   "brute_force",
		"crowdsecurity/windows-bf":                "brute_force",
		"crowdsecurity/http-bf-wordpress_bf":      "brute_force",
		"crowdsecurity/ddos":                      "denial_of_service",
		"crowdsecurity/http-probing":              "reconnaissance",
		"crowdsecurity/http-sensitive-files":      "reconnaissance",
		"crowdsecurity/iptables-scan-multi_ports": "port_scan",
		"crowdsecurity/CVE-2021-41773":            "exploitation",
		"crowdsecurity/http-sqli-probing":         "exploitation",
		"crowdsecurity/test":                      "suspicious_connection",
	} {
		if got := scenarioType(s); got != want {
			t.Errorf("%s: %s, want %s", s, got, want)
		}
	}
}

func TestErrorsNamePaths(t *testing.T) {
	for _, tc := range []struct{ body, field string }{
		{`[{"scenario":"a"},{"message":"no scenario"}]`, "[1].scenario"},
		{`[{"scenario":"a","start_at":"whenever"}]`, "[0].start_at"},
		{`{"new":[{"type":"ban"}]}`, "new[0].value"},
		{`{"scenario":"a","decisions":[{"id":"x1"}]}`, "decisions.id"},
	} {
		_, err := New(nil).Parse([]byte(tc.body))
		var fe *event.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: error %v, want field %q", tc.body, err, tc.field)
		}
	}
}
