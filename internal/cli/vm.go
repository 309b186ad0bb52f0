package cli

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
)

// runVM dispatches `corral vm <verb>`: instances without curl.
func runVM(ctx context.Context, args []string, out io.Writer) error {
	verbs := map[string]func(context.Context, []string, io.Writer) error{
		"start": vmStart, "list": vmList, "show": vmShow, "terminate": vmTerminate, "wait": vmWait,
		"restart": vmRestart, "logs": vmLogs, "ssh": vmSSH, "save": vmSave,
	}
	if len(args) == 0 || verbs[args[0]] == nil {
		fmt.Fprintln(out, "Usage: corral vm <start|list|show|terminate|restart|logs|wait|ssh|save> [flags] (each has --help)")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errors.New("want a verb: start, list, show, terminate, restart, logs, wait, ssh or save")
	}
	return verbs[args[0]](ctx, args[1:], out)
}

type vmCommon struct {
	output string
}

// vmFlags parses a vm verb's flags (positional arguments before or after
// them) and returns a client of the controller.
func vmFlags(name, summary string, out io.Writer, args []string, define func(f *flags)) (*client.Controller, vmCommon, []string, error) {
	if !strings.Contains(name, " ") {
		name = "vm " + name
	}
	f := newFlags(name, summary, out)
	var controllers []string
	var rootToken, ctxName string
	var c vmCommon
	var tlsFlags clientTLSFlags
	f.List(&controllers, "controller", "", "controller URL(s), comma-separated (default: the saved context's, else http://127.0.0.1:8090)")
	f.Secret(&rootToken, "root-token", "authenticate as root (a controller with --enable-auth; default: the saved context's)", "ANKA_ROOT_TOKEN")
	f.String(&ctxName, "context", "", "a context saved by `corral login` (default: the current one)")
	f.String(&c.output, "output", "table", "table (for people) or json (for scripts)")
	tlsFlags.register(f, "", true, false)
	if define != nil {
		define(f)
	}
	positional, err := parseInterleaved(f, args, slog.Default)
	if err != nil {
		return nil, c, nil, err
	}
	if c.output != "table" && c.output != "json" {
		return nil, c, nil, fmt.Errorf("--output: want table or json, got %q", c.output)
	}
	if len(controllers) == 0 || ctxName != "" {
		saved, ok, err := currentContext(ctxName)
		if err != nil {
			return nil, c, nil, err
		}
		switch {
		case ok && len(controllers) == 0:
			controllers = []string{saved.Controller}
			rootToken = cmp.Or(rootToken, saved.RootToken)
		case len(controllers) == 0:
			controllers = []string{"http://127.0.0.1:8090"}
		}
	}
	cl, err := client.New(controllers, "")
	if err != nil {
		return nil, c, nil, err
	}
	if rootToken != "" {
		cl.UseRootToken(rootToken)
	}
	tlsCfg, err := tlsFlags.config().Config()
	cl.UseTLS(tlsCfg)
	return cl, c, positional, err
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// sshEndpoint is where an instance's SSH is reached ("" before it runs).
func sshEndpoint(in apiv1.Instance) string { return in.VMInfo.SSHEndpoint() }

// scriptArg reads a --script value: the text, or @FILE's contents.
func scriptArg(script string) (string, error) {
	path, ok := strings.CutPrefix(script, "@")
	if !ok {
		return script, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--script: %w", err)
	}
	return string(data), nil
}

func vmStart(ctx context.Context, args []string, out io.Writer) error {
	var vmid, tag, group, node, externalID, name, script string
	var count, priority, vcpu, vram int
	var wait bool
	var timeout time.Duration
	cl, c, _, err := vmFlags("start", "Start instances of a template.\nUsage: corral vm start --vmid ID [--tag T] [--count N] [--group G] [--wait]", out, args, func(f *flags) {
		f.String(&vmid, "vmid", "", "template id (see corral template list)")
		f.String(&tag, "tag", "", "template tag (default: the latest)")
		f.Int(&count, "count", 1, "number of instances")
		f.String(&group, "group", "", "node group id")
		f.String(&node, "node", "", "node id")
		f.Int(&priority, "priority", 0, "1 (most urgent) to 10000 (default 1000)")
		f.String(&externalID, "external-id", "", "your reference for the instances")
		f.String(&name, "name", "", "instance name")
		f.String(&script, "script", "", "startup script run in each VM (text, or @FILE)")
		f.Int(&vcpu, "vcpu", 0, "vCPUs per VM (default: the template's)")
		f.Int(&vram, "vram", 0, "RAM per VM in MiB (default: the template's)")
		f.Bool(&wait, "wait", false, "wait until every instance is Started and print its SSH endpoint")
		f.Duration(&timeout, "timeout", 10*time.Minute, "how long --wait waits")
	})
	if err != nil {
		return err
	}
	if vmid == "" {
		return errors.New("--vmid is required")
	}
	if vmid, err = resolveTemplate(ctx, cl, vmid); err != nil {
		return fmt.Errorf("--vmid: %w", err)
	}
	if group != "" {
		if group, err = resolveGroup(ctx, cl, group); err != nil {
			return fmt.Errorf("--group: %w", err)
		}
	}
	if node != "" {
		if node, err = resolveNode(ctx, cl, node); err != nil {
			return fmt.Errorf("--node: %w", err)
		}
	}
	req := map[string]any{"vmid": vmid, "count": count}
	for k, v := range map[string]string{"tag": tag, "group_id": group, "node_id": node, "external_id": externalID, "name": name} {
		if v != "" {
			req[k] = v
		}
	}
	if priority > 0 {
		req["priority"] = priority
	}
	if vcpu > 0 {
		req["vcpu"] = vcpu
	}
	if vram > 0 {
		req["vram"] = vram
	}
	if script, err = scriptArg(script); err != nil {
		return err
	}
	if script != "" {
		req["startup_script"] = base64.StdEncoding.EncodeToString([]byte(script))
		req["script_monitoring"] = true
	}
	ids, err := cl.StartInstances(ctx, req)
	if err != nil {
		return err
	}
	if !wait {
		if c.output == "json" {
			return printJSON(out, ids)
		}
		for _, id := range ids {
			fmt.Fprintln(out, id)
		}
		return nil
	}
	started, err := waitAll(ctx, cl, ids, apiv1.StateStarted, timeout)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(out, started)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tSTATE\tSSH")
	for _, in := range started {
		fmt.Fprintf(w, "%s\t%s\t%s\n", in.InstanceID, in.State, sshEndpoint(in))
	}
	return w.Flush()
}

func vmList(ctx context.Context, args []string, out io.Writer) error {
	var state, group, node string
	cl, c, _, err := vmFlags("list", "List instances.\nUsage: corral vm list [--state S] [--group G] [--node N]", out, args, func(f *flags) {
		f.String(&state, "state", "", "only instances in this state (Scheduling, Pulling, Started, Error, ...)")
		f.String(&group, "group", "", "only instances of this group id")
		f.String(&node, "node", "", "only instances on this node id")
	})
	if err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"state": state, "group_id": group, "node_id": node} {
		if v != "" {
			q.Set(k, v)
		}
	}
	items, err := cl.Instances(ctx, q.Encode())
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(out, items)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tSTATE\tTEMPLATE\tTAG\tNODE\tSSH\tMESSAGE")
	for _, it := range items {
		in := it.VM
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.InstanceID, in.State, in.VMID, in.Tag, in.NodeID, sshEndpoint(in), in.Message)
	}
	return w.Flush()
}

