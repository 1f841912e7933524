package intel

import (
	"strings"
	"testing"
)

// Feed files come from third parties: no input may panic a parser, and
// whatever a parser accepts must be a well-formed table.
func FuzzParsers(f *testing.F) {
	for _, s := range []string{fireholNetset, spamhausDrop, "ip,score\n1.2.3.4,0.5\n",
		`{"type":"bundle","objects":[{"type":"indicator","pattern":"[ipv4-addr:value = '1.2.3.4'] OR [ipv6-addr:value = '::1']"}]}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, parse := range []func() (*table, error){
			func() (*table, error) { return parseNetset(strings.NewReader(s), 1) },
			func() (*table, error) { return parseCSV(strings.NewReader(s), "ip", "score", 1, 1) },
			func() (*table, error) { return parseSTIX(strings.NewReader(s), 1) },
			func() (*table, error) { return parseJSONL(strings.NewReader(s), "cidr", "score", 100, 1) },
		} {
			tb, err := parse()
			if err != nil {
				continue
			}
			for p, in := range tb.all {
				if !p.IsValid() || p != p.Masked() || in.score < 0 || in.score > 1 {
					t.Fatalf("accepted bad entry %s %+v from %q", p, in, s)
				}
			}
		}
		stixAddresses(s)
	})
}
