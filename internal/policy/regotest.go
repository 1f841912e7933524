package policy

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/tester"
)

// TestResult summarizes a `quell policy test` run.
type TestResult struct {
	Passed   int
	Failed   int // failures and errors
	Skipped  int
	Coverage float64 // percent of the lines of non-test modules that ran
	Failures []string
}

// OK reports whether every test passed and at least one ran.
func (r TestResult) OK() bool { return r.Failed == 0 && r.Passed > 0 }

// skipTestdata leaves out directories named testdata (sample inputs for
// `quell check`, not policy data) wherever they are.
func skipTestdata(_ string, info fs.FileInfo, _ int) bool {
	return info.IsDir() && info.Name() == "testdata"
}

// RunTests runs the Rego unit tests (rules named test_*) found under paths,
// with OPA's tester, and prints one line per test and the coverage of the
// non-test modules to w. It is `quell policy test DIR...`: the command exits
// non-zero unless result.OK().
func RunTests(ctx context.Context, w io.Writer, paths ...string) (TestResult, error) {
	var res TestResult
	if len(paths) == 0 {
		return res, fmt.Errorf("policy test: no paths")
	}
	modules, store, err := tester.LoadWithRegoVersion(paths, skipTestdata, ast.RegoV1)
	if err != nil {
		return res, fmt.Errorf("policy test: load %s: %w", strings.Join(paths, " "), err)
	}
	cov := cover.New()
	runner := tester.NewRunner().
		SetStore(store).
		SetModules(modules).
		SetCoverageQueryTracer(cov).
		SetDefaultRegoVersion(ast.RegoV1).
		RaiseBuiltinErrors(true).
		SetTimeout(30 * time.Second)
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return res, fmt.Errorf("policy test: %w", err)
	}
	defer store.Abort(ctx, txn)
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return res, fmt.Errorf("policy test: %w", err)
	}
	var results []*tester.Result
	for r := range ch {
		results = append(results, r)
	}
	slices.SortFunc(results, func(a, b *tester.Result) int {
		if c := strings.Compare(a.Location.File, b.Location.File); c != 0 {
			return c
		}
		return a.Location.Row - b.Location.Row
	})
	for _, r := range results {
		name := r.Package + "." + r.Name
		switch {
		case r.Skip:
			res.Skipped++
			fmt.Fprintf(w, "SKIP  %s (%s)\n", name, r.Location)
		case r.Error != nil:
			res.Failed++
			msg := fmt.Sprintf("%s (%s): error: %v", name, r.Location, r.Error)
			res.Failures = append(res.Failures, msg)
			fmt.Fprintf(w, "ERROR %s\n", msg)
		case r.Fail:
			res.Failed++
			msg := fmt.Sprintf("%s (%s)", name, r.Location)
			res.Failures = append(res.Failures, msg)
			fmt.Fprintf(w, "FAIL  %s\n", msg)
		default:
			res.Passed++
			fmt.Fprintf(w, "PASS  %s (%s)\n", name, r.Duration.Round(time.Microsecond))
		}
	}
	// Coverage of the policy, not of its tests: the tracer records the
	// lines of test modules too, so they are left out of the sum.
	report := cov.Report(modules)
	var covered, notCovered int
	for f, fr := range report.Files {
		if strings.HasSuffix(f, "_test.rego") {
			delete(report.Files, f)
			continue
		}
		covered += fr.CoveredLines
		notCovered += fr.NotCoveredLines
	}
	if covered+notCovered > 0 {
		res.Coverage = 100 * float64(covered) / float64(covered+notCovered)
	}
	fmt.Fprintf(w, "%d passed, %d failed", res.Passed, res.Failed)
	if res.Skipped > 0 {
		fmt.Fprintf(w, ", %d skipped", res.Skipped)
	}
	fmt.Fprintf(w, "; coverage %.1f%%\n", res.Coverage)
	files := make([]string, 0, len(report.Files))
	for f := range report.Files {
		files = append(files, f)
	}
	slices.Sort(files)
	for _, f := range files {
		fmt.Fprintf(w, "  %5.1f%%  %s\n", report.Files[f].Coverage, f)
	}
	if len(results) == 0 {
		return res, fmt.Errorf("policy test: no tests found under %s", strings.Join(paths, " "))
	}
	return res, nil
}