func vmShow(ctx context.Context, args []string, out io.Writer) error {
	cl, c, pos, err := vmFlags("show", "Show one instance.\nUsage: corral vm show ID", out, args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral vm show ID")
	}
	ids, err := resolveInstances(ctx, cl, pos)
	if err != nil {
		return err
	}
	in, err := cl.Instance(ctx, ids[0])
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(out, in)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	rows := [][2]string{{"instance", in.InstanceID}, {"state", in.State}, {"message", in.Message}, {"template", in.VMID},
		{"tag", in.Tag}, {"node", in.NodeID}, {"ssh", sshEndpoint(in)}, {"external id", in.ExternalID}, {"name", in.Name}}
	if s := in.StartupScript; s != nil {
		rows = append(rows, [2]string{"startup script", fmt.Sprintf("exit %d, timed out %v", s.ReturnCode, s.DidTimeout)})
	}
	for _, r := range rows {
		if r[1] != "" {
			fmt.Fprintf(w, "%s\t%s\n", r[0], r[1])
		}
	}
	return w.Flush()
}

func vmTerminate(ctx context.Context, args []string, out io.Writer) error {
	var all bool
	var state string
	cl, _, pos, err := vmFlags("terminate", "Terminate instances.\nUsage: corral vm terminate ID... | --all [--state S]", out, args, func(f *flags) {
		f.Bool(&all, "all", false, "every instance (with --state, every one in that state)")
		f.String(&state, "state", "", "with --all: only instances in this state")
	})
	if err != nil {
		return err
	}
	switch {
	case all && len(pos) > 0:
		return errors.New("give instance ids or --all, not both")
	case !all && len(pos) == 0:
		return errors.New("usage: corral vm terminate ID... | --all [--state S]")
	case all:
		q := url.Values{}
		if state != "" {
			q.Set("state", state)
		}
		items, err := cl.Instances(ctx, q.Encode())
		if err != nil {
			return err
		}
		for _, it := range items {
			if it.VM.State != apiv1.StateTerminated && it.VM.State != apiv1.StateTerminating {
				pos = append(pos, it.InstanceID)
			}
		}
	}
	if !all {
		if pos, err = resolveInstances(ctx, cl, pos); err != nil {
			return err
		}
	}
	var failed []string
	for _, id := range pos {
		if err := cl.Terminate(ctx, id); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", id, err))
			continue
		}
		fmt.Fprintln(out, id)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d not terminated: %s", len(failed), len(pos), strings.Join(failed, "; "))
	}
	return nil
}

