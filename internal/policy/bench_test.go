package policy

import (
	"context"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/txn"
)

// reportPercentiles records p50/p99 of per-call latencies as benchmark
// metrics (target: p99 <= 100µs for a prepared query with the shipped policy).
func reportPercentiles(b *testing.B, lat []time.Duration) {
	b.Helper()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) float64 {
		i := int(q * float64(len(lat)-1))
		return float64(lat[i].Nanoseconds()) / 1e3
	}
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}

// cpuTime is the process's user+system CPU time. Divided by the iterations
// it gives the mean CPU cost of a decision independent of how loaded the
// machine is (wall-clock percentiles on a shared 2-core machine mostly
// measure waiting for a core).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration, n int) {
	if n > 0 {
		b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/1e3/float64(n), "cpu-µs/op")
	}
}

// BenchmarkDecide is one full decision with the shipped policies: build the
// input, hash it, evaluate the prepared query, map the result.
func BenchmarkDecide(b *testing.B) {
	ev := guardDutyEvent(b, samplePath(b, gdIAMSample))
	cases := []struct {
		name string
		in   txn.DecisionInput
	}{
		{"revoke_allow", gdRequest(ev, "HIGH", disableKeySpec, []action.Target{{Kind: "access_key", Value: "GeneratedFindingAccessKeyId"}}, "")},
		{"revoke_deny_excepted_or_low", gdRequest(ev, "MEDIUM", disableKeySpec, []action.Target{{Kind: "access_key", Value: "GeneratedFindingAccessKeyId"}}, "")},
		{"terminate_approval", gdRequest(ev, "HIGH", terminateSpec, []action.Target{{Kind: "instance", Value: "i-99999999"}}, "inc-snapshot")},
	}
	e := newEngine(b, examplesDir(b), Options{Incidents: fakeIncidents{"inc-snapshot": {ID: "inc-snapshot", Evidence: []string{"aws.snapshot"}}}})
	ctx := context.Background()
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			c0 := cpuTime()
			for b.Loop() {
				t0 := time.Now()
				d, _ := e.Decide(ctx, c.in)
				lat = append(lat, time.Since(t0))
				if d.Verdict == "" || containsReason(d.Reasons, "fail closed") {
					b.Fatalf("bad decision %+v", d)
				}
			}
			reportCPU(b, c0, len(lat))
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkPreparedEval isolates the prepared query's evaluation from input
// building and hashing.
func BenchmarkPreparedEval(b *testing.B) {
	ev := guardDutyEvent(b, samplePath(b, gdIAMSample))
	e := newEngine(b, examplesDir(b), Options{})
	in := BuildInput(gdRequest(ev, "HIGH", disableKeySpec, []action.Target{{Kind: "access_key", Value: "GeneratedFindingAccessKeyId"}}, ""), nil, false)
	value, _, err := encodeInput(in)
	if err != nil {
		b.Fatal(err)
	}
	pq := e.cur.Load().query
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	c0 := cpuTime()
	for b.Loop() {
		t0 := time.Now()
		rs, err := pq.Eval(ctx, rego.EvalParsedInput(value))
		lat = append(lat, time.Since(t0))
		if err != nil || len(rs) != 1 {
			b.Fatalf("eval: %v %v", rs, err)
		}
	}
	reportCPU(b, c0, len(lat))
	reportPercentiles(b, lat)
}
