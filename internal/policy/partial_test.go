package policy

import (
	"context"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// The engine prepares the query partially evaluated (rego.WithPartialEval).
// On the shipped policy it must answer exactly what plain evaluation answers.
func TestPartialEvalSameDecisions(t *testing.T) {
	ctx := context.Background()
	b, err := LoadBundle(examplesDir(t), Verification{})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := rego.New(rego.Query(DefaultQuery), rego.ParsedBundle("quell", b),
		rego.SetRegoVersion(ast.RegoV1), rego.StrictBuiltinErrors(false)).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pe := newEngine(t, examplesDir(t), Options{}).cur.Load().query
	actor := `"actor": {"user": "GeneratedFindingUserName", "access_key_id": "AKIA1", "type": "IAMUser"}`
	inputs := []string{
		`{}`,
		`{"event": {"severity_id": 3, ` + actor + `}, "risk": {"level": "HIGH"}, "action": {"name": "aws.disable_access_key", "params": {}, "spec": {"provider": "aws"}, "targets": [{"kind": "access_key", "value": "AKIA1"}]}, "evidence": []}`,
		`{"event": {"severity_id": 5, ` + actor + `}, "risk": {"level": "LOW"}, "action": {"name": "aws.revoke_sessions", "params": {}, "spec": {"provider": "aws"}, "targets": []}, "evidence": []}`,
		`{"event": {"severity_id": 2, "actor": {"user": "break-glass-admin"}}, "risk": {"level": "MEDIUM"}, "action": {"name": "custom.x", "params": {}, "spec": {"provider": "aws"}, "targets": [{"kind": "access_key", "value": "arn:aws:iam::123456789012:user/security-automation"}]}}`,
		`{"event": {"severity_id": 5}, "action": {"name": "aws.terminate_instance", "params": {}, "spec": {"provider": "aws", "eradication": true}, "targets": [{"kind": "instance", "value": "i-1"}]}, "incident": {"id": "inc"}, "evidence": ["aws.snapshot"]}`,
		`{"action": {"name": "aws.terminate_instance", "params": {}, "spec": {"provider": "aws"}, "targets": []}, "incident": {"id": "inc"}, "evidence": ["kube.capture_logs"]}`,
		`{"action": {"name": "kube.evict_node", "params": {}, "spec": {"provider": "kube", "eradication": true}, "targets": [{"kind": "node", "value": "n1"}]}, "evidence": []}`,
		`{"action": {"name": "kube.delete_pod", "params": {"namespace": "kube-system"}, "spec": {"provider": "kube"}, "targets": [{"kind": "pod", "value": "quell-system/p"}, {"kind": "namespace", "value": "kube-public"}]}, "event": {"kubernetes": {"namespace": "kube-node-lease"}}, "evidence": ["kube.capture_logs"]}`,
		`{"action": {"name": "breakglass.grant", "params": {"person": "a", "role": "r", "duration": "2h"}}, "requester": "bob"}`,
		`{"action": {"name": "breakglass.grant", "params": {"person": "a", "role": "r", "duration": "0s"}}, "requester": "bob"}`,
		`{"action": {"name": "breakglass.grant", "params": {"person": "a", "duration": "forever"}}}`,
		`{"action": {"name": "breakglass.grant", "params": {"person": "a", "role": "r", "duration": "30m"}}, "requester": "bob"}`,
		`{"action": {"name": "firewall.block_ip", "params": {}, "spec": {"provider": "firewall"}, "targets": [], "approval_requested": true}, "enrichment": {"fail_closed": true}}`,
		`{"action": {"name": "kube.capture_logs", "params": {}, "spec": {"provider": "kube"}, "targets": []}, "enrichment": {"fail_closed": true}}`,
		`{"action": {"name": 7, "targets": "x", "spec": {"eradication": "yes"}}, "event": {"severity_id": "high"}, "risk": null}`,
	}
	for _, doc := range inputs {
		v, err := jsonToValue([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		want, werr := plain.Eval(ctx, rego.EvalParsedInput(v))
		got, gerr := pe.Eval(ctx, rego.EvalParsedInput(v))
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("%s: errors differ: plain %v, partial %v", doc, werr, gerr)
		}
		wd, _ := parseDecision(want, DefaultQuery)
		gd, _ := parseDecision(got, DefaultQuery)
		if len(want) != len(got) || wd.Verdict != gd.Verdict || wd.MaxTTL != gd.MaxTTL || wd.ForceAudit != gd.ForceAudit ||
			wd.Approvers != gd.Approvers || wd.ApproverGroup != gd.ApproverGroup || wd.ApprovalTimeout != gd.ApprovalTimeout ||
			len(wd.Reasons) != len(gd.Reasons) {
			t.Fatalf("%s:\nplain   %+v\npartial %+v", doc, wd, gd)
		}
		for i := range wd.Reasons {
			if wd.Reasons[i] != gd.Reasons[i] {
				t.Fatalf("%s: reason %d: plain %q, partial %q", doc, i, wd.Reasons[i], gd.Reasons[i])
			}
		}
		if len(want) == 1 && ast.MustInterfaceToValue(want[0].Expressions[0].Value).Compare(ast.MustInterfaceToValue(got[0].Expressions[0].Value)) != 0 {
			t.Fatalf("%s: values differ:\nplain   %v\npartial %v", doc, want[0].Expressions[0].Value, got[0].Expressions[0].Value)
		}
	}
}
