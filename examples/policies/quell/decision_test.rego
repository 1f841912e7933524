package quell_test

import data.quell

gd_event := {
	"source": "guardduty",
	"severity_id": 3,
	"rule": "Recon:IAMUser/MaliciousIPCaller.Custom",
	"actor": {"user": "GeneratedFindingUserName", "access_key_id": "GeneratedFindingAccessKeyId", "type": "IAMUser"},
}

revoke := {
	"name": "aws.disable_access_key",
	"params": {"access_key_id": "GeneratedFindingAccessKeyId"},
	"spec": {"name": "aws.disable_access_key", "provider": "aws", "reversible": true, "eradication": false},
	"targets": [{"kind": "access_key", "value": "GeneratedFindingAccessKeyId"}],
	"ttl": "0s",
}

base := {
	"event": gd_event,
	"risk": {"level": "HIGH", "score": 80},
	"action": revoke,
	"mode": "enforce",
	"evidence": [],
	"incident": {"id": "inc-1", "evidence": []},
}

test_revocation_allowed_for_high_risk if {
	d := quell.decision with input as base
	d.allow
	count(d.deny) == 0
	d.require_approval == null
	d.max_ttl == "24h"
}

test_revocation_allowed_for_high_severity_without_risk if {
	inp := object.union(object.remove(base, ["risk"]), {"event": object.union(gd_event, {"severity_id": 4})})
	d := quell.decision with input as inp
	d.allow
}

test_revocation_denied_below_threshold if {
	inp := object.union(base, {"risk": {"level": "MEDIUM"}})
	d := quell.decision with input as inp
	not d.allow
	some msg in d.deny
	contains(msg, "needs a high-severity finding")
	contains(msg, "severity_id 3, risk MEDIUM")
}

test_revocation_denied_for_excepted_principal if {
	d := quell.decision with input as base with data.quell.exceptions.principals as ["GeneratedFindingUserName"]
	not d.allow
	d.deny == {"principal \"GeneratedFindingUserName\" is on the exception list (data.quell.exceptions.principals): its credentials are never revoked automatically"}
}

test_revocation_denied_for_excepted_target_key if {
	d := quell.decision with input as base with data.quell.exceptions.principals as ["GeneratedFindingAccessKeyId"]
	not d.allow
}

test_shipped_exceptions_list_is_used if {
	inp := object.union(base, {"event": object.union(gd_event, {"actor": {"user": "break-glass-admin"}})})
	d := quell.decision with input as inp
	not d.allow
}

delete_pod := {
	"name": "kube.delete_pod",
	"params": {"namespace": "shop", "pod": "web-1"},
	"spec": {"name": "kube.delete_pod", "provider": "kube", "eradication": true},
	"targets": [{"kind": "pod", "value": "shop/web-1"}],
	"ttl": "0s",
}

test_eradication_without_evidence_denied if {
	inp := object.union(base, {"action": delete_pod})
	d := quell.decision with input as inp
	not d.allow
	d.deny == {"eradication kube.delete_pod needs forensic evidence first: none of [kube.capture_logs] has completed for incident \"inc-1\""}
}

test_eradication_with_wrong_evidence_denied if {
	inp := object.union(base, {"action": delete_pod, "evidence": ["aws.snapshot"]})
	d := quell.decision with input as inp
	count(d.deny) == 1
}

test_eradication_with_evidence_needs_approval if {
	inp := object.union(base, {"action": delete_pod, "evidence": ["kube.capture_logs"]})
	d := quell.decision with input as inp
	count(d.deny) == 0
	d.require_approval == {"approvers": 1, "group": "incident-commanders", "timeout": "1h"}
}

test_eradication_by_spec_flag if {
	act := object.union(delete_pod, {"name": "kube.evict_node", "spec": {"name": "kube.evict_node", "provider": "kube", "eradication": true}})
	inp := object.union(base, {"action": act, "evidence": ["kube.capture_logs"]})
	d := quell.decision with input as inp
	count(d.deny) == 0
	d.require_approval.group == "incident-commanders"
}

test_terminate_instance_needs_snapshot if {
	act := {"name": "aws.terminate_instance", "params": {}, "spec": {"provider": "aws", "eradication": true}, "targets": [{"kind": "instance", "value": "i-99999999"}]}
	denied := quell.decision with input as object.union(base, {"action": act, "evidence": ["kube.capture_logs"]})
	count(denied.deny) == 1
	ok := quell.decision with input as object.union(base, {"action": act, "evidence": ["aws.snapshot"]})
	count(ok.deny) == 0
	ok.require_approval.approvers == 1
}

