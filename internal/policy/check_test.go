package policy

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func checkdata(t testing.TB, parts ...string) string {
	return filepath.Join(append([]string{examplesDir(t), "checks", "testdata"}, parts...)...)
}

func TestCheckShippedSamples(t *testing.T) {
	tests := []struct {
		name   string
		inputs []string
		want   []string // substrings, one per violation, in output order
	}{
		{"passing plan", []string{checkdata(t, "pass", "tfplan.json")}, nil},
		{"passing manifests", []string{checkdata(t, "pass", "workloads.yaml")}, nil},
		{"passing directory", []string{checkdata(t, "pass")}, nil},
		{"failing plan", []string{checkdata(t, "fail", "tfplan.json")}, []string{
			"tfplan.json: [quell.check.aws] CloudTrail trail aws_cloudtrail.main has enable_logging = false",
			"tfplan.json: [quell.check.aws] S3 bucket aws_s3_bucket.data has no server access logging",
			"tfplan.json: [quell.check.aws] S3 bucket module.backup.aws_s3_bucket.backup has no server access logging",
			"tfplan.json: [quell.check.aws] load balancer aws_elb.legacy has no access logs",
			"tfplan.json: [quell.check.aws] load balancer aws_lb.api has no access logs",
			"tfplan.json: [quell.check.aws] no enabled aws_cloudtrail trail in the input set",
		}},
		{"failing manifests", []string{checkdata(t, "fail", "workloads.yaml")}, []string{
			"workloads.yaml: [quell.check.kubernetes] Deployment payments/api: no NetworkPolicy in namespace payments selects its pods",
			"workloads.yaml: [quell.check.kubernetes] Job batch/migrate: no NetworkPolicy in namespace batch selects its pods",
			"workloads.yaml: [quell.check.kubernetes] Pod default/debug: no NetworkPolicy in namespace default selects its pods",
		}},
		// The failing plan's missing trail is satisfied by the passing plan's
		// trail in the same input set; its other violations remain.
		{"trail from another plan in the set", []string{checkdata(t, "fail", "tfplan.json"), checkdata(t, "pass", "tfplan.json")}, []string{
			"enable_logging = false",
			"aws_s3_bucket.data",
			"module.backup.aws_s3_bucket.backup",
			"aws_elb.legacy",
			"aws_lb.api",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			n, err := Check(context.Background(), examplesDir(t), tc.inputs, &out)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if n != len(tc.want) {
				t.Fatalf("%d violations, want %d:\n%s", n, len(tc.want), out.String())
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("line %d = %q, want it to contain %q", i, lines[i], w)
				}
			}
			if n == 0 && !strings.Contains(out.String(), "no violations") {
				t.Errorf("clean output: %q", out.String())
			}
		})
	}
}

func TestCheckErrors(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "bad.yaml", "a: [1,\n")
	write(t, dir, "ok.json", `{"a":1}`)
	pol := t.TempDir()
	write(t, pol, "p.rego", "package other\n\nx := 1\n")
	ctx := context.Background()
	if _, err := Check(ctx, examplesDir(t), []string{filepath.Join(dir, "bad.yaml")}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("bad YAML: %v", err)
	}
	if _, err := Check(ctx, examplesDir(t), nil, &bytes.Buffer{}); err == nil {
		t.Error("no inputs: want an error")
	}
	if _, err := Check(ctx, pol, []string{filepath.Join(dir, "ok.json")}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "no package quell.check") {
		t.Errorf("no check packages: %v", err)
	}
}

func TestCheckPlainStringViolation(t *testing.T) {
	pol := t.TempDir()
	write(t, pol, "c.rego", "package quell.check.custom\n\ndeny contains \"always\" if count(input.documents) > 0\n")
	in := t.TempDir()
	write(t, in, "x.json", `{"kind":"thing"}`)
	var out bytes.Buffer
	n, err := Check(context.Background(), pol, []string{filepath.Join(in, "x.json")}, &out)
	if err != nil || n != 1 || !strings.Contains(out.String(), "(input set): [quell.check.custom] always") {
		t.Fatalf("n=%d err=%v out=%s", n, err, out.String())
	}
}

func TestDocumentKinds(t *testing.T) {
	docs, err := LoadDocuments([]string{checkdata(t, "pass")})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, d := range docs {
		kinds[d.Kind]++
	}
	if kinds["terraform_plan"] != 1 || kinds["kubernetes"] != 6 || kinds["json"] != 0 {
		t.Fatalf("kinds %v", kinds)
	}
}
