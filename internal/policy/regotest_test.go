package policy

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func examplesDir(t testing.TB) string {
	t.Helper()
	d, err := filepath.Abs("../../examples/policies")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestShippedPolicyRegoTests runs the Rego tests of examples/policies through
// RunTests (what `quell policy test` calls) and fails on any failing test.
func TestShippedPolicyRegoTests(t *testing.T) {
	var out bytes.Buffer
	res, err := RunTests(context.Background(), &out, examplesDir(t))
	t.Log(out.String())
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if !res.OK() {
		t.Fatalf("rego tests failed: %d passed, %d failed: %s", res.Passed, res.Failed, strings.Join(res.Failures, "; "))
	}
	if res.Passed < 20 {
		t.Errorf("only %d rego tests passed; expected the shipped suite (>= 20)", res.Passed)
	}
	if res.Coverage < 80 {
		t.Errorf("coverage of the shipped policies is %.1f%%, want >= 80%%", res.Coverage)
	}
	if !strings.Contains(out.String(), "PASS  data.quell_test.test_revocation_denied_for_excepted_principal") {
		t.Errorf("output does not list the tests:\n%s", out.String())
	}
}

func TestRunTestsReportsFailures(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", "package p\n\nx := 1\n")
	write(t, dir, "p_test.rego", "package p_test\n\nimport data.p\n\ntest_ok if p.x == 1\n\ntest_bad if p.x == 2\n")
	var out bytes.Buffer
	res, err := RunTests(context.Background(), &out, dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Passed != 1 || res.Failed != 1 || res.OK() {
		t.Fatalf("got %+v, want 1 passed 1 failed\n%s", res, out.String())
	}
	if !strings.Contains(out.String(), "FAIL  data.p_test.test_bad") {
		t.Errorf("failure not printed:\n%s", out.String())
	}
}

func TestRunTestsNoTests(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", "package p\n\nx := 1\n")
	if _, err := RunTests(context.Background(), &bytes.Buffer{}, dir); err == nil {
		t.Fatal("no tests: want an error")
	}
}

func write(t testing.TB, dir, name, content string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
