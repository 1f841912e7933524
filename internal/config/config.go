// Package config loads quell's one YAML configuration file, applies QUELL_*
// environment overrides, and validates the whole before anything uses it.
// Errors carry file, line and field, so `quell validate` can point at them.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/quell-ir/quell/internal/action/builtin"
	"github.com/quell-ir/quell/internal/action/firewall"
	"github.com/quell-ir/quell/internal/action/kube"
	"github.com/quell-ir/quell/internal/enrich"
	"github.com/quell-ir/quell/internal/intake"
	"github.com/quell-ir/quell/internal/pipeline"
	"github.com/quell-ir/quell/internal/policy"
	"github.com/quell-ir/quell/internal/risk"
	"github.com/quell-ir/quell/internal/server"
	"github.com/quell-ir/quell/internal/source"
	"github.com/quell-ir/quell/internal/source/auth"
	"github.com/quell-ir/quell/internal/source/tail"
	"github.com/quell-ir/quell/internal/txn"
)

// Config is the whole configuration. Every field has a default; see
// docs/configuration.md.
type Config struct {
	Server    Server          `yaml:"server"`
	DataDir   string          `yaml:"data_dir"`
	Mode      txn.Mode        `yaml:"mode"`
	Log       Log             `yaml:"log"`
	Intake    intake.Config   `yaml:"intake"`
	Pipeline  pipeline.Config `yaml:"pipeline"`
	Engine    txn.Config      `yaml:"engine"`
	Protected Protected       `yaml:"protected"`
	Playbooks []string        `yaml:"playbooks"`
	Actions   builtin.Config  `yaml:"actions"`
	Policy    policy.Config   `yaml:"policy"`
	// Sources configures the tool-native parsers (generic mappings,
	// classification overrides).
	Sources    source.Config  `yaml:"sources"`
	IntakeAuth auth.Config    `yaml:"intake_auth"`
	Tail       []tail.Config  `yaml:"tail"`
	Enrichment enrich.Config  `yaml:"enrichment"`
	Risk       risk.Config    `yaml:"risk"`
	Kubernetes KubeConfig     `yaml:"kubernetes"`
	Firewall   FirewallConfig `yaml:"firewall"`
}

// FirewallConfig configures the nftables provider. It is connected in
// enforce mode when enabled, or when a playbook uses a firewall action.
type FirewallConfig struct {
	Enabled         bool `yaml:"enabled"`
	firewall.Config `yaml:",inline"`
}

// KubeConfig turns the Kubernetes provider on; the client is built only
// when it is enabled.
type KubeConfig struct {
	Enabled bool `yaml:"enabled"`
	// AssetIndex keeps a live index of pods, services and nodes by address
	// for enrichment (on by default when Kubernetes is enabled).
	AssetIndex  bool `yaml:"asset_index"`
	kube.Config `yaml:",inline"`
}

// Server is the HTTP listener.
type Server struct {
	Addr            string            `yaml:"addr"`
	ReadTimeout     time.Duration     `yaml:"read_timeout"`
	WriteTimeout    time.Duration     `yaml:"write_timeout"`
	ShutdownTimeout time.Duration     `yaml:"shutdown_timeout"`
	Auth            server.AuthConfig `yaml:"auth"`
}

// Log configures structured logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json, text
}

// Protected lists infrastructure that is never contained.
type Protected struct {
	CIDRs []string        `yaml:"cidrs"`
	Names []ProtectedName `yaml:"names"`
	// NoImplicit turns off the implicit protection of the host's own
	// addresses and default gateway. Only tests inside a namespace want it.
	NoImplicit bool `yaml:"no_implicit"`
}

// ProtectedName is a named resource, e.g. {kind: namespace, value: kube-system}.
type ProtectedName struct {
	Kind  string `yaml:"kind"`
	Value string `yaml:"value"`
}

// Default returns the zero-config defaults.
func Default() Config {
	c := Config{
		Server:     Server{Addr: "127.0.0.1:8080", ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second, ShutdownTimeout: 30 * time.Second},
		DataDir:    "./quell-data",
		Log:        Log{Level: "info", Format: "json"},
		Intake:     intake.Config{}.WithDefaults(),
		Pipeline:   pipeline.Config{}.WithDefaults(),
		Engine:     txn.Config{}.WithDefaults(),
		Actions:    builtin.DefaultConfig(),
		Policy:     policy.DefaultConfig(),
		Sources:    source.DefaultConfig(),
		IntakeAuth: auth.DefaultConfig(),
		Enrichment: enrich.DefaultConfig(),
		Risk:       risk.DefaultConfig(),
		Kubernetes: KubeConfig{Config: kube.DefaultConfig(), AssetIndex: true},
		Firewall:   FirewallConfig{Config: firewall.DefaultConfig()},
	}
	return c
}

// Error is one configuration problem.
type Error struct {
	File   string
	Line   int
	Field  string
	Reason string
}

