package intel

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gaissmai/bart"

	"github.com/quell-ir/quell/internal/enrich/netclass"
)

// indicator is the value stored per prefix. Times are Unix seconds; 0 means
// unbounded. It is kept small because a feed can hold millions of them.
type indicator struct {
	score float64
	from  int64
	until int64
}

func (in indicator) validAt(now int64) bool {
	return (in.from == 0 || now >= in.from) && (in.until == 0 || now < in.until)
}

// merge keeps the higher score and the union of the validity windows when a
// feed names the same prefix twice.
func merge(a, b indicator) indicator {
	out := a
	if b.score > out.score {
		out.score = b.score
	}
	if a.from == 0 || b.from == 0 {
		out.from = 0
	} else {
		out.from = min(a.from, b.from)
	}
	if a.until == 0 || b.until == 0 {
		out.until = 0
	} else {
		out.until = max(a.until, b.until)
	}
	return out
}

// table is one loaded feed. Most feed entries are single addresses: they
// live in hash maps keyed by the raw address bytes (one memory access per
// lookup instead of a walk down the trie, and less memory per entry), and
// only real prefixes go into the bart table. A host entry is always the
// most specific match, so checking the maps first keeps longest-prefix
// semantics.
type table struct {
	hosts4  map[[4]byte]indicator
	hosts6  map[[16]byte]indicator
	t       *bart.Table[indicator]
	skipped int // STIX indicators whose pattern is not an address match
	loaded  time.Time
}

func newTable() *table {
	return &table{hosts4: map[[4]byte]indicator{}, hosts6: map[[16]byte]indicator{}, t: new(bart.Table[indicator])}
}

// size is the number of distinct addresses and prefixes.
func (t *table) size() int { return len(t.hosts4) + len(t.hosts6) + t.t.Size() }

// all yields every entry (tests and dumps).
func (t *table) all(yield func(netip.Prefix, indicator) bool) {
	for a, in := range t.hosts4 {
		if !yield(netip.PrefixFrom(netip.AddrFrom4(a), 32), in) {
			return
		}
	}
	for a, in := range t.hosts6 {
		if !yield(netip.PrefixFrom(netip.AddrFrom16(a), 128), in) {
			return
		}
	}
	for p, in := range t.t.All() {
		if !yield(p, in) {
			return
		}
	}
}

func insert(t *table, p netip.Prefix, in indicator) {
	if p.IsSingleIP() {
		a := p.Addr()
		if a.Is4() {
			k := a.As4()
			if old, ok := t.hosts4[k]; ok {
				in = merge(old, in)
			}
			t.hosts4[k] = in
		} else {
			k := a.As16()
			if old, ok := t.hosts6[k]; ok {
				in = merge(old, in)
			}
			t.hosts6[k] = in
		}
		return
	}
	t.t.Modify(p, func(old indicator, ok bool) (indicator, bool) {
		if ok {
			return merge(old, in), false
		}
		return in, false
	})
}

// parseNetset reads FireHOL .netset / .ipset files and Spamhaus DROP style
// lists: one address or prefix a line, comments after '#' or ';'. A line
// that is neither is an error naming the line, so that a truncated or wrong
// file never replaces a good table.
func parseNetset(r io.Reader, score float64) (*table, error) {
	t := newTable()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		s := sc.Text()
		if i := strings.IndexAny(s, "#;"); i >= 0 {
			s = s[:i]
		}
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netclass.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		insert(t, p, indicator{score: score})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", line+1, err)
	}
	return t, nil
}

// parseCSV reads a CSV with a header row; ipCol names the address column and
// scoreCol the score column (empty: every row scores defScore). Scores are
// divided by scale and must land in 0..1.
func parseCSV(r io.Reader, ipCol, scoreCol string, scale, defScore float64) (*table, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	ipIdx, scoreIdx := -1, -1
	for i, h := range head {
		h = strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))
		if strings.EqualFold(h, ipCol) {
			ipIdx = i
		}
		if scoreCol != "" && strings.EqualFold(h, scoreCol) {
			scoreIdx = i
		}
	}
	if ipIdx < 0 {
		return nil, fmt.Errorf("header: no column %q", ipCol)
	}
	if scoreCol != "" && scoreIdx < 0 {
		return nil, fmt.Errorf("header: no column %q", scoreCol)
	}
	t := newTable()
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err // a *csv.ParseError names the line
		}
		line, _ := cr.FieldPos(0)
		if ipIdx >= len(rec) || (scoreIdx >= 0 && scoreIdx >= len(rec)) {
			return nil, fmt.Errorf("line %d: %d fields, too few", line, len(rec))
		}
		p, err := netclass.ParsePrefix(rec[ipIdx])
		if err != nil {
			return nil, fmt.Errorf("line %d: column %s: %w", line, ipCol, err)
		}
		s := defScore
		if scoreIdx >= 0 {
			v, err := strconv.ParseFloat(strings.TrimSpace(rec[scoreIdx]), 64)
			if err != nil || math.IsNaN(v) {
				return nil, fmt.Errorf("line %d: column %s: not a number: %q", line, scoreCol, rec[scoreIdx])
			}
			s = v / scale
			if s < 0 || s > 1 {
				return nil, fmt.Errorf("line %d: column %s: %v out of range 0..%v", line, scoreCol, v, scale)
			}
		}
		insert(t, p, indicator{score: s})
	}
	return t, nil
}

