package builtin

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/quell-ir/quell/internal/action"
)

// Config configures the built-in actions.
type Config struct {
	Log  LogConfig  `yaml:"log"`
	Exec ExecConfig `yaml:"exec"`
	// BreakGlass, when set, offers breakglass.grant: time-bound elevated
	// rights for a named person, granted and revoked by the operator's
	// commands (placeholders {person}, {role}, {reason}).
	BreakGlass *BreakGlassConfig `yaml:"breakglass"`
}

// BreakGlassConfig are the commands behind breakglass.grant.
type BreakGlassConfig struct {
	Grant   []string      `yaml:"grant"`  // required
	Revoke  []string      `yaml:"revoke"` // required: a grant always ends
	Verify  []string      `yaml:"verify"` // exit 0: the grant is in place
	Timeout time.Duration `yaml:"timeout"`
}

// BreakGlassAction is the action name of a break-glass grant.
const BreakGlassAction = "breakglass.grant"

func (b *BreakGlassConfig) command() Command {
	return Command{
		Description: "Break-glass: grant a named person elevated rights for a bounded time; revoked by itself at expiry",
		Params: map[string]ParamConfig{
			"person":   {Type: action.TypeIdent, Required: true, Description: "who gets the rights"},
			"role":     {Type: action.TypeIdent, Required: true, Description: "which rights"},
			"reason":   {Type: action.TypeString, Description: "why, for the audit trail"},
			"duration": {Type: action.TypeDuration, Required: true, Description: "how long; the grant is revoked by itself after it (policy caps it)"},
		},
		Apply: b.Grant, Revert: b.Revoke, Verify: b.Verify, Timeout: b.Timeout,
		KeyParams: []string{"person", "role"},
	}
}

// LogConfig configures the `log` action.
type LogConfig struct {
	// Level is the level used when a step gives none: debug, info, warn, error.
	Level string `yaml:"level"`
}

// ExecConfig configures the `exec.<name>` actions: one per command.
type ExecConfig struct {
	// Path is the PATH commands run with; nothing else is inherited from
	// quell's environment.
	Path string `yaml:"path"`
	// MaxOutputBytes bounds how much of a command's stdout and of its stderr
	// (each) is kept for the error and the log.
	MaxOutputBytes int `yaml:"max_output_bytes"`
	// Commands are the operator's commands, by name; each becomes the action
	// exec.<name>.
	Commands map[string]Command `yaml:"commands"`
}

// Command is one operator-defined command. Its argv templates are lists of
// single arguments: a {param} placeholder is replaced inside its element
// only, and no shell ever sees the result.
type Command struct {
	Description string                 `yaml:"description"`
	Params      map[string]ParamConfig `yaml:"params"`
	// Apply makes the change (required). Exit 0 is success.
	Apply []string `yaml:"apply"`
	// Verify checks the change took effect: exit 0 = present. Optional;
	// without it a successful Apply is taken at its word.
	Verify []string `yaml:"verify"`
	// Revert undoes the change. Optional; without it the action is one-shot.
	Revert []string `yaml:"revert"`
	// Check tells whether the effect is already there before Apply: exit 0 =
	// present (then Revert leaves it in place), exit 1 = absent. Optional.
	Check []string `yaml:"check"`
	// Timeout bounds each run; the whole process group is killed after it.
	Timeout time.Duration `yaml:"timeout"`
	// RetryableExitCodes are exit codes that mean "try again later"
	// (e.g. 75, EX_TEMPFAIL).
	RetryableExitCodes []int `yaml:"retryable_exit_codes"`
	// Env are extra environment variables, set by the operator (never from
	// events).
	Env map[string]string `yaml:"env"`
	// KeyParams are the parameters that identify the target, for the
	// idempotency key. Default: every parameter.
	KeyParams []string `yaml:"key_params"`
	// Eradication marks a command that destroys state: policy requires
	// approval for it.
	Eradication bool `yaml:"eradication"`
}

// ParamConfig declares one typed parameter of a command.
type ParamConfig struct {
	Type        action.ParamType `yaml:"type"`
	Required    bool             `yaml:"required"`
	Default     string           `yaml:"default"`
	Enum        []string         `yaml:"enum"`
	Min         int              `yaml:"min"`
	Max         int              `yaml:"max"`
	Description string           `yaml:"description"`
	// AllowLeadingDash lets a value start with '-'. Off by default so that
	// an attacker-supplied value cannot be read as an option by the command
	// (argument injection: "--delete-all").
	AllowLeadingDash bool `yaml:"allow_leading_dash"`
}

// Defaults.
const (
	DefaultLogLevel       = "info"
	DefaultExecPath       = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	DefaultMaxOutputBytes = 64 << 10
	DefaultTimeout        = 10 * time.Second
	MaxTimeout            = 10 * time.Minute
)

// DefaultConfig returns the defaults: log at info, no exec commands.
func DefaultConfig() Config {
	return Config{
		Log:  LogConfig{Level: DefaultLogLevel},
		Exec: ExecConfig{Path: DefaultExecPath, MaxOutputBytes: DefaultMaxOutputBytes},
	}
}

func (c Config) withDefaults() Config {
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Exec.Path == "" {
		c.Exec.Path = DefaultExecPath
	}
	if c.Exec.MaxOutputBytes == 0 {
		c.Exec.MaxOutputBytes = DefaultMaxOutputBytes
	}
	return c
}

var (
	commandNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	paramNameRE   = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	envNameRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	placeholderRE = regexp.MustCompile(`\{([a-z_][a-z0-9_]*)\}`)
)

var logLevels = []string{"debug", "info", "warn", "error"}

