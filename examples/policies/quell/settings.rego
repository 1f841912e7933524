# Rules of engagement: settings.
#
# Defaults of the rules of engagement. Each can be overridden in the data
# document data.quell.settings (see examples/policies/data.json); objects
# are merged key by key.
package quell

default_settings := {
	# Containment (anything reversible) expires after at most this long.
	"max_containment_ttl": "24h",
	# A break-glass grant lasts at most this long.
	"breakglass_max_duration": "1h",
	# quell never acts in these namespaces.
	"protected_namespaces": ["kube-system", "kube-public", "kube-node-lease", "quell-system"],
	# Actions that revoke or disable credentials.
	"credential_actions": [
		"aws.disable_access_key",
		"aws.revoke_sessions",
		"aws.quarantine_user",
		"kube.revoke_service_account",
		"kube.disable_service_account",
	],
	# Actions that destroy state, in addition to those whose spec says so.
	"eradication_actions": ["kube.delete_pod", "aws.terminate_instance"],
	# Actions that capture forensic evidence.
	"forensic_actions": ["kube.capture_logs", "aws.snapshot"],
	# Which evidence an eradication needs (any one of the list); others
	# need any forensic action.
	"evidence": {
		"kube.delete_pod": ["kube.capture_logs"],
		"aws.terminate_instance": ["aws.snapshot"],
	},
	# Who approves an eradication, how many, within what time.
	"eradication_approval": {"approvers": 1, "group": "incident-commanders", "timeout": "1h"},
	# Approval used when a playbook step asks for one.
	"default_approval": {"approvers": 1, "group": "responders", "timeout": "30m"},
	# Actions that only ever run in audit mode.
	"audit_only_actions": [],
}

default user_settings := {}

user_settings := data.quell.settings

cfg := object.union(default_settings, user_settings)

default excepted_principals := []

excepted_principals := data.quell.exceptions.principals