func (e Error) Error() string {
	loc := e.File
	if loc == "" {
		loc = "config"
	}
	if e.Line > 0 {
		loc += ":" + strconv.Itoa(e.Line)
	}
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", loc, e.Reason)
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Field, e.Reason)
}

// Errors is every problem found.
type Errors []Error

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Load reads path (empty: defaults only), applies environment overrides
// from env (os.Environ format) and validates.
func Load(path string, env []string) (Config, error) {
	c := Default()
	var root *yaml.Node
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("read config: %w", err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return c, Errors{{File: path, Line: yamlLine(err), Field: "(document)", Reason: yamlReason(err)}}
		}
		if len(doc.Content) > 0 {
			root = doc.Content[0]
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && !errors.Is(err, errEOF(err)) {
			return c, decodeErrors(path, err, root)
		}
	}
	var errs Errors
	for _, fe := range applyEnv(&c, env) {
		errs = append(errs, fe)
	}
	// The top-level mode is the one users know; when set it drives the
	// engine (an invalid one is reported once, as mode). Unset, it is the
	// engine's, whose default is audit.
	switch {
	case c.Mode == "":
		c.Mode = c.Engine.Mode
	case c.Mode == txn.ModeAudit || c.Mode == txn.ModeEnforce:
		c.Engine.Mode = c.Mode
	default:
		c.Engine.Mode = ""
	}
	// Tail offsets live in the data directory unless placed elsewhere.
	for i := range c.Tail {
		if c.Tail[i].StateDir == "" {
			c.Tail[i].StateDir = filepath.Join(c.DataDir, "tail")
		}
	}
	for _, fe := range c.validate() {
		fe.File = path
		fe.Line = lineOf(root, fe.Field)
		errs = append(errs, fe)
	}
	if len(errs) > 0 {
		return c, errs
	}
	return c, nil
}

func errEOF(err error) error {
	if err != nil && err.Error() == "EOF" {
		return err
	}
	return errors.New("not eof")
}

var lineRE = func(msg string) (int, string) {
	// yaml.v3 messages: "yaml: line 12: ..." or "line 12: field x not found in type ..."
	i := strings.Index(msg, "line ")
	if i < 0 {
		return 0, msg
	}
	rest := msg[i+5:]
	j := strings.Index(rest, ":")
	if j < 0 {
		return 0, msg
	}
	n, err := strconv.Atoi(rest[:j])
	if err != nil {
		return 0, msg
	}
	return n, strings.TrimSpace(rest[j+1:])
}

func yamlLine(err error) int      { n, _ := lineRE(err.Error()); return n }
func yamlReason(err error) string { _, r := lineRE(err.Error()); return r }

func decodeErrors(path string, err error, root *yaml.Node) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		var out Errors
		for _, m := range te.Errors {
			n, reason := lineRE(m)
			field := fieldAtLine(root, n)
			if strings.Contains(reason, "not found in type") {
				reason = "unknown field"
			}
			out = append(out, Error{File: path, Line: n, Field: field, Reason: reason})
		}
		return out
	}
	return Errors{{File: path, Line: yamlLine(err), Field: "(document)", Reason: yamlReason(err)}}
}

// fieldAtLine finds the dotted path of the key on a line.
func fieldAtLine(n *yaml.Node, line int) string {
	var walk func(n *yaml.Node, prefix string) string
	walk = func(n *yaml.Node, prefix string) string {
		if n == nil {
			return ""
		}
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := join(prefix, k.Value)
				if k.Line == line {
					return p
				}
				if f := walk(v, p); f != "" {
					return f
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", prefix, i)
				if c.Line == line && c.Kind == yaml.ScalarNode {
					return p
				}
				if f := walk(c, p); f != "" {
					return f
				}
			}
		}
		return ""
	}
	if f := walk(n, ""); f != "" {
		return f
	}
	return "(document)"
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

// lineOf finds the line of a dotted field path (a.b[2].c), or of its
// closest present ancestor; 0 when the file does not mention it.
func lineOf(n *yaml.Node, field string) int {
	if n == nil {
		return 0
	}
	line := 0
	cur := n
	for _, part := range strings.Split(field, ".") {
		name, idx := part, -1
		if i := strings.Index(part, "["); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
		}
		if cur.Kind != yaml.MappingNode {
			return line
		}
		found := false
		for i := 0; i+1 < len(cur.Content); i += 2 {
			if cur.Content[i].Value == name {
				line = cur.Content[i].Line
				cur = cur.Content[i+1]
				found = true
				break
			}
		}
		if !found {
			return line
		}
		if idx >= 0 && cur.Kind == yaml.SequenceNode && idx < len(cur.Content) {
			cur = cur.Content[idx]
			line = cur.Line
		}
	}
	return line
}