test_protected_namespace_denied if {
	act := object.union(delete_pod, {"params": {"namespace": "kube-system", "pod": "coredns-1"}, "targets": [{"kind": "pod", "value": "kube-system/coredns-1"}]})
	d := quell.decision with input as object.union(base, {"action": act, "evidence": ["kube.capture_logs"]})
	d.deny == {"namespace kube-system is protected: quell never acts on it"}
}

test_protected_namespace_from_target_only if {
	act := {"name": "kube.isolate_pod", "params": {}, "spec": {"provider": "kube"}, "targets": [{"kind": "pod", "value": "quell-system/quell-0"}]}
	d := quell.decision with input as object.union(base, {"action": act})
	not d.allow
}

test_unprotected_containment_allowed_and_capped if {
	act := {"name": "firewall.block_ip", "params": {"ip": "198.51.100.7"}, "spec": {"provider": "firewall", "reversible": true}, "targets": [{"kind": "ip", "value": "198.51.100.7"}], "ttl": "48h"}
	d := quell.decision with input as object.union(base, {"action": act})
	d.allow
	d.max_ttl == "24h"
	not d.force_audit
}

grant := {
	"name": "breakglass.grant",
	"params": {"person": "alice", "role": "cluster-admin", "duration": "45m"},
	"spec": {"name": "breakglass.grant", "provider": "breakglass", "reversible": true},
	"targets": [{"kind": "user", "value": "alice"}],
}

test_breakglass_within_limit_allowed if {
	d := quell.decision with input as {"action": grant, "requester": "bob", "mode": "enforce", "evidence": []}
	d.allow
	d.max_ttl == "1h"
}

test_breakglass_over_limit_denied if {
	act := object.union(grant, {"params": {"duration": "2h"}})
	d := quell.decision with input as {"action": act, "requester": "bob"}
	d.deny == {"break-glass grant of 2h exceeds the maximum of 1h"}
}

test_breakglass_limit_from_data if {
	act := object.union(grant, {"params": {"duration": "2h"}})
	d := quell.decision with input as {"action": act, "requester": "bob"} with data.quell.settings.breakglass_max_duration as "4h"
	d.allow
	d.max_ttl == "4h"
}

test_breakglass_bad_duration_denied if {
	act := object.union(grant, {"params": {"duration": "forever"}})
	d := quell.decision with input as {"action": act, "requester": "bob"}
	d.deny == {"break-glass duration \"forever\" is not a duration like 30m or 1h"}
}

test_breakglass_nonpositive_duration_denied if {
	act := object.union(grant, {"params": {"duration": "0s"}})
	d := quell.decision with input as {"action": act, "requester": "bob"}
	d.deny == {"break-glass duration must be positive, got 0s"}
}

test_breakglass_missing_params_and_requester if {
	d := quell.decision with input as {"action": {"name": "breakglass.grant", "params": {"person": "alice"}}}
	d.deny == {
		"break-glass grant needs parameter role",
		"break-glass grant needs parameter duration",
		"break-glass grant needs a named requester",
	}
}

test_fail_closed_enrichment_denies_containment_not_capture if {
	act := {"name": "firewall.block_ip", "params": {}, "spec": {"provider": "firewall"}, "targets": []}
	d := quell.decision with input as object.union(base, {"action": act, "enrichment": {"fail_closed": true}})
	not d.allow
	cap := {"name": "kube.capture_logs", "params": {}, "spec": {"provider": "kube"}, "targets": []}
	d2 := quell.decision with input as object.union(base, {"action": cap, "enrichment": {"fail_closed": true}})
	d2.allow
}

test_playbook_approval_request_honoured if {
	act := {"name": "firewall.block_ip", "params": {}, "spec": {"provider": "firewall"}, "targets": [], "approval_requested": true}
	d := quell.decision with input as object.union(base, {"action": act})
	d.require_approval == {"approvers": 1, "group": "responders", "timeout": "30m"}
}

test_audit_only_actions_forced if {
	act := {"name": "firewall.block_ip", "params": {}, "spec": {"provider": "firewall"}, "targets": []}
	d := quell.decision with input as object.union(base, {"action": act}) with data.quell.settings.audit_only_actions as ["firewall.block_ip"]
	d.force_audit
}
