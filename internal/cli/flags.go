package cli

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// flags is a FlagSet whose defaults come from environment variables.
type flags struct {
	fs      *flag.FlagSet
	known   map[string]bool // env names this command reads
	envErrs []error
	lists   []listFlag
	// warnAnka: also warn about ANKA_* variables no flag reads (the
	// reference's controller and registry settings Corral does not have).
	warnAnka bool
	secrets  []secretFlag
}

// secretFlag is a flag whose value is a credential.
type secretFlag struct {
	name string
	dst  *string
	file *string
	env  []string // every environment name it is read from
}

func newFlags(name, summary string, out io.Writer) *flags {
	fs := flag.NewFlagSet("corral "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	f := &flags{fs: fs, known: map[string]bool{}}
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: corral %s [flags]\n\n%s\n\nFlags (environment variable in brackets):\n", name, summary)
		fs.PrintDefaults()
	}
	return f
}

// EnvName is the CORRAL_* variable for a flag: --etcd-endpoints → CORRAL_ETCD_ENDPOINTS.
func EnvName(flagName string) string {
	return "CORRAL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// env finds the flag's value in the environment: CORRAL_* first, then aliases.
func (f *flags) env(name string, aliases []string) (string, string, bool) {
	names := append([]string{EnvName(name)}, aliases...)
	for _, n := range names {
		f.known[n] = true
	}
	for _, n := range names {
		if v, ok := os.LookupEnv(n); ok {
			return v, n, true
		}
	}
	return "", "", false
}

func (f *flags) help(usage, name string, aliases []string) string {
	return fmt.Sprintf("%s [%s]", usage, strings.Join(append([]string{EnvName(name)}, aliases...), ", "))
}

func (f *flags) String(p *string, name, def, usage string, aliases ...string) {
	if v, _, ok := f.env(name, aliases); ok {
		def = v
	}
	f.fs.StringVar(p, name, def, f.help(usage, name, aliases))
}

func (f *flags) Int(p *int, name string, def int, usage string, aliases ...string) {
	if v, n, ok := f.env(name, aliases); ok {
		i, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			f.envErrs = append(f.envErrs, fmt.Errorf("%s=%q: not an integer", n, v))
		} else {
			def = i
		}
	}
	f.fs.IntVar(p, name, def, f.help(usage, name, aliases))
}

func (f *flags) Bool(p *bool, name string, def bool, usage string, aliases ...string) {
	if v, n, ok := f.env(name, aliases); ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			f.envErrs = append(f.envErrs, fmt.Errorf("%s=%q: not a boolean", n, v))
		} else {
			def = b
		}
	}
	f.fs.BoolVar(p, name, def, f.help(usage, name, aliases))
}

// Duration accepts Go durations ("90s", "30m") and plain seconds ("90").
func (f *flags) Duration(p *time.Duration, name string, def time.Duration, usage string, aliases ...string) {
	if v, n, ok := f.env(name, aliases); ok {
		d, err := parseDuration(v)
		if err != nil {
			f.envErrs = append(f.envErrs, fmt.Errorf("%s=%q: %v", n, v, err))
		} else {
			def = d
		}
	}
	f.fs.Func(name, f.help(usage+fmt.Sprintf(" (default %s)", def), name, aliases), func(s string) error {
		d, err := parseDuration(s)
		if err == nil {
			*p = d
		}
		return err
	})
	*p = def
}

// HoursDuration is a duration flag whose bare numbers are hours (etcd's
// auto-compaction retention), not seconds.
func (f *flags) HoursDuration(p *time.Duration, name string, def time.Duration, usage string, aliases ...string) {
	parse := func(s string) (time.Duration, error) {
		if n, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err == nil {
			return time.Duration(n * float64(time.Hour)), nil
		}
		return parseDuration(s)
	}
	if v, n, ok := f.env(name, aliases); ok {
		d, err := parse(v)
		if err != nil {
			f.envErrs = append(f.envErrs, fmt.Errorf("%s=%q: %v", n, v, err))
		} else {
			def = d
		}
	}
	f.fs.Func(name, f.help(usage+fmt.Sprintf(" (default %s; a bare number is hours)", def), name, aliases), func(s string) error {
		d, err := parse(s)
		if err == nil {
			*p = d
		}
		return err
	})
	*p = def
}