// Validate checks the configuration; every error names its field, e.g.
// `exec.commands.block-ip.apply[0]: must be an absolute path`.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if !contains(logLevels, c.Log.Level) {
		add("log.level", "must be one of %s, got %q", strings.Join(logLevels, ", "), c.Log.Level)
	}
	for _, dir := range filepath.SplitList(c.Exec.Path) {
		if !filepath.IsAbs(dir) {
			add("exec.path", "every entry must be an absolute directory, got %q", dir)
		}
	}
	if c.Exec.MaxOutputBytes < 0 {
		add("exec.max_output_bytes", "must not be negative")
	}
	for _, name := range sortedKeys(c.Exec.Commands) {
		errs = append(errs, c.Exec.Commands[name].validate("exec.commands."+name, name)...)
	}
	if b := c.BreakGlass; b != nil {
		if len(b.Revoke) == 0 {
			add("breakglass.revoke", "required: a break-glass grant must end")
		}
		errs = append(errs, b.command().validate("breakglass", "breakglass")...)
	}
	return errors.Join(errs...)
}

func (cmd Command) validate(path, name string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if !commandNameRE.MatchString(name) {
		add(path, "name must be lower-case letters, digits and '-'")
	}
	for _, pn := range sortedKeys(cmd.Params) {
		p := cmd.Params[pn]
		field := path + ".params." + pn
		if !paramNameRE.MatchString(pn) {
			add(field, "name must match %s", paramNameRE)
		}
		if p.Type == "" {
			add(field+".type", "required")
			continue
		}
		// The action package is the one place that knows the types: build
		// a one-parameter spec and let it judge the declaration.
		ap := p.param(pn)
		if _, err := (action.Spec{Params: []action.Param{{Name: pn, Type: ap.Type, Enum: ap.Enum, Min: ap.Min, Max: ap.Max}}}).Validate(map[string]string{pn: probeValue(ap)}); err != nil && strings.Contains(err.Error(), "unknown parameter type") {
			add(field+".type", "unknown type %q", p.Type)
			continue
		}
		if p.Type == action.TypeEnum && len(p.Enum) == 0 {
			add(field+".enum", "required for type enum")
		}
		if p.Default != "" {
			if _, err := (action.Spec{Params: []action.Param{ap}}).Validate(nil); err != nil {
				add(field+".default", "%s", strings.TrimPrefix(err.Error(), fmt.Sprintf("parameter %q: ", pn)))
			}
			if p.Required {
				add(field+".required", "a parameter with a default is never missing: drop required or default")
			}
		}
	}
	if len(cmd.Apply) == 0 {
		add(path+".apply", "required")
	}
	for _, a := range []struct {
		field string
		argv  []string
	}{{"apply", cmd.Apply}, {"verify", cmd.Verify}, {"revert", cmd.Revert}, {"check", cmd.Check}} {
		if len(a.argv) == 0 {
			continue
		}
		f := path + "." + a.field
		if !filepath.IsAbs(a.argv[0]) || filepath.Clean(a.argv[0]) != a.argv[0] {
			add(f+"[0]", "must be an absolute path, got %q", a.argv[0])
		}
		if strings.ContainsAny(a.argv[0], "{}") {
			add(f+"[0]", "the program cannot be a placeholder")
		}
		for i, arg := range a.argv {
			for _, m := range placeholderRE.FindAllStringSubmatch(arg, -1) {
				if _, ok := cmd.Params[m[1]]; !ok {
					add(fmt.Sprintf("%s[%d]", f, i), "placeholder {%s} names no parameter (declared: %s)", m[1], strings.Join(sortedKeys(cmd.Params), ", "))
				}
			}
			if strings.ContainsRune(arg, 0) {
				add(fmt.Sprintf("%s[%d]", f, i), "contains a NUL byte")
			}
		}
	}
	if cmd.Timeout < 0 || cmd.Timeout > MaxTimeout {
		add(path+".timeout", "must be between 0 (default %s) and %s, got %s", DefaultTimeout, MaxTimeout, cmd.Timeout)
	}
	for i, code := range cmd.RetryableExitCodes {
		if code < 1 || code > 255 {
			add(fmt.Sprintf("%s.retryable_exit_codes[%d]", path, i), "must be 1..255, got %d", code)
		}
		if code == 1 && len(cmd.Check) > 0 {
			add(fmt.Sprintf("%s.retryable_exit_codes[%d]", path, i), "1 means 'absent' for check and cannot be retryable")
		}
	}
	for _, k := range sortedKeys(cmd.Env) {
		switch {
		case !envNameRE.MatchString(k):
			add(path+".env."+k, "not a valid variable name")
		case k == "PATH":
			add(path+".env."+k, "set exec.path instead")
		case strings.HasPrefix(k, "QUELL_"):
			add(path+".env."+k, "QUELL_* variables are set by quell")
		case strings.ContainsRune(cmd.Env[k], 0):
			add(path+".env."+k, "contains a NUL byte")
		}
	}
	for i, k := range cmd.KeyParams {
		if _, ok := cmd.Params[k]; !ok {
			add(fmt.Sprintf("%s.key_params[%d]", path, i), "%q is not a declared parameter", k)
		}
	}
	return errs
}

// probeValue is any value that lets Validate reach the type switch.
func probeValue(p action.Param) string {
	if len(p.Enum) > 0 {
		return p.Enum[0]
	}
	return "x"
}

func (p ParamConfig) param(name string) action.Param {
	return action.Param{
		Name: name, Type: p.Type, Required: p.Required, Default: p.Default,
		Enum: p.Enum, Min: p.Min, Max: p.Max, Description: p.Description,
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