// parseJSONL reads one JSON object a line (Spamhaus DROP's drop_v4.json and
// drop_v6.json: {"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"},
// closed by a {"type":"metadata",...} line). ipKey names the address key,
// scoreKey the optional score. Objects with "type":"metadata" are skipped;
// any other object without ipKey is an error naming the line.
func parseJSONL(r io.Reader, ipKey, scoreKey string, scale, defScore float64) (*table, error) {
	t := newTable()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var obj map[string]any
		if err := json.Unmarshal(b, &obj); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		v, ok := obj[ipKey]
		if !ok {
			if obj["type"] == "metadata" {
				continue
			}
			return nil, fmt.Errorf("line %d: no key %q", line, ipKey)
		}
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("line %d: key %s: not a string", line, ipKey)
		}
		p, err := netclass.ParsePrefix(str)
		if err != nil {
			return nil, fmt.Errorf("line %d: key %s: %w", line, ipKey, err)
		}
		s := defScore
		if scoreKey != "" {
			f, ok := obj[scoreKey].(float64)
			if !ok {
				return nil, fmt.Errorf("line %d: key %s: not a number", line, scoreKey)
			}
			s = f / scale
			if !(s >= 0 && s <= 1) {
				return nil, fmt.Errorf("line %d: key %s: %v out of range 0..%v", line, scoreKey, f, scale)
			}
		}
		insert(t, p, indicator{score: s})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", line+1, err)
	}
	return t, nil
}

// STIX 2.1 bundle, only what quell reads.
type stixBundle struct {
	Type    string       `json:"type"`
	Objects []stixObject `json:"objects"`
}

type stixObject struct {
	Type        string     `json:"type"`
	ID          string     `json:"id"`
	Pattern     string     `json:"pattern"`
	PatternType string     `json:"pattern_type"`
	ValidFrom   *time.Time `json:"valid_from"`
	ValidUntil  *time.Time `json:"valid_until"`
	Revoked     bool       `json:"revoked"`
	Confidence  *int       `json:"confidence"`
}

var (
	// One comparison of an address object's value.
	stixCmpRE = regexp.MustCompile(`^\s*(ipv4-addr|ipv6-addr):value\s*(=|ISSUBSET)\s*'([^']*)'\s*$`)
)

// stixAddresses extracts the prefixes of a pattern made only of address
// comparisons joined by OR, in one or more observation brackets joined by
// OR. Anything else (AND, other objects, qualifiers) is not a plain address
// indicator: matching on its addresses alone would over-match, so it is
// skipped.
func stixAddresses(pattern string) ([]netip.Prefix, bool) {
	var out []netip.Prefix
	rest := strings.TrimSpace(pattern)
	for rest != "" {
		if rest[0] != '[' {
			return nil, false
		}
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return nil, false
		}
		for _, cmp := range strings.Split(rest[1:end], " OR ") {
			m := stixCmpRE.FindStringSubmatch(cmp)
			if m == nil {
				return nil, false
			}
			p, err := netclass.ParsePrefix(m[3])
			if err != nil || p.Addr().Is4() != (m[1] == "ipv4-addr") {
				return nil, false
			}
			out = append(out, p)
		}
		rest = strings.TrimSpace(rest[end+1:])
		if rest == "" {
			break
		}
		if !strings.HasPrefix(rest, "OR ") {
			return nil, false
		}
		rest = strings.TrimSpace(rest[3:])
	}
	return out, len(out) > 0
}

// parseSTIX reads a STIX 2.1 bundle. Indicators score confidence/100 when
// they carry a confidence, defScore otherwise; revoked ones are dropped;
// valid_from/valid_until are checked at lookup time, so an indicator that
// expires stops matching without a reload.
func parseSTIX(r io.Reader, defScore float64) (*table, error) {
	var b stixBundle
	dec := json.NewDecoder(r)
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("decode bundle: %w", err)
	}
	if b.Type != "bundle" {
		return nil, fmt.Errorf("type: want \"bundle\", got %q", b.Type)
	}
	t := newTable()
	for i, o := range b.Objects {
		if o.Type != "indicator" || o.Revoked {
			continue
		}
		if o.PatternType != "" && o.PatternType != "stix" {
			t.skipped++
			continue
		}
		prefixes, ok := stixAddresses(o.Pattern)
		if !ok {
			t.skipped++
			continue
		}
		in := indicator{score: defScore}
		if o.Confidence != nil {
			if *o.Confidence < 0 || *o.Confidence > 100 {
				return nil, fmt.Errorf("objects[%d] (%s).confidence: %d out of range 0..100", i, o.ID, *o.Confidence)
			}
			in.score = float64(*o.Confidence) / 100
		}
		if o.ValidFrom != nil {
			in.from = o.ValidFrom.Unix()
		}
		if o.ValidUntil != nil {
			in.until = o.ValidUntil.Unix()
			if in.until <= in.from && in.from != 0 {
				return nil, fmt.Errorf("objects[%d] (%s).valid_until: not after valid_from", i, o.ID)
			}
		}
		for _, p := range prefixes {
			insert(t, p, in)
		}
	}
	return t, nil
}
