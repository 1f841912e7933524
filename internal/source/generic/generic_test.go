package generic

import (
	"errors"
	"strings"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

func TestMapping(t *testing.T) {
	p, err := New("myids", testMapping(), nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Parse([]byte(`[{"id":"a1","alert":{"name":"DNS tunnel detected"},"client":{"addr":"203.0.113.5:5353"},"level":"warn","ts":1700000000,"tags":["dns","egress"],"ns":"prod","count":"3","sensor":{"name":"s1"},"extra":{"kept":true}}]`))
	if err != nil {
		t.Fatal(err)
	}
	e := res.Events[0]
	if e.ID != "myids-a1" || e.Source != "myids" || e.Rule != "DNS tunnel detected" || e.Type != "dns_tunneling" || e.Priority != "P0" {
		t.Fatalf("%+v", e)
	}
	if e.SeverityID != 3 || e.SrcEndpoint.IP != "203.0.113.5" || e.SrcEndpoint.Port != 5353 || e.Time.Unix() != 1700000000 || e.Count != 3 {
		t.Fatalf("sev %d src %+v time %v count %d", e.SeverityID, e.SrcEndpoint, e.Time, e.Count)
	}
	if strings.Join(e.Tags, ",") != "dns,egress" || e.Kubernetes.Namespace != "prod" || e.Labels["sensor"] != "s1" || !strings.Contains(string(e.Raw), `"kept":true`) {
		t.Fatalf("tags %v k8s %+v labels %v raw %s", e.Tags, e.Kubernetes, e.Labels, e.Raw)
	}
}

func TestEventsPath(t *testing.T) {
	m := Mapping{Events: "$.alerts[*]", Fields: map[string]string{"rule": "$.name", "source_ip": "$.ip"}, Type: "port_scan"}
	p, err := New("scanner", m, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Parse([]byte(`{"alerts":[{"name":"a","ip":"192.0.2.1"},{"name":"b"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Events) != 2 || res.Events[0].Type != "port_scan" || res.Events[1].Rule != "b" {
		t.Fatalf("%+v", res.Events)
	}
	_, err = p.Parse([]byte(`{"alerts":[{"name":"a","ip":"not-an-ip"}]}`))
	var fe *event.FieldError
	if !errors.As(err, &fe) || fe.Field != "alerts[0].ip" {
		t.Fatalf("error %v", err)
	}
}

func TestDefaultMapping(t *testing.T) {
	p, err := New(Name, DefaultMapping(), nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Parse([]byte(`{"rule_name":"Brute force on ssh","severity":"high","@timestamp":"2024-01-01T00:00:00Z","src_ip":"198.51.100.2","user":{"name":"root"}}`))
	if err != nil {
		t.Fatal(err)
	}
	e := res.Events[0]
	if e.Type != "brute_force" || e.SeverityID != 4 || e.SrcEndpoint.IP != "198.51.100.2" || e.Actor.User != "root" || e.Time.Year() != 2024 {
		t.Fatalf("%+v", e)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		m    Mapping
		want string
	}{
		{Mapping{}, "fields:"},
		{Mapping{Fields: map[string]string{"colour": "$.c"}}, "fields.colour: unknown field"},
		{Mapping{Fields: map[string]string{"rule": "rule"}}, "fields.rule:"},
		{Mapping{Fields: map[string]string{"rule": "$.a[x]"}}, "fields.rule:"},
		{Mapping{Fields: map[string]string{"rule": "$.a[*]"}}, "fields.rule: [*]"},
		{Mapping{Fields: map[string]string{"rule": "$.a"}, SeverityMap: map[string]string{"warn": "spicy"}}, `severity_map["warn"]`},
		{Mapping{Fields: map[string]string{"rule": "$.a"}, Type: "bad"}, "type:"},
		{Mapping{Fields: map[string]string{"rule": "$.a"}, Source: "Bad Name"}, "source:"},
	} {
		err := tc.m.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want prefix %q", tc.m, err, tc.want)
		}
	}
}

func TestPath(t *testing.T) {
	doc := map[string]any{"a": map[string]any{"b.c": []any{"x", "y"}}, "e": ""}
	for _, tc := range []struct {
		path string
		want any
	}{
		{"$.a['b.c'][1]", "y"},
		{`$.a["b.c"][0]`, "x"},
		{"$.missing | $.a['b.c'][0]", "x"},
		{"$.e | $.a['b.c'][1]", "y"},
	} {
		p, err := ParsePath(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := p.Lookup(doc); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.path, got, tc.want)
		}
	}
}
