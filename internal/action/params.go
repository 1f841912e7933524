package action

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ParamType is the type of an action parameter. Event fields are
// attacker-controlled, so every value is parsed into its type before an
// action sees it; there is no untyped "string that goes into a command".
type ParamType string

const (
	TypeIP       ParamType = "ip"        // an IPv4 or IPv6 address
	TypeCIDR     ParamType = "cidr"      // an address or a prefix; a bare address becomes /32 or /128
	TypeDuration ParamType = "duration"  // Go duration: 90s, 1h
	TypeName     ParamType = "name"      // a DNS-1123 label or subdomain (Kubernetes names)
	TypeString   ParamType = "string"    // printable text, no control characters
	TypeInt      ParamType = "int"       // a decimal integer, bounded by Min/Max
	TypeBool     ParamType = "bool"      // true/false
	TypeEnum     ParamType = "enum"      // one of Enum
	TypePort     ParamType = "port"      // 1..65535
	TypePorts    ParamType = "ports"     // comma-separated ports
	TypeCIDRList ParamType = "cidr_list" // comma-separated prefixes
	TypeKeyValue ParamType = "key_value" // k=v label pairs, comma-separated
	TypeIdent    ParamType = "ident"     // [A-Za-z0-9_.:@/+=-], e.g. an access key id, an ARN
)

// Param describes one parameter.
type Param struct {
	Name        string    `json:"name"`
	Type        ParamType `json:"type"`
	Required    bool      `json:"required,omitempty"`
	Default     string    `json:"default,omitempty"`
	Enum        []string  `json:"enum,omitempty"`
	Min         int       `json:"min,omitempty"`
	Max         int       `json:"max,omitempty"`
	Description string    `json:"description"`
}

var (
	dns1123RE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	identRE    = regexp.MustCompile(`^[A-Za-z0-9_.:@/+=,-]+$`)
	labelKeyRE = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	labelValRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)
)

// MaxParamLen bounds every parameter value.
const MaxParamLen = 4096

func (s Spec) checkParams() error {
	seen := map[string]bool{}
	for _, p := range s.Params {
		if p.Name == "" || seen[p.Name] {
			return fmt.Errorf("parameter names must be unique and non-empty (%q)", p.Name)
		}
		seen[p.Name] = true
		if p.Type == TypeEnum && len(p.Enum) == 0 {
			return fmt.Errorf("parameter %s: enum without values", p.Name)
		}
		if p.Default != "" {
			if _, err := parseValue(p, p.Default); err != nil {
				return fmt.Errorf("parameter %s: default: %w", p.Name, err)
			}
		}
	}
	return nil
}

// Validate parses raw values against the spec: unknown parameters, missing
// required ones and values that do not parse as their type are errors that
// name the parameter.
func (s Spec) Validate(raw map[string]string) (Values, error) {
	v := Values{raw: map[string]string{}, typed: map[string]any{}}
	known := map[string]Param{}
	for _, p := range s.Params {
		known[p.Name] = p
	}
	names := make([]string, 0, len(raw))
	for k := range raw {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if _, ok := known[k]; !ok {
			return Values{}, fmt.Errorf("parameter %q: unknown (known: %s)", k, strings.Join(paramNames(s.Params), ", "))
		}
	}
	for _, p := range s.Params {
		val, ok := raw[p.Name]
		if !ok || val == "" {
			if p.Default != "" {
				val, ok = p.Default, true
			} else if p.Required {
				return Values{}, fmt.Errorf("parameter %q: required", p.Name)
			} else {
				continue
			}
		}
		typed, err := parseValue(p, val)
		if err != nil {
			return Values{}, fmt.Errorf("parameter %q: %w", p.Name, err)
		}
		v.raw[p.Name] = val
		v.typed[p.Name] = typed
	}
	return v, nil
}

func paramNames(ps []Param) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}

