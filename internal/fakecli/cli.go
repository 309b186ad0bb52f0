// Package fakecli holds what the strict stand-ins for the macOS CLIs (fake
// anka, fake tart) share: running as the test binary under the tool's name,
// an argument parser that is as strict as the real tools', and on-disk state
// under a lock.
//
// The fakes are not separate main packages: a test's TestMain calls Dispatch,
// and Install links the test binary into a directory under the tool's name,
// so `anka ...` or `tart ...` found on PATH runs the fake.
package fakecli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Tool is one fake CLI.
type Tool struct {
	Name string
	Main func(args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

// Dispatch runs the tool named by os.Args[0], if it is one of tools, and
// exits with its status. Call it first in TestMain.
func Dispatch(tools ...Tool) {
	base := filepath.Base(os.Args[0])
	for _, t := range tools {
		if base == t.Name {
			os.Exit(t.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
		}
	}
	// Under -race every process sleeps a second at exit by default; the
	// fakes run as many short processes.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
}

// Install links the running test binary into dir as each tool's name.
func Install(dir string, names ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := os.Symlink(exe, filepath.Join(dir, n)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	return nil
}

// Option describes one option of a command: its names and whether it takes
// a value.
type Option struct {
	Names []string // "-c", "--copy"
	Value bool
	Multi bool // may be repeated
}

// Parsed is a command line split into options and positional arguments.
type Parsed struct {
	Opts map[string][]string // by first name
	Args []string
}

// Has reports whether the option (by its first name) was given.
func (p Parsed) Has(name string) bool { _, ok := p.Opts[name]; return ok }

// Get returns the option's last value.
func (p Parsed) Get(name string) string {
	v := p.Opts[name]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// UsageError is a command line the tool rejects.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usage(format string, a ...any) error { return &UsageError{fmt.Sprintf(format, a...)} }

// Parse reads args against opts. optsFirst: options must come before the
// first positional argument (anka). stopAfter > 0: everything after that
// many positionals is taken verbatim (a guest command). equals: --opt=v is
// accepted (swift-argument-parser).
func Parse(args []string, opts []Option, optsFirst bool, stopAfter int, equals bool) (Parsed, error) {
	p := Parsed{Opts: map[string][]string{}}
	find := func(name string) *Option {
		for i := range opts {
			for _, n := range opts[i].Names {
				if n == name {
					return &opts[i]
				}
			}
		}
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if stopAfter > 0 && len(p.Args) >= stopAfter {
			p.Args = append(p.Args, args[i:]...)
			break
		}
		if a == "--" {
			p.Args = append(p.Args, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' || isNumber(a) {
			p.Args = append(p.Args, a)
			continue
		}
		if optsFirst && len(p.Args) > 0 {
			return p, usage("option %s given after the argument %q (options come first)", a, p.Args[len(p.Args)-1])
		}
		name, val, hasVal := a, "", false
		if equals {
			name, val, hasVal = strings.Cut(a, "=")
		}
		o := find(name)
		if o == nil {
			return p, usage("unknown option '%s'", name)
		}
		key := o.Names[0]
		if _, dup := p.Opts[key]; dup && !o.Multi {
			return p, usage("option '%s' given twice", name)
		}
		switch {
		case o.Value && hasVal:
			p.Opts[key] = append(p.Opts[key], val)
		case o.Value:
			if i+1 >= len(args) {
				return p, usage("missing value for option '%s'", name)
			}
			i++
			p.Opts[key] = append(p.Opts[key], args[i])
		case hasVal:
			return p, usage("option '%s' takes no value", name)
		default:
			p.Opts[key] = append(p.Opts[key], "")
		}
	}
	return p, nil
}

func isNumber(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Lock takes an exclusive lock on dir/.lock until the returned func runs.
func Lock(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// WriteFileAtomic writes data to path through a temporary file and rename.
func WriteFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Alive reports whether a process with pid runs.
func Alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}