func vmWait(ctx context.Context, args []string, out io.Writer) error {
	var state string
	var timeout time.Duration
	cl, c, pos, err := vmFlags("wait", "Wait until instances reach a state (it fails if one ends in Error first).\nUsage: corral vm wait ID... [--state Started]", out, args, func(f *flags) {
		f.String(&state, "state", apiv1.StateStarted, "the state to wait for")
		f.Duration(&timeout, "timeout", 10*time.Minute, "how long to wait")
	})
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return errors.New("usage: corral vm wait ID... [--state S]")
	}
	if pos, err = resolveInstances(ctx, cl, pos); err != nil {
		return err
	}
	got, err := waitAll(ctx, cl, pos, state, timeout)
	if err != nil {
		return err
	}
	return printReached(out, c.output, got)
}

// waitAll waits, within timeout, until every instance reaches state.
func waitAll(ctx context.Context, cl *client.Controller, ids []string, state string, timeout time.Duration) ([]apiv1.Instance, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	got := make([]apiv1.Instance, 0, len(ids))
	for _, id := range ids {
		in, err := cl.WaitStateFunc(wctx, id, state, func(in apiv1.Instance) {
			// Progress on stderr: why it waits, as it changes.
			if in.State != state && in.Message != "" {
				fmt.Fprintf(os.Stderr, "%s\t%s: %s\n", shortID(in.InstanceID), in.State, in.Message)
			}
		})
		if err != nil {
			return got, err
		}
		got = append(got, in)
	}
	return got, nil
}

// printReached prints instances that reached a state: id, state, SSH.
func printReached(out io.Writer, output string, got []apiv1.Instance) error {
	if output == "json" {
		return printJSON(out, got)
	}
	for _, in := range got {
		fmt.Fprintf(out, "%s\t%s\t%s\n", in.InstanceID, in.State, sshEndpoint(in))
	}
	return nil
}

// shortID is the 8 characters of an id the dashboard shows (and the CLI takes).
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