func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want a duration like 90s or 30m")
	}
	return d, nil
}

// Secret is a credential flag: also --NAME-file (a file holding it, the
// way to keep it off command lines, which every process on the machine
// can read in /proc); its environment variables are cleared once read, so
// no child process (a VM tool, a script) inherits it.
func (f *flags) Secret(p *string, name, usage string, aliases ...string) {
	f.String(p, name, "", usage, aliases...)
	file := new(string)
	f.fs.StringVar(file, name+"-file", "", "file holding --"+name+" (keeps it off the command line)")
	f.secrets = append(f.secrets, secretFlag{name: name, dst: p, file: file, env: append([]string{EnvName(name)}, aliases...)})
}

// settleSecrets reads --NAME-file secrets, warns about secrets given on
// the command line, and clears secrets from the environment.
func (f *flags) settleSecrets(log func() *slog.Logger) error {
	onCommandLine := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { onCommandLine[fl.Name] = true })
	for _, s := range f.secrets {
		for _, n := range s.env {
			_ = os.Unsetenv(n)
		}
		if *s.file != "" {
			if onCommandLine[s.name] {
				return fmt.Errorf("--%s and --%s-file: give one", s.name, s.name)
			}
			b, err := os.ReadFile(*s.file)
			if err != nil {
				return fmt.Errorf("--%s-file: %w", s.name, err)
			}
			*s.dst = strings.TrimRight(string(b), "\r\n")
			if *s.dst == "" {
				return fmt.Errorf("--%s-file %s: empty", s.name, *s.file)
			}
			continue
		}
		if onCommandLine[s.name] && *s.dst != "" && log != nil {
			log().Warn("a secret on the command line can be read by every process on this machine (/proc/*/cmdline); "+
				"use its environment variable or --"+s.name+"-file", "flag", "--"+s.name, "env", s.env[0])
		}
	}
	return nil
}

// List is a comma-separated list flag.
func (f *flags) List(p *[]string, name, def, usage string, aliases ...string) {
	var raw string
	f.String(&raw, name, def, usage, aliases...)
	f.lists = append(f.lists, listFlag{p, &raw})
}

type listFlag struct {
	dst *[]string
	raw *string
}

// Parse parses args, reports bad environment values, splits lists and warns
// about CORRAL_* variables no flag reads (usually a typo).
func (f *flags) Parse(args []string, log func() *slog.Logger) error {
	if err := f.fs.Parse(args); err != nil {
		return err
	}
	if f.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", f.fs.Arg(0))
	}
	if len(f.envErrs) > 0 {
		return f.envErrs[0]
	}
	for _, l := range f.lists {
		*l.dst = splitList(*l.raw)
	}
	if err := f.settleSecrets(log); err != nil {
		return err
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "CORRAL_") && !f.known[name] && !readElsewhere[name] && log != nil {
			log().Warn("ignoring unknown environment variable", "name", name)
		}
		if f.warnAnka && strings.HasPrefix(name, "ANKA_") && !f.known[name] && log != nil {
			log().Warn("ignoring a setting of the reference product Corral does not read (see `corral "+
				strings.TrimPrefix(f.fs.Name(), "corral ")+" --help` for the ones it does)", "name", name)
		}
	}
	return nil
}

// readElsewhere are CORRAL_ variables the CLI reads without a flag.
var readElsewhere = map[string]bool{"CORRAL_CONFIG": true}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ValidateRegistryURL rejects what would silently break nodes' pulls.
func ValidateRegistryURL(s string) error {
	if s == "" {
		return nil
	}
	if strings.HasSuffix(s, "/") {
		return fmt.Errorf("registry URL %q must not end with a slash: use %q", s, strings.TrimRight(s, "/"))
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("registry URL %q: want http(s)://host:port", s)
	}
	if u.Path != "" || u.RawQuery != "" {
		return fmt.Errorf("registry URL %q: want only scheme, host and port, no path", s)
	}
	return nil
}
