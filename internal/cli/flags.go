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
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "CORRAL_") && !f.known[name] && log != nil {
			log().Warn("ignoring unknown environment variable", "name", name)
		}
		if f.warnAnka && strings.HasPrefix(name, "ANKA_") && !f.known[name] && log != nil {
			log().Warn("ignoring a setting of the reference product Corral does not read (see `corral "+
				strings.TrimPrefix(f.fs.Name(), "corral ")+" --help` for the ones it does)", "name", name)
		}
	}
	return nil
}

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
