package quell.check.aws_test

import data.quell.check.aws

plan(resources, config) := {"documents": [{
	"file": "plan.json",
	"index": 0,
	"kind": "terraform_plan",
	"content": {
		"format_version": "1.2",
		"planned_values": {"root_module": {"resources": resources}},
		"configuration": {"root_module": {"resources": config}},
	},
}]}

res(type, name, values) := {"address": sprintf("%s.%s", [type, name]), "mode": "managed", "type": type, "name": name, "values": values}

trail := res("aws_cloudtrail", "t", {"enable_logging": true, "is_multi_region_trail": true})

msgs(input_doc) := {v.msg | some v in aws.deny with input as input_doc}

test_bucket_without_logging if {
	m := msgs(plan([trail, res("aws_s3_bucket", "b", {"bucket": "x"})], []))
	m == {"S3 bucket aws_s3_bucket.b has no server access logging (add an aws_s3_bucket_logging for it)"}
}

test_bucket_with_inline_logging if {
	count(msgs(plan([trail, res("aws_s3_bucket", "b", {"bucket": "x", "logging": [{"target_bucket": "logs"}]})], []))) == 0
}

test_bucket_logging_by_name if {
	r := [trail, res("aws_s3_bucket", "b", {"bucket": "x"}), res("aws_s3_bucket_logging", "l", {"bucket": "x"})]
	count(msgs(plan(r, []))) == 0
}

test_bucket_logging_by_reference_and_target_exempt if {
	r := [trail, res("aws_s3_bucket", "b", {}), res("aws_s3_bucket", "logs", {}), res("aws_s3_bucket_logging", "l", {})]
	c := [{"address": "aws_s3_bucket_logging.l", "mode": "managed", "type": "aws_s3_bucket_logging", "expressions": {
		"bucket": {"references": ["aws_s3_bucket.b.id", "aws_s3_bucket.b"]},
		"target_bucket": {"references": ["aws_s3_bucket.logs.id", "aws_s3_bucket.logs"]},
	}}]
	count(msgs(plan(r, c))) == 0
}

test_no_trail if {
	m := msgs(plan([res("aws_s3_bucket", "b", {"bucket": "x", "logging": [{}]})], []))
	some msg in m
	startswith(msg, "no enabled aws_cloudtrail trail")
}

test_trail_disabled if {
	m := msgs(plan([res("aws_cloudtrail", "t", {"enable_logging": false, "is_multi_region_trail": true})], []))
	"CloudTrail trail aws_cloudtrail.t has enable_logging = false" in m
	some msg in m
	startswith(msg, "no enabled aws_cloudtrail trail")
}

test_trail_single_region if {
	m := msgs(plan([res("aws_cloudtrail", "t", {"is_multi_region_trail": false})], []))
	m == {"CloudTrail trail aws_cloudtrail.t is not multi-region: API calls in other regions go unrecorded"}
}

test_no_aws_resources_no_trail_needed if {
	count(msgs(plan([], []))) == 0
}

test_alb_without_logs if {
	m := msgs(plan([trail, res("aws_lb", "a", {"load_balancer_type": "application", "access_logs": [{"bucket": "l", "enabled": false}]})], []))
	m == {"load balancer aws_lb.a has no access logs (access_logs { enabled = true, bucket = ... })"}
}

test_alb_logs_enabled if {
	count(msgs(plan([trail, res("aws_lb", "a", {"access_logs": [{"bucket": "l", "enabled": true}]})], []))) == 0
}

test_alb_logs_bucket_by_reference if {
	r := [trail, res("aws_lb", "a", {"access_logs": [{"enabled": true}]})]
	c := [{"address": "aws_lb.a", "mode": "managed", "type": "aws_lb", "expressions": {"access_logs": [{"bucket": {"references": ["aws_s3_bucket.logs.id"]}}]}}]
	count(msgs(plan(r, c))) == 0
}

test_classic_elb_enabled_by_default if {
	count(msgs(plan([trail, res("aws_elb", "e", {"access_logs": [{"bucket": "l"}]})], []))) == 0
	count(msgs(plan([trail, res("aws_elb", "e", {"access_logs": []})], []))) == 1
}

test_gateway_lb_exempt if {
	count(msgs(plan([trail, res("aws_lb", "g", {"load_balancer_type": "gateway"})], []))) == 0
}

test_child_modules_walked if {
	doc := {"documents": [{"file": "p.json", "kind": "terraform_plan", "content": {"planned_values": {"root_module": {
		"resources": [trail],
		"child_modules": [{"address": "module.m", "resources": [{"address": "module.m.aws_s3_bucket.b", "mode": "managed", "type": "aws_s3_bucket", "values": {}}]}],
	}}}}]}
	m := msgs(doc)
	m == {"S3 bucket module.m.aws_s3_bucket.b has no server access logging (add an aws_s3_bucket_logging for it)"}
}
