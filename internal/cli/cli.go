// Package cli implements corral's subcommands. Every flag takes its default
// from a CORRAL_* environment variable (and, where the reference product has
// one, its ANKA_* name), so env files work with compose and Kubernetes.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout io.Writer) error
}

func commands() []command {
	return []command{
		{"up", "run a whole build cloud on this machine: embedded etcd, controller, a local node", runUp},
		{"controller", "run a controller (REST API, scheduler) on embedded or external etcd", runController},
		{"registry", "run the template registry (standalone, no etcd needed)", runRegistry},
		{"template", "push, pull, list, describe, delete, revert templates in a registry", runTemplate},
		{"node", "run a node agent (or: node list|show|drain|undrain|set-capacity|disjoin)", runNode},
		{"group", "list, create, delete node groups; add and remove their nodes", runGroup},
		{"vm", "start, list, show, terminate, restart, wait for instances; their logs; ssh into one", runVM},
		{"events", "the cloud's event log: list, filter, --follow", runEvents},
		{"login", "check a controller and its token, and save them as the current context", runLogin},
		{"context", "list, use, delete saved contexts (corral login)", runContext},
		{"apikey", "create, list, delete API keys for /tap/v1 logins", runAPIKey},
		{"join-token", "rotate the token nodes join with", runJoinToken},
		{"etcd", "etcd care: snapshot save/restore, status, defrag, check perf", runEtcd},
		{"version", "print the version", runVersion},
	}
}

// Main runs the subcommand named in args and returns the exit code.
func Main(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err := c.run(ctx, args[1:], os.Stdout)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "corral %s: %v\n", c.name, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "corral: unknown command %q\n\n", args[0])
	usage(os.Stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Corral: a build cloud for virtual machines (controller, registry, node agent).")
	fmt.Fprintln(w, "\nUsage: corral <command> [flags]   (corral <command> --help for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
}

// newLogger logs to stderr; level 0 is info, higher is more verbose;
// format "json" writes one JSON object per line, anything else key=value.
func newLogger(level int, format string) *slog.Logger {
	l := slog.LevelInfo
	switch {
	case level >= 1:
		l = slog.LevelDebug
	case level < 0:
		l = slog.LevelWarn
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// checkLogFormat refuses a --log-format other than text or json.
func checkLogFormat(format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("--log-format: want text or json, got %q", format)
	}
	return nil
}