func parseValue(p Param, s string) (any, error) {
	if len(s) > MaxParamLen {
		return nil, fmt.Errorf("longer than %d bytes", MaxParamLen)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return nil, fmt.Errorf("contains a control character")
		}
	}
	switch p.Type {
	case TypeIP:
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("not an IP address: %q", s)
		}
		return a.Unmap(), nil
	case TypeCIDR:
		return parsePrefix(s)
	case TypeCIDRList:
		var out []netip.Prefix
		for _, part := range splitList(s) {
			pf, err := parsePrefix(part)
			if err != nil {
				return nil, err
			}
			out = append(out, pf)
		}
		return out, nil
	case TypeDuration:
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("not a non-negative duration: %q", s)
		}
		return d, nil
	case TypeName:
		if len(s) > 253 || !dns1123RE.MatchString(s) {
			return nil, fmt.Errorf("not a DNS-1123 name: %q", s)
		}
		return s, nil
	case TypeIdent:
		if !identRE.MatchString(s) {
			return nil, fmt.Errorf("not an identifier (letters, digits and _.:@/+=,-): %q", s)
		}
		return s, nil
	case TypeString:
		return s, nil
	case TypeInt:
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("not an integer: %q", s)
		}
		if (p.Min != 0 || p.Max != 0) && (n < p.Min || n > p.Max) {
			return nil, fmt.Errorf("%d is outside %d..%d", n, p.Min, p.Max)
		}
		return n, nil
	case TypeBool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("not a boolean: %q", s)
		}
		return b, nil
	case TypeEnum:
		for _, e := range p.Enum {
			if s == e {
				return s, nil
			}
		}
		return nil, fmt.Errorf("%q is not one of %s", s, strings.Join(p.Enum, ", "))
	case TypePort:
		return parsePort(s)
	case TypePorts:
		var out []uint16
		for _, part := range splitList(s) {
			n, err := parsePort(part)
			if err != nil {
				return nil, err
			}
			out = append(out, n)
		}
		return out, nil
	case TypeKeyValue:
		out := map[string]string{}
		for _, part := range splitList(s) {
			k, val, ok := strings.Cut(part, "=")
			if !ok || !labelKeyRE.MatchString(k) || len(val) > 63 || !labelValRE.MatchString(val) {
				return nil, fmt.Errorf("not a label pair key=value: %q", part)
			}
			out[k] = val
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown parameter type %q", p.Type)
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("not a port 1..65535: %q", s)
	}
	return uint16(n), nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a CIDR: %q", s)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("not an address or CIDR: %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Values are validated, typed parameters. Getters return the zero value for
// an absent optional parameter.
type Values struct {
	raw   map[string]string
	typed map[string]any
}

// Raw returns the validated parameters as strings, for persistence: the
// transaction record keeps them so recovery can rebuild the action.
func (v Values) Raw() map[string]string {
	out := make(map[string]string, len(v.raw))
	for k, s := range v.raw {
		out[k] = s
	}
	return out
}

// Has reports whether a parameter was given or defaulted.
func (v Values) Has(name string) bool { _, ok := v.typed[name]; return ok }

func get[T any](v Values, name string) T {
	t, _ := v.typed[name].(T)
	return t
}

func (v Values) IP(name string) netip.Addr               { return get[netip.Addr](v, name) }
func (v Values) Prefix(name string) netip.Prefix         { return get[netip.Prefix](v, name) }
func (v Values) Prefixes(name string) []netip.Prefix     { return get[[]netip.Prefix](v, name) }
func (v Values) Duration(name string) time.Duration      { return get[time.Duration](v, name) }
func (v Values) String(name string) string               { return get[string](v, name) }
func (v Values) Int(name string) int                     { return get[int](v, name) }
func (v Values) Bool(name string) bool                   { return get[bool](v, name) }
func (v Values) Port(name string) uint16                 { return get[uint16](v, name) }
func (v Values) Ports(name string) []uint16              { return get[[]uint16](v, name) }
func (v Values) KeyValues(name string) map[string]string { return get[map[string]string](v, name) }
