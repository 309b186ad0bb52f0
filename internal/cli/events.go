package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
)

func vmRestart(ctx context.Context, args []string, out io.Writer) error {
	var wait bool
	var timeout time.Duration
	cl, c, pos, err := vmFlags("restart", "Restart instances' VMs in place (same node, same slot).\nUsage: corral vm restart ID... [--wait]", out, args, func(f *flags) {
		f.Bool(&wait, "wait", false, "wait until each is Started again")
		f.Duration(&timeout, "timeout", 10*time.Minute, "how long --wait waits")
	})
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return errors.New("usage: corral vm restart ID... [--wait]")
	}
	if pos, err = resolveInstances(ctx, cl, pos); err != nil {
		return err
	}
	for _, id := range pos {
		if err := cl.Restart(ctx, id); err != nil {
			return fmt.Errorf("restart %s: %w", id, err)
		}
	}
	if !wait {
		for _, id := range pos {
			fmt.Fprintln(out, id)
		}
		return nil
	}
	got, err := waitAll(ctx, cl, pos, apiv1.StateStarted, timeout)
	if err != nil {
		return err
	}
	return printReached(out, c.output, got)
}

func vmLogs(ctx context.Context, args []string, out io.Writer) error {
	var console, script bool
	cl, c, pos, err := vmFlags("logs", "Show an instance's startup-script output and VM console tail.\nUsage: corral vm logs ID [--console | --script]", out, args, func(f *flags) {
		f.Bool(&console, "console", false, "only the console")
		f.Bool(&script, "script", false, "only the startup script's output")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral vm logs ID [--console | --script]")
	}
	ids, err := resolveInstances(ctx, cl, pos)
	if err != nil {
		return err
	}
	l, err := cl.Logs(ctx, ids[0])
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(out, l)
	}
	both := !console && !script
	if script || both {
		if s := l.StartupScript; s != nil {
			if both {
				fmt.Fprintf(out, "== startup script: exit %d%s\n", s.ReturnCode, map[bool]string{true: ", timed out"}[s.DidTimeout])
			}
			fmt.Fprint(out, s.Stdout)
			if s.Stderr != "" {
				if both {
					fmt.Fprintln(out, "== startup script stderr")
				}
				fmt.Fprint(out, s.Stderr)
			}
		} else if both {
			fmt.Fprintln(out, "== no startup script output")
		}
	}
	if console || both {
		if both {
			at := "never sent"
			if !l.ConsoleAt.IsZero() {
				at = "as of " + l.ConsoleAt.Format(time.RFC3339)
			}
			fmt.Fprintf(out, "== console (%s)\n", at)
		}
		fmt.Fprint(out, l.Console)
	}
	return nil
}

