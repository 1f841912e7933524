# METADATA
# title: AWS preparation checks (Terraform plan JSON)
# description: |
#   Run with `quell check --policy examples/policies plan.json`; input is
#   built by quell (docs/policy.md): input.documents[] with file, index,
#   kind ("terraform_plan", "kubernetes", "json") and content.
#   Make a plan JSON with: terraform plan -out tf.plan && terraform show -json tf.plan
package quell.check.aws

# Every managed resource planned, in the root module and in child modules.
resources contains r if {
	some doc in input.documents
	doc.kind == "terraform_plan"
	walk(object.get(doc.content, "planned_values", {}), [_, node])
	is_object(node)
	node.mode == "managed"
	is_string(node.type)
	r := {
		"file": doc.file,
		"address": node.address,
		"type": node.type,
		"values": object.get(node, "values", {}),
	}
}

# The configuration's resources, whose expressions say what refers to what
# (values such as a bucket name are often unknown until apply).
configured contains c if {
	some doc in input.documents
	doc.kind == "terraform_plan"
	walk(object.get(doc.content, "configuration", {}), [_, node])
	is_object(node)
	node.mode == "managed"
	is_string(node.type)
	c := {
		"file": doc.file,
		"address": node.address,
		"type": node.type,
		"expressions": object.get(node, "expressions", {}),
	}
}

refers_to(expr, address) if {
	some ref in expr.references
	ref in {address, concat("", [address, ".id"]), concat("", [address, ".bucket"])}
}

# ---------------------------------------------------- S3 access logging

buckets contains b if {
	some b in resources
	b.type == "aws_s3_bucket"
}

logs_bucket(b) if count(object.get(b.values, "logging", [])) > 0

logs_bucket(b) if {
	some l in resources
	l.type == "aws_s3_bucket_logging"
	l.file == b.file
	name := object.get(b.values, "bucket", "")
	name != ""
	object.get(l.values, "bucket", "") == name
}

logs_bucket(b) if {
	some c in configured
	c.type == "aws_s3_bucket_logging"
	c.file == b.file
	refers_to(c.expressions.bucket, b.address)
}

# The bucket that receives access logs does not log to itself.
log_target(b) if {
	some c in configured
	c.type == "aws_s3_bucket_logging"
	c.file == b.file
	refers_to(c.expressions.target_bucket, b.address)
}

deny contains v if {
	some b in buckets
	not logs_bucket(b)
	not log_target(b)
	v := {
		"file": b.file,
		"resource": b.address,
		"msg": sprintf("S3 bucket %s has no server access logging (add an aws_s3_bucket_logging for it)", [b.address]),
	}
}

# ----------------------------------------------------------- CloudTrail

trails contains t if {
	some t in resources
	t.type == "aws_cloudtrail"
}

enabled_trail(t) if object.get(t.values, "enable_logging", true) == true

deny contains v if {
	some t in trails
	not enabled_trail(t)
	v := {"file": t.file, "resource": t.address, "msg": sprintf("CloudTrail trail %s has enable_logging = false", [t.address])}
}

deny contains v if {
	some t in trails
	enabled_trail(t)
	object.get(t.values, "is_multi_region_trail", false) != true
	v := {"file": t.file, "resource": t.address, "msg": sprintf("CloudTrail trail %s is not multi-region: API calls in other regions go unrecorded", [t.address])}
}

aws_resources contains r if {
	some r in resources
	startswith(r.type, "aws_")
}

# Over the whole input set: a trail may live in another stack's plan.
deny contains v if {
	count(aws_resources) > 0
	count({t | some t in trails; enabled_trail(t)}) == 0
	files := sort({r.file | some r in aws_resources})
	v := {"file": concat(", ", files), "msg": "no enabled aws_cloudtrail trail in the input set: CloudTrail must record API activity"}
}

# ------------------------------------------------- load balancer logging

lb_types := {"aws_lb", "aws_alb", "aws_elb"}

access_logs_on(lb) if {
	some l in object.get(lb.values, "access_logs", [])
	object.get(l, "enabled", lb.type == "aws_elb") == true
	object.get(l, "bucket", "") != ""
}

# The bucket name may be unknown at plan time; a reference is enough.
access_logs_on(lb) if {
	some l in object.get(lb.values, "access_logs", [])
	object.get(l, "enabled", lb.type == "aws_elb") == true
	some c in configured
	c.address == lb.address
	c.file == lb.file
	some cl in c.expressions.access_logs
	count(object.get(cl.bucket, "references", [])) > 0
}

deny contains v if {
	some lb in resources
	lb.type in lb_types
	object.get(lb.values, "load_balancer_type", "application") != "gateway"
	not access_logs_on(lb)
	v := {"file": lb.file, "resource": lb.address, "msg": sprintf("load balancer %s has no access logs (access_logs { enabled = true, bucket = ... })", [lb.address])}
}
