package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/corral-build/corral/client"
)

// A saved context is a controller and the credentials to use with it, so
// `corral vm list` needs no flags after `corral login URL --token T`.
type cliContext struct {
	Controller string `json:"controller"`
	RootToken  string `json:"root_token,omitempty"`
}

type cliConfig struct {
	Current  string                `json:"current"`
	Contexts map[string]cliContext `json:"contexts"`
}

// configPath is $CORRAL_CONFIG, else $XDG_CONFIG_HOME/corral/config.json,
// else ~/.config/corral/config.json.
func configPath() (string, error) {
	if p := os.Getenv("CORRAL_CONFIG"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("where to keep contexts: %w (set CORRAL_CONFIG)", err)
	}
	return filepath.Join(dir, "corral", "config.json"), nil
}

func loadConfig() (cliConfig, string, error) {
	cfg := cliConfig{Contexts: map[string]cliContext{}}
	path, err := configPath()
	if err != nil {
		return cfg, "", err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, path, nil
	}
	if err != nil {
		return cfg, path, err
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return cfg, path, fmt.Errorf("%s: %w", path, err)
	}
	if cfg.Contexts == nil {
		cfg.Contexts = map[string]cliContext{}
	}
	return cfg, path, nil
}

// save writes the file owner-only (it holds tokens), atomically.
func (c cliConfig) save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// currentContext is the context named, or the current one (false: none).
func currentContext(name string) (cliContext, bool, error) {
	cfg, _, err := loadConfig()
	if err != nil {
		return cliContext{}, false, err
	}
	if name == "" {
		name = cfg.Current
	}
	if name == "" {
		return cliContext{}, false, nil
	}
	c, ok := cfg.Contexts[name]
	if !ok {
		return c, false, fmt.Errorf("no saved context %q (corral context list)", name)
	}
	return c, true, nil
}

func runLogin(ctx context.Context, args []string, out io.Writer) error {
	f := newFlags("login", "Check a controller and its credentials, then save them as a context that\n`corral vm|node|group|events` use when --controller is not given.\nUsage: corral login URL [--token T] [--name NAME]", out)
	var token, name string
	f.Secret(&token, "token", "the controller's root token (when it runs with --enable-auth)", "ANKA_ROOT_TOKEN")
	f.String(&name, "name", "", "the context's name (default: the URL's host)")
	pos, err := parseInterleaved(f, args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral login URL [--token T] [--name NAME]")
	}
	u, err := url.Parse(pos[0])
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want the controller's URL like http://host:8090, got %q", pos[0])
	}
	base := strings.TrimRight(pos[0], "/")
	cl, err := client.New([]string{base}, "")
	if err != nil {
		return err
	}
	if token != "" {
		cl.UseRootToken(token)
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// Status needs the view permission: it proves the credentials.
	st, err := cl.Status(cctx)
	if errors.Is(err, client.ErrUnauthorized) {
		return fmt.Errorf("log in to %s: the controller refused the token (HTTP 401 Authentication Required); nothing saved", base)
	}
	if err != nil {
		return fmt.Errorf("log in to %s: %w; nothing saved", base, err)
	}
	if name == "" {
		name = u.Host
	}
	cfg, path, err := loadConfig()
	if err != nil {
		return err
	}
	cfg.Contexts[name] = cliContext{Controller: base, RootToken: token}
	cfg.Current = name
	if err := cfg.save(path); err != nil {
		return fmt.Errorf("save context: %w", err)
	}
	fmt.Fprintf(out, "logged in to %s (Corral %s) as context %q, saved in %s\n", base, st.Version, name, path)
	return nil
}

func runContext(_ context.Context, args []string, out io.Writer) error {
	cfg, path, err := loadConfig()
	if err != nil {
		return err
	}
	switch {
	case len(args) == 0 || args[0] == "list":
		names := make([]string, 0, len(cfg.Contexts))
		for n := range cfg.Contexts {
			names = append(names, n)
		}
		sort.Strings(names)
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "CURRENT\tNAME\tCONTROLLER\tAUTH")
		for _, n := range names {
			cur, auth := "", "none"
			if n == cfg.Current {
				cur = "*"
			}
			if cfg.Contexts[n].RootToken != "" {
				auth = "root token"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", cur, n, cfg.Contexts[n].Controller, auth)
		}
		return w.Flush()
	case (args[0] == "use" || args[0] == "delete") && len(args) == 2:
		if _, ok := cfg.Contexts[args[1]]; !ok {
			return fmt.Errorf("no saved context %q", args[1])
		}
		if args[0] == "use" {
			cfg.Current = args[1]
		} else {
			delete(cfg.Contexts, args[1])
			if cfg.Current == args[1] {
				cfg.Current = ""
			}
		}
		return cfg.save(path)
	case args[0] == "-h" || args[0] == "--help":
		fmt.Fprintln(out, "Usage: corral context [list | use NAME | delete NAME]\n\nSaved contexts: a controller and its token, from `corral login`.")
		return flag.ErrHelp
	}
	return errors.New("usage: corral context [list | use NAME | delete NAME]")
}

// parseInterleaved parses flags with positional arguments anywhere (log,
// when set, warns of unknown environment variables).
func parseInterleaved(f *flags, args []string, log func() *slog.Logger) ([]string, error) {
	var positional []string
	for len(args) > 0 {
		if err := f.fs.Parse(args); err != nil {
			return nil, err
		}
		args = f.fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	return positional, f.Parse(nil, log)
}
