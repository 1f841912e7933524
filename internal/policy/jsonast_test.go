package policy

import (
	"encoding/json"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/quell-ir/quell/internal/action"
)

// jsonToValue must give exactly what OPA's own conversion of the decoded
// document gives.
func TestJSONToValueMatchesInterfaceToValue(t *testing.T) {
	ev := guardDutyEvent(t, samplePath(t, gdIAMSample))
	in := BuildInput(gdRequest(ev, "HIGH", disableKeySpec, []action.Target{{Kind: "access_key", Value: "GeneratedFindingAccessKeyId"}}, "inc-1"), &Incident{ID: "inc-1", Evidence: []string{"b", "a"}}, true)
	sample, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	docs := []string{
		string(sample),
		`{}`, `[]`, `null`, `true`, `false`, `0`, `-1.5e3`, `12345678901234567890`,
		`{"a": [1, 2.5, {"b": null}], "c": "x\"y\\z\u00e9\n<\u003c>", "d": {}, "e": [], "f": false}`,
		` { "k" : [ "v" , true ] } `,
		`"\ud83d\ude00 é 日本"`,
	}
	for _, doc := range docs {
		got, err := jsonToValue([]byte(doc))
		if err != nil {
			t.Fatalf("jsonToValue(%s): %v", doc, err)
		}
		var x any
		if err := util.UnmarshalJSON([]byte(doc), &x); err != nil {
			t.Fatal(err)
		}
		want, err := ast.InterfaceToValue(x)
		if err != nil {
			t.Fatal(err)
		}
		if got.Compare(want) != 0 {
			t.Errorf("jsonToValue(%s)\n got %v\nwant %v", doc, got, want)
		}
	}
	for _, bad := range []string{``, `{`, `[1,`, `{"a" 1}`, `tru`, `"abc`, `{"a":1}x`, `[1 2]`, `-`, `{1:2}`} {
		if _, err := jsonToValue([]byte(bad)); err == nil {
			t.Errorf("jsonToValue(%q): want an error", bad)
		}
	}
}
