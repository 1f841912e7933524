package intel

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newMetrics(t testing.TB) (*Metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func write(t testing.TB, path, body string) {
	t.Helper()
	// Write then rename, as feed downloaders do, so a reader never sees
	// half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const fireholNetset = `#
# firehol_level1
#
# ipv4 hash:net ipset
#
# Maintainer      : FireHOL
#
0.0.0.0/8
1.10.16.0/20
5.188.10.0/23
192.0.2.66
2001:db8:bad::/48
`

const spamhausDrop = `; Spamhaus DROP List 2024/01/01 - (c) 2024 The Spamhaus Project SLU
; https://www.spamhaus.org/drop/drop.txt
; Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT
1.10.16.0/20 ; SBL256894
2.56.192.0/22 ; SBL459831
`

func TestParseFormats(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "level1.netset"), fireholNetset)
	write(t, filepath.Join(dir, "drop.txt"), spamhausDrop)
	write(t, filepath.Join(dir, "scores.csv"), "# exported\nindicator,confidence,first_seen\n198.51.100.7,93,2024-01-01\n198.51.100.0/24,40,2024-01-01\n\"2001:db8:c::1\",100,x\n")
	write(t, filepath.Join(dir, "drop_v4.json"), `{"cidr":"2.57.122.0/24","sblid":"SBL636050","rir":"ripencc"}
{"cidr":"5.134.128.0/19","sblid":"SBL270738","rir":"ripencc"}
{"type":"metadata","timestamp":1717171717,"size":84211,"records":1234,"copyright":"(c) 2024 The Spamhaus Project SLU","terms":"https://www.spamhaus.org/drop/terms/"}
`)
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	write(t, filepath.Join(dir, "bundle.json"), `{
  "type": "bundle", "id": "bundle--1",
  "objects": [
    {"type": "identity", "id": "identity--1", "name": "x"},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--a", "pattern_type": "stix",
     "pattern": "[ipv4-addr:value = '203.0.113.10']", "valid_from": "2025-01-01T00:00:00Z", "valid_until": "2025-07-01T00:00:00Z", "confidence": 85},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--b", "pattern_type": "stix",
     "pattern": "[ipv4-addr:value = '203.0.113.20' OR ipv4-addr:value = '203.0.113.21'] OR [ipv6-addr:value = '2001:db8:e::/64']", "valid_from": "2025-01-01T00:00:00Z"},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--future", "pattern_type": "stix",
     "pattern": "[ipv4-addr:value = '203.0.113.30']", "valid_from": "2026-01-01T00:00:00Z"},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--expired", "pattern_type": "stix",
     "pattern": "[ipv4-addr:value ISSUBSET '203.0.113.128/25']", "valid_from": "2024-01-01T00:00:00Z", "valid_until": "2024-02-01T00:00:00Z"},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--revoked", "revoked": true, "pattern_type": "stix",
     "pattern": "[ipv4-addr:value = '203.0.113.40']", "valid_from": "2024-01-01T00:00:00Z"},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--and", "pattern_type": "stix",
     "pattern": "[ipv4-addr:value = '203.0.113.50' AND network-traffic:dst_port = 22]", "valid_from": "2024-01-01T00:00:00Z"},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--domain", "pattern_type": "stix",
     "pattern": "[domain-name:value = 'evil.example']", "valid_from": "2024-01-01T00:00:00Z"},
    {"type": "indicator", "spec_version": "2.1", "id": "indicator--sigma", "pattern_type": "sigma",
     "pattern": "title: x", "valid_from": "2024-01-01T00:00:00Z"}
  ]}`)
	var clock atomic.Int64
	clock.Store(now.Unix())
	m, reg := newMetrics(t)
	fs, err := New(Config{Feeds: []FeedConfig{
		{Name: "firehol_level1", Path: filepath.Join(dir, "level1.netset"), Format: FormatNetset},
		{Name: "spamhaus_drop", Path: filepath.Join(dir, "drop.txt"), Format: FormatNetset, Score: 0.9},
		{Name: "vendor_csv", Path: filepath.Join(dir, "scores.csv"), Format: FormatCSV, IPColumn: "indicator", ScoreColumn: "confidence", ScoreScale: 100},
		{Name: "misp", Path: filepath.Join(dir, "bundle.json"), Format: FormatSTIX, Score: 0.7},
		{Name: "drop_json", Path: filepath.Join(dir, "drop_v4.json"), Format: FormatJSONL, Score: 0.95},
	}}, m, discard(), func() time.Time { return time.Unix(clock.Load(), 0) })
	if err != nil {
		t.Fatal(err)
	}
	type hit map[string]float64
	cases := []struct {
		ip   string
		want hit
	}{
		{"1.10.20.1", hit{"firehol_level1": 1, "spamhaus_drop": 0.9}},
		{"2.56.195.255", hit{"spamhaus_drop": 0.9}},
		{"2.56.196.0", hit{}},
		{"192.0.2.66", hit{"firehol_level1": 1}},
		{"::ffff:192.0.2.66", hit{"firehol_level1": 1}},
		{"192.0.2.67", hit{}},
		{"2001:db8:bad:1::5", hit{"firehol_level1": 1}},
		{"198.51.100.7", hit{"vendor_csv": 0.93}},
		{"198.51.100.8", hit{"vendor_csv": 0.40}},
		{"2001:db8:c::1", hit{"vendor_csv": 1}},
		{"203.0.113.10", hit{"misp": 0.85}},
		{"203.0.113.21", hit{"misp": 0.7}},
		{"2001:db8:e::99", hit{"misp": 0.7}},
		{"203.0.113.30", hit{}},  // not valid yet
		{"203.0.113.200", hit{}}, // expired
		{"203.0.113.40", hit{}},  // revoked
		{"203.0.113.50", hit{}},  // AND pattern: not an address indicator
		{"2.57.122.1", hit{"drop_json": 0.95}},
		{"5.134.159.255", hit{"drop_json": 0.95}},
		{"8.8.8.8", hit{}},
	}
	check := func(label string) {
		t.Helper()
		for _, c := range cases {
			got := hit{}
			for _, s := range fs.Lookup(netip.MustParseAddr(c.ip)) {
				got[s.Name] = s.Score
			}
			if len(got) != len(c.want) {
				t.Errorf("%s: Lookup(%s) = %v, want %v", label, c.ip, got, c.want)
				continue
			}
			for k, v := range c.want {
				if g, ok := got[k]; !ok || g < v-1e-6 || g > v+1e-6 {
					t.Errorf("%s: Lookup(%s) = %v, want %v", label, c.ip, got, c.want)
				}
			}
		}
	}
	check("now")
	// Move the clock past indicator--a's valid_until and beyond the
	// future one's valid_from: no reload needed.
	clock.Store(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC).Unix())
	cases[10].want = hit{}
	cases[13].want = hit{"misp": 0.7}
	check("later")
	if got := testutil.ToFloat64(m.entries.WithLabelValues("misp")); got != 6 {
		t.Errorf("misp entries = %v, want 6", got)
	}
	if n, err := testutil.GatherAndCount(reg, "quell_intel_feed_reloads_total"); err != nil || n != 5 {
		t.Errorf("reload series = %d, %v", n, err)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, c := range []struct {
		format, body, want string
		cfg                FeedConfig
	}{
		{FormatNetset, "1.2.3.4\n1.2.3\n", "line 2", FeedConfig{}},
		{FormatNetset, "# only comments\n", "no entries", FeedConfig{}},
		{FormatCSV, "ip,score\n1.2.3.4,0.5\n1.2.3.5,high\n", "line 3: column score: not a number", FeedConfig{ScoreColumn: "score"}},
		{FormatCSV, "ip,score\n1.2.3.4,150\n", "out of range", FeedConfig{ScoreColumn: "score"}},
		{FormatCSV, "addr,score\n1.2.3.4,1\n", `no column "ip"`, FeedConfig{}},
		{FormatSTIX, `{"type":"bundle","objects":[`, "decode bundle", FeedConfig{}},
		{FormatJSONL, "{\"cidr\":\"1.2.3.0/24\"}\n{\"sblid\":\"x\"}\n", `line 2: no key "cidr"`, FeedConfig{}},
		{FormatJSONL, "{\"cidr\":\"1.2.3.0/24\"}\n{\"cidr\":", "line 2", FeedConfig{}},
		{FormatJSONL, "{\"ip\":\"1.2.3.4\",\"s\":\"hi\"}\n", "key s: not a number", FeedConfig{IPColumn: "ip", ScoreColumn: "s"}},
		{FormatSTIX, `{"type":"indicator"}`, `want "bundle"`, FeedConfig{}},
		{FormatSTIX, `{"type":"bundle","objects":[{"type":"indicator","id":"indicator--x","pattern":"[ipv4-addr:value = '1.2.3.4']","confidence":300}]}`, "confidence", FeedConfig{}},
	} {
		p := filepath.Join(t.TempDir(), "feed")
		write(t, p, c.body)
		fc := c.cfg
		fc.Name, fc.Path, fc.Format = "f", p, c.format
		m, _ := newMetrics(t)
		_, err := New(Config{Feeds: []FeedConfig{fc}}, m, discard(), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: err = %v, want it to mention %q", c.format, c.body, err, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{Config{Feeds: []FeedConfig{{Path: "x", Format: "netset"}}}, "feeds[0].name"},
		{Config{Feeds: []FeedConfig{{Name: "a", Path: "x", Format: "netset"}, {Name: "a", Path: "y", Format: "netset"}}}, "feeds[1].name"},
		{Config{Feeds: []FeedConfig{{Name: "a", Format: "netset"}}}, "feeds[0].path"},
		{Config{Feeds: []FeedConfig{{Name: "a", Path: "x", Format: "xml"}}}, "feeds[0].format"},
		{Config{Feeds: []FeedConfig{{Name: "a", Path: "x", Format: "netset", Score: 2}}}, "feeds[0].score"},
		{Config{Feeds: []FeedConfig{{Name: "a", Path: "x", Format: "stix", ScoreColumn: "s"}}}, "feeds[0].score_column"},
		{Config{Debounce: -1}, "debounce"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("Validate = %v, want error naming %s", err, c.field)
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReloadOnChange(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "block.netset")
	write(t, p, "192.0.2.1\n")
	m, reg := newMetrics(t)
	fs, err := New(Config{Debounce: 20 * time.Millisecond, Feeds: []FeedConfig{{Name: "blk", Path: p, Format: FormatNetset}}}, m, discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fs.Watch(ctx) }()
	defer func() { cancel(); <-done }()
	a1, a2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")

	// The watcher is set up asynchronously: keep rewriting until the
	// first reload is seen, so the test does not race the watch setup.
	waitFor(t, "reload after replace", func() bool {
		write(t, p, "192.0.2.2\n")
		ok, _ := fs.Generation("blk")
		return ok >= 2
	})
	if len(fs.Lookup(a1)) != 0 || len(fs.Lookup(a2)) != 1 {
		t.Fatalf("after reload: a1=%v a2=%v", fs.Lookup(a1), fs.Lookup(a2))
	}
	// A broken file fails the reload and keeps the previous table.
	write(t, p, "192.0.2.3\nnot-an-ip\n")
	waitFor(t, "failed reload", func() bool { _, f := fs.Generation("blk"); return f >= 1 })
	if len(fs.Lookup(a2)) != 1 {
		t.Fatal("failed reload dropped the previous table")
	}
	if len(fs.Lookup(netip.MustParseAddr("192.0.2.3"))) != 0 {
		t.Fatal("failed reload applied part of the broken file")
	}
	if got := testutil.ToFloat64(m.reloads.WithLabelValues("blk", "error")); got < 1 {
		t.Errorf("error reloads metric = %v", got)
	}
	_ = reg
	// In-place writes (no rename) are seen too.
	if err := os.WriteFile(p, []byte("192.0.2.4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload after in-place write", func() bool { return len(fs.Lookup(netip.MustParseAddr("192.0.2.4"))) == 1 })
}

// genIndicators writes n random /32 (and some /24) indicators as CSV.
func genIndicators(tb testing.TB, n int) (string, []netip.Addr) {
	r := rand.New(rand.NewPCG(42, 43))
	var sb strings.Builder
	sb.WriteString("ip,score\n")
	sample := make([]netip.Addr, 0, 4096)
	for i := 0; i < n; i++ {
		a := netip.AddrFrom4([4]byte{byte(1 + r.UintN(223)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))})
		if i%50 == 0 {
			fmt.Fprintf(&sb, "%s/24,%.2f\n", netip.PrefixFrom(a, 24).Masked().Addr(), r.Float64())
		} else {
			fmt.Fprintf(&sb, "%s,%.2f\n", a, r.Float64())
		}
		if len(sample) < cap(sample) && i%3 == 0 {
			sample = append(sample, a)
		}
	}
	p := filepath.Join(tb.TempDir(), "million.csv")
	if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	return p, sample
}

// BenchmarkLookup1M loads 1,000,000 indicators and measures a lookup mixing
// hits and misses. It reports the live heap after GC.
func BenchmarkLookup1M(b *testing.B) {
	p, sample := genIndicators(b, 1_000_000)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	m, _ := newMetrics(b)
	start := time.Now()
	fs, err := New(Config{Feeds: []FeedConfig{{Name: "big", Path: p, Format: FormatCSV, ScoreColumn: "score"}}}, m, discard(), nil)
	if err != nil {
		b.Fatal(err)
	}
	load := time.Since(start)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	debug.FreeOSMemory() // return the parse garbage so RSS shows what stays
	rss := residentMB()
	r := rand.New(rand.NewPCG(7, 8))
	probes := make([]netip.Addr, 8192)
	for i := range probes {
		if i%2 == 0 {
			probes[i] = sample[r.IntN(len(sample))]
		} else {
			probes[i] = netip.AddrFrom4([4]byte{byte(1 + r.UintN(223)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))})
		}
	}
	b.ResetTimer()
	hits := 0
	cpu0 := cpuTime()
	n := 0
	for i := 0; b.Loop(); i++ {
		hits += len(fs.Lookup(probes[i&8191]))
		n++
	}
	// CPU time per lookup, next to the wall time: on a shared, loaded
	// machine wall time also counts the time other processes held the CPU.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(n), "cpu_ns/op")
	if hits == 0 {
		b.Fatal("no hits")
	}
	// Reported after the loop: ResetTimer drops metrics reported before it.
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heapMB")
	b.ReportMetric(load.Seconds(), "load_s")
	b.ReportMetric(rss, "rssMB")
	runtime.KeepAlive(fs)
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// residentMB reads the process's resident set size from /proc (Linux).
func residentMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return float64(kb) / 1024
		}
	}
	return -1
}

// TestHostAndPrefixPrecedence: a host entry wins over a covering prefix,
// and when the host entry is out of its validity window the covering
// prefix (or a valid supernet further up) answers.
func TestHostAndPrefixPrecedence(t *testing.T) {
	tb := newTable()
	insert(tb, netip.MustParsePrefix("192.0.2.0/24"), indicator{score: 0.3})
	insert(tb, netip.MustParsePrefix("192.0.2.0/28"), indicator{score: 0.4, until: 100})
	insert(tb, netip.MustParsePrefix("192.0.2.7/32"), indicator{score: 0.9, from: 50, until: 100})
	insert(tb, netip.MustParsePrefix("192.0.2.8/32"), indicator{score: 0.2})
	insert(tb, netip.MustParsePrefix("192.0.2.8/32"), indicator{score: 0.6}) // merged: max
	at := func(sec int64) func() time.Time { return func() time.Time { return time.Unix(sec, 0) } }
	for _, c := range []struct {
		ip   string
		now  int64
		want float64
		ok   bool
	}{
		{"192.0.2.7", 60, 0.9, true},  // host valid
		{"192.0.2.7", 10, 0.4, true},  // host not yet valid: the /28 answers
		{"192.0.2.7", 200, 0.3, true}, // host and /28 expired: the /24 answers
		{"192.0.2.8", 200, 0.6, true},
		{"192.0.2.200", 0, 0.3, true},
		{"192.0.3.1", 0, 0, false},
	} {
		in, ok := lookup(tb, netip.MustParseAddr(c.ip), at(c.now))
		if ok != c.ok || in.score != c.want {
			t.Errorf("lookup(%s at %d) = %v %v, want %v %v", c.ip, c.now, in.score, ok, c.want, c.ok)
		}
	}
	if tb.size() != 4 {
		t.Errorf("size = %d, want 4", tb.size())
	}
}