func vmSSH(ctx context.Context, args []string, out io.Writer) error {
	var user string
	var dryRun bool
	// Everything after "--" is the remote command.
	var remote []string
	for i, a := range args {
		if a == "--" {
			args, remote = args[:i], args[i+1:]
			break
		}
	}
	cl, _, pos, err := vmFlags("ssh", "Open an SSH session to a Started instance (execs ssh).\nUsage: corral vm ssh ID [--user anka] [-- command...]", out, args, func(f *flags) {
		f.String(&user, "user", "anka", "the guest user")
		f.Bool(&dryRun, "dry-run", false, "print the ssh command line instead of running it")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral vm ssh ID [--user U] [-- command...]")
	}
	in, err := cl.Instance(ctx, pos[0])
	if err != nil {
		return err
	}
	host, port, ok := in.VMInfo.SSH()
	if in.State != apiv1.StateStarted || !ok {
		return fmt.Errorf("instance %s is %s, with no SSH endpoint yet", in.InstanceID, in.State)
	}
	// Each instance is a new guest behind a reused host:port: its host key
	// is new every time, so it is neither checked against nor added to
	// known_hosts (the endpoint is the node's, reached on your network).
	argv := []string{"ssh", "-p", strconv.Itoa(port), "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
		"-o", "LogLevel=ERROR", user + "@" + host}
	argv = append(argv, remote...)
	if dryRun {
		fmt.Fprintln(out, strings.Join(argv, " "))
		return nil
	}
	path, err := exec.LookPath("ssh")
	if err != nil {
		return fmt.Errorf("no ssh client on PATH: %w (install openssh-client)", err)
	}
	return syscall.Exec(path, argv, os.Environ())
}

func runEvents(ctx context.Context, args []string, out io.Writer) error {
	var follow bool
	var instance, node, typ, since string
	var limit int
	cl, c, pos, err := vmFlags("events", "The cloud's event log, oldest first.\nUsage: corral events [--follow] [--instance ID] [--node ID] [--type T] [--since ID|TIME] [--limit N]", out, args, func(f *flags) {
		f.Bool(&follow, "follow", false, "keep printing events as they happen")
		f.String(&instance, "instance", "", "only this instance's events")
		f.String(&node, "node", "", "only this node's events")
		f.String(&typ, "type", "", "only this type (instance.error) or kind (instance, node, template, auth, scheduler)")
		f.String(&since, "since", "", "events after this event id, or at or after this RFC 3339 time")
		f.Int(&limit, "limit", 100, "at most this many (without --follow: the newest)")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q", pos[0])
	}
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	for k, v := range map[string]string{"instance_id": instance, "node_id": node, "type": typ, "since": since} {
		if v != "" {
			q.Set(k, v)
		}
	}
	print := eventPrinter(out, c.output)
	if follow {
		err := cl.FollowEvents(ctx, q, print)
		if ctx.Err() != nil {
			return nil // interrupted: the normal end of --follow
		}
		return err
	}
	evs, err := cl.Events(ctx, q)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(out, evs)
	}
	for _, ev := range evs {
		if err := print(ev); err != nil {
			return err
		}
	}
	return nil
}

// eventPrinter prints one event a line: aligned text, or JSON lines.
func eventPrinter(out io.Writer, output string) func(apiv1.Event) error {
	if output == "json" {
		return func(ev apiv1.Event) error { return printJSONLine(out, ev) }
	}
	return func(ev apiv1.Event) error {
		w := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
		subject := ev.InstanceID
		if subject == "" {
			subject = ev.NodeID
		}
		if subject == "" && ev.TemplateID != "" {
			subject = ev.TemplateID
		}
		fmt.Fprintf(w, "%s\t%-21s\t%-36s\t%s\n", ev.Time.Local().Format("2006-01-02 15:04:05"), ev.Type, subject, ev.Message)
		return w.Flush()
	}
}

func printJSONLine(out io.Writer, v any) error {
	return json.NewEncoder(out).Encode(v)
}

func vmSave(ctx context.Context, args []string, out io.Writer) error {
	var tag, description, script, newName string
	var wait bool
	var timeout time.Duration
	cl, c, pos, err := vmFlags("save", "Save a Started instance as a new tag of its template (or a new template).\nUsage: corral vm save ID --tag T [--description D] [--script TEXT|@FILE] [--new-template NAME] [--wait]", out, args, func(f *flags) {
		f.String(&tag, "tag", "", "the new tag (required)")
		f.String(&description, "description", "", "the tag's description")
		f.String(&script, "script", "", "run in the VM before saving (text, or @FILE)")
		f.String(&newName, "new-template", "", "save as a new template of this name instead")
		f.Bool(&wait, "wait", false, "wait until the save is done")
		f.Duration(&timeout, "timeout", time.Hour, "how long --wait waits")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 || tag == "" {
		return errors.New("usage: corral vm save ID --tag T [--wait]")
	}
	if script, err = scriptArg(script); err != nil {
		return err
	}
	reqID, err := cl.SaveImage(ctx, apiv1.ImageRequest{ID: pos[0], Tag: tag, Description: description, Script: script, NewTemplateName: newName})
	if err != nil {
		return err
	}
	if !wait {
		fmt.Fprintln(out, reqID)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		img, err := cl.Image(wctx, reqID)
		if err == nil && img.Status != apiv1.ImagePending {
			if c.output == "json" {
				return printJSON(out, img)
			}
			if img.Status != apiv1.ImageDone {
				return fmt.Errorf("save %s: %s: %s", reqID, img.Status, img.Message)
			}
			fmt.Fprintf(out, "%s\t%s\tsaved as tag %s\n", reqID, img.Status, tag)
			return nil
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("save %s: still pending: %w", reqID, wctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func templateDistribute(ctx context.Context, args []string, out io.Writer) error {
	var tag, group string
	var nodes []string
	var wait bool
	var timeout time.Duration
	cl, c, pos, err := vmFlags("template distribute", "Pull a template tag onto nodes ahead of instances (through the controller).\nUsage: corral template distribute TEMPLATE_ID [--tag T] [--group G | --nodes N,N] [--wait]", out, args, func(f *flags) {
		f.String(&tag, "tag", "", "the tag (default: the latest)")
		f.String(&group, "group", "", "every active node of this group id")
		f.List(&nodes, "nodes", "", "these node ids (default: every active node)")
		f.Bool(&wait, "wait", false, "wait until every node is done")
		f.Duration(&timeout, "timeout", time.Hour, "how long --wait waits")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral template distribute TEMPLATE_ID [--tag T] [--group G | --nodes N,N]")
	}
	tmpl, err := resolveTemplate(ctx, cl, pos[0])
	if err != nil {
		return err
	}
	if group != "" {
		if group, err = resolveGroup(ctx, cl, group); err != nil {
			return fmt.Errorf("--group: %w", err)
		}
	}
	if nodes, err = resolveNodes(ctx, cl, nodes); err != nil {
		return fmt.Errorf("--nodes: %w", err)
	}
	id, err := cl.Distribute(ctx, apiv1.DistributeRequest{TemplateID: tmpl, Tag: tag, GroupID: group, NodeIDs: nodes})
	if err != nil {
		return err
	}
	if !wait {
		fmt.Fprintln(out, id)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		d, err := cl.Distribution(wctx, id)
		if err == nil {
			pending, failed := 0, []string{}
			for node, st := range d.Nodes {
				switch {
				case st == "pending":
					pending++
				case strings.HasPrefix(st, "error"):
					failed = append(failed, node+": "+st)
				}
			}
			if pending == 0 {
				if c.output == "json" {
					return printJSON(out, d)
				}
				if len(failed) > 0 {
					return fmt.Errorf("distribution %s: %s", id, strings.Join(failed, "; "))
				}
				fmt.Fprintf(out, "%s\tdone on %d node(s)\n", id, len(d.Nodes))
				return nil
			}
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("distribution %s: not done: %w", id, wctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
