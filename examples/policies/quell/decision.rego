# METADATA
# title: quell rules of engagement
# description: |
#   The default policy. data.quell.decision is the contract the engine reads
#   (docs/policy.md): allow, deny (reasons), reasons, require_approval,
#   max_ttl, force_audit.
package quell

decision := {
	"allow": allow,
	"deny": deny,
	"reasons": reasons,
	"require_approval": approval,
	"max_ttl": max_ttl,
	"force_audit": force_audit,
}

default allow := false

# Everything the rules below do not deny is allowed (the guards and the
# blast-radius check still run in the engine).
allow if count(deny) == 0

# ---------------------------------------------------------------- facts

action_name := input.action.name

is_eradication if input.action.spec.eradication

is_eradication if action_name in cfg.eradication_actions

is_forensic if action_name in cfg.forensic_actions

is_credential_revocation if action_name in cfg.credential_actions

is_credential_revocation if {
	some t in input.action.targets
	t.kind == "access_key"
}

is_breakglass if action_name == "breakglass.grant"

severity_id := object.get(input, ["event", "severity_id"], 0)

risk_level := object.get(input, ["risk", "level"], "NONE")

high_severity if severity_id >= 4

high_severity if risk_level in {"HIGH", "CRITICAL"}

incident_id := object.get(input, ["incident", "id"], "")

# The principals a credential action is about: the event's actor and the
# action's identity targets.
principals contains p if {
	some k in ["user", "uid", "access_key_id", "role"]
	p := input.event.actor[k]
	p != ""
}

principals contains t.value if {
	some t in input.action.targets
	t.kind in {"access_key", "user", "role", "service_account"}
}

excepted contains p if {
	some p in principals
	p in excepted_principals
}

# ------------------------------------------------- credential revocation

allow_credential_revocation if {
	is_credential_revocation
	high_severity
	count(excepted) == 0
}

deny contains msg if {
	is_credential_revocation
	not high_severity
	msg := sprintf(
		"credential revocation %s needs a high-severity finding (severity_id >= 4 or risk HIGH/CRITICAL); got severity_id %v, risk %s",
		[action_name, severity_id, risk_level],
	)
}

deny contains msg if {
	is_credential_revocation
	some p in excepted
	msg := sprintf("principal %q is on the exception list (data.quell.exceptions.principals): its credentials are never revoked automatically", [p])
}

reasons contains msg if {
	allow_credential_revocation
	msg := sprintf("credential revocation allowed: severity_id %v, risk %s, principal not excepted", [severity_id, risk_level])
}

# ---------------------------------------------------------- eradication

required_evidence := cfg.evidence[action_name]

required_evidence := cfg.forensic_actions if not cfg.evidence[action_name]

evidence_captured if {
	some a in required_evidence
	a in input.evidence
}

deny contains msg if {
	is_eradication
	not evidence_captured
	msg := sprintf(
		"eradication %s needs forensic evidence first: none of [%s] has completed for incident %q",
		[action_name, concat(", ", required_evidence), incident_id],
	)
}

reasons contains msg if {
	is_eradication
	a := cfg.eradication_approval
	msg := sprintf("eradication %s destroys state: needs %v approver(s) from %s within %s", [action_name, a.approvers, a.group, a.timeout])
}

default approval := null

approval := cfg.eradication_approval if is_eradication

approval := cfg.default_approval if {
	not is_eradication
	input.action.approval_requested
}

# ----------------------------------------------------------- break-glass

breakglass_params := ["person", "role", "duration"]

deny contains msg if {
	is_breakglass
	some p in breakglass_params
	object.get(input.action.params, p, "") == ""
	msg := sprintf("break-glass grant needs parameter %s", [p])
}

deny contains "break-glass grant needs a named requester" if {
	is_breakglass
	object.get(input, "requester", "") == ""
}

# A Go duration: checked before time.parse_duration_ns sees it, so that a bad
# value denies with a reason instead of raising a built-in error.
valid_duration(d) if regex.match(`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`, d)

breakglass_duration_ns := time.parse_duration_ns(input.action.params.duration) if {
	is_breakglass
	valid_duration(input.action.params.duration)
}

deny contains msg if {
	is_breakglass
	d := input.action.params.duration
	d != ""
	not valid_duration(d)
	msg := sprintf("break-glass duration %q is not a duration like 30m or 1h", [d])
}

deny contains msg if {
	breakglass_duration_ns > time.parse_duration_ns(cfg.breakglass_max_duration)
	msg := sprintf("break-glass grant of %s exceeds the maximum of %s", [input.action.params.duration, cfg.breakglass_max_duration])
}

deny contains msg if {
	breakglass_duration_ns <= 0
	msg := sprintf("break-glass duration must be positive, got %s", [input.action.params.duration])
}

# ------------------------------------------------- protected namespaces

touched_namespaces contains t.value if {
	some t in input.action.targets
	t.kind == "namespace"
}

# Namespaced targets are qualified "namespace/name".
touched_namespaces contains ns if {
	some t in input.action.targets
	t.kind != "namespace"
	t.kind != "cidr"
	t.kind != "ip"
	contains(t.value, "/")
	input.action.spec.provider == "kube"
	ns := split(t.value, "/")[0]
}

touched_namespaces contains ns if {
	ns := input.action.params.namespace
	ns != ""
}

touched_namespaces contains ns if {
	input.action.spec.provider == "kube"
	ns := input.event.kubernetes.namespace
	ns != ""
}

deny contains msg if {
	some ns in touched_namespaces
	ns in cfg.protected_namespaces
	msg := sprintf("namespace %s is protected: quell never acts on it", [ns])
}

# ----------------------------------------------------- failed enrichment

deny contains "enrichment failed closed: no automatic action on this event" if {
	input.enrichment.fail_closed
	not is_forensic
	not is_breakglass
}

# ----------------------------------------------------------------- limits

max_ttl := cfg.breakglass_max_duration if is_breakglass

max_ttl := cfg.max_containment_ttl if not is_breakglass

default force_audit := false

force_audit if action_name in cfg.audit_only_actions