func (c *Config) validate() []Error {
	var errs []Error
	add := func(field, reason string) { errs = append(errs, Error{Field: field, Reason: reason}) }
	if _, _, err := net.SplitHostPort(c.Server.Addr); err != nil {
		add("server.addr", fmt.Sprintf("not host:port: %v", err))
	}
	if err := c.Server.Auth.Validate(); err != nil {
		field, reason, _ := strings.Cut(err.Error(), ": ")
		add("server.auth."+field, reason)
	}
	if ap, err := netip.ParseAddrPort(c.Server.Addr); len(c.Server.Auth.Tokens) == 0 && !c.Server.Auth.AllowOpen &&
		(err != nil || !ap.Addr().IsLoopback()) && !strings.HasPrefix(c.Server.Addr, "localhost:") {
		add("server.addr", fmt.Sprintf("%s is not a loopback address: the API needs server.auth.tokens there (or server.auth.allow_open: true)", c.Server.Addr))
	}
	if c.DataDir == "" {
		add("data_dir", "required")
	}
	if c.Mode != txn.ModeAudit && c.Mode != txn.ModeEnforce {
		add("mode", fmt.Sprintf("must be audit or enforce, got %q", c.Mode))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", fmt.Sprintf("must be debug, info, warn or error, got %q", c.Log.Level))
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		add("log.format", fmt.Sprintf("must be json or text, got %q", c.Log.Format))
	}
	prefixed := func(prefix string, err error) {
		if err == nil {
			return
		}
		for _, msg := range strings.Split(err.Error(), "\n") {
			msg = strings.TrimPrefix(msg, "builtin actions: ")
			field, reason, ok := strings.Cut(msg, ": ")
			if !ok || strings.Contains(field, " ") {
				// No single field to name: the message names them.
				add(strings.TrimSuffix(prefix, "."), msg)
				continue
			}
			add(join(prefix, field), reason)
		}
	}
	prefixed("intake", c.Intake.Validate())
	prefixed("pipeline", c.Pipeline.Validate())
	prefixed("engine", c.Engine.Validate())
	prefixed("actions", c.Actions.Validate())
	prefixed("", c.Policy.Validate())
	prefixed("sources", c.Sources.Validate())
	prefixed("intake_auth", c.IntakeAuth.Validate())
	for i, t := range c.Tail {
		prefixed(fmt.Sprintf("tail[%d]", i), t.Validate())
	}
	prefixed("enrichment", c.Enrichment.Validate())
	prefixed("risk", c.Risk.Validate())
	prefixed("", c.Firewall.Config.Validate())
	if c.Kubernetes.Enabled {
		prefixed("", c.Kubernetes.Config.Validate())
	}
	for i, s := range c.Protected.CIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			if _, err2 := netip.ParseAddr(s); err2 != nil {
				add(fmt.Sprintf("protected.cidrs[%d]", i), fmt.Sprintf("not a CIDR or address: %q", s))
			}
		}
	}
	for i, n := range c.Protected.Names {
		if n.Kind == "" || n.Value == "" {
			add(fmt.Sprintf("protected.names[%d]", i), "kind and value are required")
		}
	}
	return errs
}

// applyEnv sets scalar fields from QUELL_<PATH> variables, where PATH is the
// yaml path upper-cased and joined with '_' (QUELL_SERVER_ADDR,
// QUELL_ENGINE_CONCURRENCY). Lists take comma-separated values.
func applyEnv(c *Config, env []string) []Error {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, "QUELL_") {
			vars[k] = v
		}
	}
	if len(vars) == 0 {
		return nil
	}
	var errs []Error
	used := map[string]bool{}
	var walk func(v reflect.Value, path []string)
	walk = func(v reflect.Value, path []string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" || !f.IsExported() {
				continue
			}
			p := append(append([]string{}, path...), tag)
			fv := v.Field(i)
			if fv.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
				walk(fv, p)
				continue
			}
			name := "QUELL_" + strings.ToUpper(strings.Join(p, "_"))
			val, ok := vars[name]
			if !ok {
				continue
			}
			used[name] = true
			if err := setScalar(fv, val); err != nil {
				errs = append(errs, Error{File: "env", Field: name, Reason: err.Error()})
			}
		}
	}
	walk(reflect.ValueOf(c).Elem(), nil)
	var unknown []string
	for k := range vars {
		if !used[k] && !ignoredEnv[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		errs = append(errs, Error{File: "env", Field: k, Reason: "no such setting"})
	}
	return errs
}

// ignoredEnv are QUELL_ variables that are not settings.
var ignoredEnv = map[string]bool{"QUELL_REQUIRE_INTEGRATION": true, "QUELL_CONFIG": true, "QUELL_URL": true, "QUELL_TOKEN": true}

func setScalar(v reflect.Value, s string) error {
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("not a duration: %q", s)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("not an integer: %q", s)
		}
		v.SetInt(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("not a number: %q", s)
		}
		v.SetFloat(f)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("not a boolean: %q", s)
		}
		v.SetBool(b)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return errors.New("cannot be set from the environment")
		}
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		v.Set(reflect.ValueOf(parts))
	default:
		return errors.New("cannot be set from the environment")
	}
	return nil
}
