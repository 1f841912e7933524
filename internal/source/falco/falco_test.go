package falco

import (
	"bytes"
	"errors"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

func parse1(t *testing.T, body string) event.Event {
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

func TestQuirks(t *testing.T) {
	t.Run("capitalised Rule key and string port", func(t *testing.T) {
		e := parse1(t, `{"output":"Test","priority":"Critical","Rule":"Test NetworkPolicy","time":"2019-05-17T15:31:56.746609046Z","output_fields":{"fd.rip":"8.8.8.8","fd.rport":"8888"}}`)
		if e.Rule != "Test NetworkPolicy" || e.DstEndpoint == nil || e.DstEndpoint.IP != "8.8.8.8" || e.DstEndpoint.Port != 8888 {
			t.Fatalf("rule %q dst %+v", e.Rule, e.DstEndpoint)
		}
	})
	t.Run("connection tuple in fd.name", func(t *testing.T) {
		e := parse1(t, `{"rule":"Contact K8S API Server From Container","priority":"Notice","time":"2021-04-10T19:27:21Z","output_fields":{"fd.name":"172.17.0.9:43812->10.96.0.1:443"}}`)
		if e.SrcEndpoint.IP != "172.17.0.9" || e.SrcEndpoint.Port != 43812 || e.DstEndpoint.IP != "10.96.0.1" || e.DstEndpoint.Port != 443 {
			t.Fatalf("src %+v dst %+v", e.SrcEndpoint, e.DstEndpoint)
		}
	})
	t.Run("attacker-controlled junk in address fields is not an entity", func(t *testing.T) {
		e := parse1(t, `{"rule":"Unexpected outbound connection destination","time":"2024-01-01T00:00:00Z","output_fields":{"fd.rip":"8.8.8.8; rm -rf /","fd.rport":"99999","k8s.ns.name":"Bad/NS","k8s.pod.name":"x y"}}`)
		if e.DstEndpoint != nil || e.Kubernetes != nil {
			t.Fatalf("dst %+v k8s %+v", e.DstEndpoint, e.Kubernetes)
		}
	})
	t.Run("k8s_audit source uses ka fields", func(t *testing.T) {
		e := parse1(t, `{"rule":"Attach/Exec Pod","priority":"Notice","source":"k8s_audit","time":"2023-05-10T14:09:24Z","output_fields":{"ka.target.name":"kubecon","ka.target.namespace":"default","ka.target.resource":"pods","ka.target.subresource":"exec","ka.user.name":"system:serviceaccount:default:deployer"}}`)
		k := e.Kubernetes
		if k.Pod != "kubecon" || k.Namespace != "default" || k.Resource != "pods/exec" || k.ServiceAccount != "deployer" || e.Actor.Type != "ServiceAccount" {
			t.Fatalf("k8s %+v actor %+v", k, e.Actor)
		}
	})
	t.Run("falcosidekick uuid becomes the id", func(t *testing.T) {
		e := parse1(t, `{"uuid":"2b3e1c6d-7a1f-4c55-9f0e-1d2c3b4a5f60","rule":"Write below binary dir","priority":"Error","time":"2019-05-17T15:31:56Z","output_fields":{}}`)
		if e.ID != "falco-2b3e1c6d-7a1f-4c55-9f0e-1d2c3b4a5f60" || e.SeverityID != 4 {
			t.Fatalf("id %q sev %d", e.ID, e.SeverityID)
		}
	})
	t.Run("time falls back to evt.time nanoseconds", func(t *testing.T) {
		e := parse1(t, `{"rule":"Write below binary dir","output_fields":{"evt.time":1618082841038853452}}`)
		if e.Time.UnixNano() != 1618082841038853452 {
			t.Fatalf("time %v", e.Time)
		}
	})
	t.Run("unknown fields kept verbatim in raw", func(t *testing.T) {
		body := `{"rule":"Write below binary dir","time":"2019-05-17T15:31:56Z","custom":{"a":[1,2]},"output_fields":{}}`
		e := parse1(t, body)
		if !bytes.Equal(e.Raw, []byte(body)) {
			t.Fatalf("raw %s", e.Raw)
		}
	})
}

func TestInternalEventsSkipped(t *testing.T) {
	body := `{"rule":"Falco internal: metrics snapshot","source":"internal","priority":"Informational","time":"2025-05-29T22:19:58Z","output_fields":{}}
{"rule":"Falco internal: syscall event drop","priority":"Debug","time":"2023-03-03T03:03:03Z","output_fields":{"n_drops":"815508"}}
{"rule":"Terminal shell in container","priority":"Critical","time":"2023-05-25T13:44:05Z","output_fields":{}}
`
	res, err := New(nil).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Events) != 1 || len(res.Skipped) != 2 {
		t.Fatalf("events %d skipped %v", len(res.Events), res.Skipped)
	}
	if res.Skipped[0].Reason != "falco internal: metrics snapshot" || res.Skipped[1].Reason != "falco internal: syscall event drop" || res.Skipped[1].Index != 1 {
		t.Fatalf("skipped %v", res.Skipped)
	}
}

func TestErrorsNamePaths(t *testing.T) {
	for _, tc := range []struct{ body, field string }{
		{`[{"rule":"a","time":"2024-01-01T00:00:00Z"},{"rule":"b","time":{}}]`, "[1].time"},
		{`{"rule":"a","time":"2024-01-01T00:00:00Z"}` + "\n" + `{"rule":"b","tags":"notalist"}`, "[1].tags"},
		{`{"output":"x","time":"2024-01-01T00:00:00Z"}`, "rule"},
		{`{"rule":"a","time":"not a time"}`, "time"},
		{`[1]`, "[0].$"},
		{`{"rule":`, "$"},
		{``, "$"},
	} {
		_, err := New(nil).Parse([]byte(tc.body))
		var fe *event.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: error %v, want field %q", tc.body, err, tc.field)
		}
	}
}

func TestTypeTable(t *testing.T) {
	for _, tc := range []struct {
		rule string
		tags []string
		want string
	}{
		{"Terminal shell in container", nil, "execution"},
		{"Detect crypto miners using the Stratum protocol", nil, "crypto_mining"},
		{"Read sensitive file untrusted", nil, "credential_compromise"},
		{"Clear Log Activities", nil, "defense_evasion"},
		{"Some Custom Rule", []string{"mitre_exfiltration"}, "data_exfiltration"},
		{"Some Custom Rule", nil, "policy_violation"},
	} {
		a := alert{Rule: tc.rule, Tags: tc.tags}
		if got := typeOf(a, &event.Event{}); got != tc.want {
			t.Errorf("%s %v: %s, want %s", tc.rule, tc.tags, got, tc.want)
		}
	}
}

func TestResolvedNameIsADomain(t *testing.T) {
	e := parse1(t, `{"rule":"Outbound Connection to C2 Servers","priority":"Warning","time":"2024-01-01T00:00:00Z","output_fields":{"fd.sip":"198.51.100.66","fd.sport":443,"fd.sip.name":"c2.example","fd.cip":"10.0.0.3","fd.cport":51000}}`)
	if e.Type != "command_and_control" || e.DstEndpoint.IP != "198.51.100.66" || e.DstEndpoint.Domain != "c2.example" || e.SrcEndpoint.IP != "10.0.0.3" {
		t.Fatalf("type %q src %+v dst %+v", e.Type, e.SrcEndpoint, e.DstEndpoint)
	}
}
