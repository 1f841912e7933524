package decode

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2023-05-25T13:44:05.478445995Z", time.Date(2023, 5, 25, 13, 44, 5, 478445995, time.UTC)},
		{"2018-03-07T06:33:21.873077559-05:00", time.Date(2018, 3, 7, 11, 33, 21, 873077559, time.UTC)},
		{"2020-11-28 10:20:46 +0000 UTC", time.Date(2020, 11, 28, 10, 20, 46, 0, time.UTC)},
		{"2020-11-28 10:20:46.842701127 +0100 +0100", time.Date(2020, 11, 28, 9, 20, 46, 842701127, time.UTC)},
		{"2020-10-26 09:50:32.055535505 +0100 CET m=+6.235529150", time.Date(2020, 10, 26, 8, 50, 32, 55535505, time.UTC)},
		{"1492735675000", time.UnixMilli(1492735675000).UTC()},
		{"1618082841038853452", time.Unix(0, 1618082841038853452).UTC()},
		{"1513721039", time.Unix(1513721039, 0).UTC()},
		{"1513612691.551", time.Unix(1513612691, 551000000).UTC()},
		{"0001-01-01T00:00:00Z", time.Time{}},
		{"", time.Time{}},
	} {
		got, err := ParseTime(tc.in)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("%q: %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"yesterday", "2020-13-45", "NaN", "1e400"} {
		if _, err := ParseTime(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestLenientScalars(t *testing.T) {
	var v struct {
		A, B, C, D Int
		S, N       String
		F          Float
	}
	if err := json.Unmarshal([]byte(`{"A":"8888","B":-1,"C":22.0,"D":null,"S":"x","N":403,"F":"8.5"}`), &v); err != nil {
		t.Fatal(err)
	}
	if v.A != 8888 || v.B != -1 || v.C != 22 || v.D != 0 || v.S != "x" || v.N != "403" || v.F != 8.5 {
		t.Fatalf("%+v", v)
	}
	for _, bad := range []string{`{"A":"x"}`, `{"A":1.5}`, `{"S":{}}`, `{"F":"high"}`} {
		if err := json.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestIP(t *testing.T) {
	for in, want := range map[string]string{
		"8.8.8.8": "8.8.8.8", "211.9.016.253": "", "0.0.0.0": "", "::": "", "::ffff:1.2.3.4": "1.2.3.4",
		"fe80::1%eth0": "", "1.2.3.4; rm": "", "": "", "2001:DB8::1": "2001:db8::1",
	} {
		if got := IP(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		body  string
		paths []string
	}{
		{`{"a":1}`, []string{""}},
		{` [ {"a":1} , {"b":2} ] `, []string{"[0]", "[1]"}},
		{"{\"a\":1}\n{\"b\":2}\n\n", []string{"[0]", "[1]"}},
		{"\xef\xbb\xbf{\"a\":1}", []string{""}},
	} {
		docs, err := Split([]byte(tc.body))
		if err != nil || len(docs) != len(tc.paths) {
			t.Fatalf("%q: %v %d", tc.body, err, len(docs))
		}
		for i, d := range docs {
			if d.Path != tc.paths[i] || !json.Valid(d.Raw) {
				t.Errorf("%q doc %d: path %q raw %s", tc.body, i, d.Path, d.Raw)
			}
		}
	}
	deep := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	if _, err := Split([]byte(deep)); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Fatalf("deep nesting: %v", err)
	}
	if _, err := Split([]byte(`{"s":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}`)); err != nil {
		t.Fatalf("brackets inside strings counted: %v", err)
	}
	if _, err := Split([]byte("  ")); err == nil {
		t.Fatal("empty body accepted")
	}
}

func TestSummary(t *testing.T) {
	r := Result{Skipped: []Skip{{0, "falco internal: metrics snapshot"}, {1, "falco internal: metrics snapshot"}, {2, "falco internal: syscall event drop"}}}
	if got := r.Summary(); got != "accepted 0, skipped 3: falco internal: metrics snapshot; falco internal: syscall event drop" {
		t.Fatal(got)
	}
	if got := (Result{}).Summary(); got != "accepted 0, skipped 0" {
		t.Fatal(got)
	}
}
