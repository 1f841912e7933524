package decode

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Int is a JSON integer that real tools also send as a string ("8888",
// "-1"), as a float with no fraction (22.0) or as null. Anything else is an
// error that names the field.
type Int int64

// UnmarshalJSON implements json.Unmarshaler.
func (n *Int) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	s, empty, err := numberText(b)
	if err != nil || empty {
		if empty && len(b) > 0 && b[0] == '"' {
			*n = 0
		}
		return err
	}
	v, ok := ParseInt(s)
	if !ok {
		return typeErr(b, "integer")
	}
	*n = Int(v)
	return nil
}

// numberText unwraps a JSON number that may be quoted: empty is true for
// null, nothing, or an empty string, which leave the value unset.
func numberText(b []byte) (s string, empty bool, err error) {
	if len(b) == 0 || string(b) == "null" {
		return "", true, nil
	}
	s = string(b)
	if b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return "", false, err
		}
		s = strings.TrimSpace(s)
	}
	return s, s == "", nil
}

// ParseInt parses an integer written as digits or as a float without
// fraction.
func ParseInt(s string) (int64, bool) {
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, false
	}
	return int64(f), true
}

// Float is a JSON number that may arrive as a string ("8.0").
type Float float64

// UnmarshalJSON implements json.Unmarshaler.
func (n *Float) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	s, empty, err := numberText(b)
	if err != nil || empty {
		return err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return typeErr(b, "number")
	}
	*n = Float(f)
	return nil
}

// String is a JSON scalar kept as text: strings as they are, numbers and
// booleans in their JSON spelling, null as "". Objects and arrays are an
// error.
type String string

// UnmarshalJSON implements json.Unmarshaler.
func (s *String) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch Kind(b) {
	case 'n':
		*s = ""
		return nil
	case '"':
		var v string
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		*s = String(v)
		return nil
	case '{', '[':
		return typeErr(b, "string")
	}
	*s = String(b)
	return nil
}

// Time is a timestamp in any of the spellings security tools emit:
// RFC 3339 (with or without fraction or offset), Go's time.String() form
// ("2020-11-28 10:20:46 +0000 UTC", with or without a monotonic "m=+…"
// suffix), or a Unix epoch number in seconds, milliseconds or nanoseconds
// (as a number or a digit string). The zero time "0001-01-01T00:00:00Z" and
// null decode to the zero Time.
type Time struct{ time.Time }

// UnmarshalJSON implements json.Unmarshaler.
func (t *Time) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch Kind(b) {
	case 'n':
		return nil
	case '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := ParseTime(s)
		if err != nil {
			return typeErr(b, "timestamp")
		}
		t.Time = v
		return nil
	case '0':
		v, err := ParseTime(string(b))
		if err != nil {
			return typeErr(b, "timestamp")
		}
		t.Time = v
		return nil
	}
	return typeErr(b, "timestamp")
}

// typeErr is a *json.UnmarshalTypeError so that encoding/json fills in the
// path of the field, which decode.Wrap turns into a FieldError.
func typeErr(b []byte, want string) error {
	v := string(b)
	if len(v) > 40 {
		v = v[:40] + "…"
	}
	t := reflect.TypeFor[string]()
	switch want {
	case "integer":
		t = reflect.TypeFor[int64]()
	case "number":
		t = reflect.TypeFor[float64]()
	case "timestamp":
		t = reflect.TypeFor[time.Time]()
	}
	return &json.UnmarshalTypeError{Value: v, Type: t}
}

var goTimeString = regexp.MustCompile(`^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,9})?) ([+-]\d{4})(?: [A-Za-z0-9+-]{1,10})?(?: m=[+-][0-9.]+)?$`)

// ParseTime parses the timestamp spellings documented on Time.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02T15:04:05.999999999Z0700", "2006-01-02 15:04:05.999999999Z07:00"} {
		if v, err := time.Parse(layout, s); err == nil {
			return zeroIfYearOne(v), nil
		}
	}
	if m := goTimeString.FindStringSubmatch(s); m != nil {
		v, err := time.Parse("2006-01-02 15:04:05.999999999 -0700", m[1]+" "+m[2])
		if err == nil {
			return zeroIfYearOne(v), nil
		}
	}
	if n, ok := ParseInt(s); ok {
		return FromEpoch(n), nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) && f > 0 && f < 1e11 {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1e6))*1000).UTC(), nil // float seconds carry microseconds at best
	}
	return time.Time{}, fmt.Errorf("unrecognised timestamp %.60q", s)
}

// FromEpoch reads an epoch number whose unit is guessed from its size:
// seconds, milliseconds, microseconds or nanoseconds. Every real timestamp
// since 1973 is unambiguous under this rule.
func FromEpoch(n int64) time.Time {
	switch {
	case n <= 0:
		return time.Time{}
	case n < 1e11:
		return time.Unix(n, 0).UTC()
	case n < 1e14:
		return time.UnixMilli(n).UTC()
	case n < 1e17:
		return time.UnixMicro(n).UTC()
	}
	return time.Unix(0, n).UTC()
}

func zeroIfYearOne(t time.Time) time.Time {
	if t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

// IP returns s as a canonical IP address, or "" when s is not one. The
// unspecified addresses (0.0.0.0, ::), which GuardDuty sample findings use as
// placeholders, never name a host and are refused too, as are zoned IPv6. Dotted
// quads with leading zeros ("211.9.016.253") are refused on purpose: they
// are ambiguous (decimal or octal, depending on the parser that later reads
// them), and a blocking action must never guess which host it targets.
func IP(s string) string {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || a.IsUnspecified() || a.Zone() != "" {
		return ""
	}
	return a.Unmap().String()
}

// HostPort splits "10.0.0.1:443", "[::1]:80" or a bare address into an IP
// and port. ok is false when the address part is not an IP.
func HostPort(s string) (ip string, port int, ok bool) {
	s = strings.TrimSpace(s)
	if ip = IP(s); ip != "" {
		return ip, 0, true
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || IP(ap.Addr().String()) == "" {
		return "", 0, false
	}
	return ap.Addr().Unmap().String(), int(ap.Port()), true
}

// Port returns n when it is a valid port number, else 0.
func Port(n int64) int {
	if n <= 0 || n > 65535 {
		return 0
	}
	return int(n)
}

// MaxString bounds the length of any string a parser copies from input into
// a model field (Raw keeps everything verbatim).
const MaxString = 4096

// Clip bounds s to MaxString bytes without splitting a UTF-8 sequence.
func Clip(s string) string {
	if len(s) <= MaxString {
		return s
	}
	cut := MaxString
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut]
}

var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
var dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

// K8sLabel returns s when it is a valid DNS-1123 label (namespace names),
// else "". Labels that merely look like a namespace ("whatever/promstack")
// stay in Labels instead of becoming an entity an action could target.
func K8sLabel(s string) string {
	if dns1123Label.MatchString(s) {
		return s
	}
	return ""
}

// K8sName returns s when it is a valid DNS-1123 subdomain (pod, node,
// service account names), else "".
func K8sName(s string) string {
	if dns1123Subdomain.MatchString(s) {
		return s
	}
	return ""
}
