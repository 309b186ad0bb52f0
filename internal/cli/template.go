package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/corral-build/corral/client"
)

// runTemplate dispatches `corral template <verb>`.
func runTemplate(ctx context.Context, args []string, out io.Writer) error {
	verbs := map[string]func(context.Context, []string, io.Writer) error{
		"push": templatePush, "pull": templatePull, "list": templateList,
		"describe": templateDescribe, "delete": templateDelete, "revert": templateRevert,
		"distribute": templateDistribute,
	}
	if len(args) == 0 || verbs[args[0]] == nil {
		fmt.Fprintln(out, "Usage: corral template <push|pull|list|describe|delete|revert|distribute> [flags] (each has --help)")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return fmt.Errorf("want a verb: push, pull, list, describe, delete, revert or distribute")
	}
	return verbs[args[0]](ctx, args[1:], out)
}

// templateFlags parses a template verb's flags; positional arguments come
// before or after flags.
func templateFlags(name, summary string, out io.Writer, args []string, define func(f *flags)) (*client.Registry, []string, error) {
	f := newFlags("template "+name, summary, out)
	var url, rootToken, token string
	var tlsFlags clientTLSFlags
	f.String(&url, "registry", "http://127.0.0.1:8089", "registry URL", "ANKA_ANKA_REGISTRY")
	f.Secret(&rootToken, "root-token", "authenticate as root (a registry with --enable-auth)", "ANKA_ROOT_TOKEN")
	f.Secret(&token, "registry-token", "authenticate with a registry token (from the controller's GET /api/v1/registry/token)")
	tlsFlags.register(f, "", true, true)
	if define != nil {
		define(f)
	}
	var positional []string
	for len(args) > 0 {
		if err := f.fs.Parse(args); err != nil {
			return nil, nil, err
		}
		args = f.fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	if err := f.Parse(nil, slog.Default); err != nil {
		return nil, nil, err
	}
	if err := ValidateRegistryURL(url); err != nil {
		return nil, nil, fmt.Errorf("--registry: %w", err)
	}
	reg, err := client.NewRegistry(url)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case token != "":
		reg.UseAuth(func(context.Context) (string, error) { return "Bearer " + token, nil })
	case rootToken != "":
		reg.UseRootToken(rootToken)
	}
	tlsCfg, err := tlsFlags.config().Config()
	reg.UseTLS(tlsCfg)
	return reg, positional, err
}

func templatePush(ctx context.Context, args []string, out io.Writer) error {
	var o client.PushOptions
	reg, pos, err := templateFlags("push", "Push a directory (config, disk images, nvram) or one disk image as a new tag.\nUsage: corral template push <dir|image> --name N --tag T", out, args, func(f *flags) {
		f.String(&o.Template, "name", "", "template name (created on first push)")
		f.String(&o.Tag, "tag", "", "tag name for this version")
		f.String(&o.Description, "description", "", "tag description")
		f.String(&o.Arch, "arch", "", "amd64 or arm64 (default: from the config file, else amd64)")
		f.Int(&o.Concurrency, "concurrency", client.DefaultConcurrency, "requests in flight (each up to 64 chunks)")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 || o.Template == "" || o.Tag == "" {
		return fmt.Errorf("usage: corral template push <dir|image> --name N --tag T")
	}
	o.Source = pos[0]
	p := newProgressPrinter(os.Stderr)
	o.Progress = p.print
	res, err := reg.Push(ctx, o)
	p.finish()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pushed %s tag %s (number %d) as template %s\n", o.Template, res.Tag, res.Number, res.TemplateID)
	fmt.Fprintf(out, "  %s in %d chunks: %d all-zero (never sent), %d unique, %d sent (%s on the wire), %d already in the registry\n",
		bytesHuman(res.TotalBytes), res.UniqueChunks+res.ZeroChunks, res.ZeroChunks, res.UniqueChunks, res.SentChunks,
		bytesHuman(res.SentBytes), res.UniqueChunks-res.SentChunks)
	return nil
}

func templatePull(ctx context.Context, args []string, out io.Writer) error {
	var o client.PullOptions
	reg, pos, err := templateFlags("pull", "Pull a template tag into a directory (sparse files, every chunk verified).\nUsage: corral template pull <name|id> --dest DIR [--tag T]", out, args, func(f *flags) {
		f.String(&o.Tag, "tag", "", "tag (default: latest)")
		f.String(&o.Dest, "dest", "", "directory to write the files into")
		f.Int(&o.Concurrency, "concurrency", client.DefaultConcurrency, "requests in flight (each up to 64 chunks)")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 || o.Dest == "" {
		return fmt.Errorf("usage: corral template pull <name|id> --dest DIR [--tag T]")
	}
	if o.TemplateID, err = reg.FindTemplate(ctx, pos[0]); err != nil {
		return err
	}
	p := newProgressPrinter(os.Stderr)
	o.Progress = p.print
	res, err := reg.Pull(ctx, o)
	p.finish()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pulled %s tag %s into %s: %s, %d chunks downloaded (%s), %d reused locally, %d zero\n",
		res.TemplateName, res.Tag, o.Dest, bytesHuman(res.TotalBytes), res.DownloadedChunk, bytesHuman(res.WireBytes),
		res.LocalChunks, res.ZeroChunks)
	return nil
}

func templateList(ctx context.Context, args []string, out io.Writer) error {
	reg, _, err := templateFlags("list", "List templates.", out, args, nil)
	if err != nil {
		return err
	}
	list, err := reg.Templates(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tARCH\tSIZE")
	for _, t := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Arch, bytesHuman(t.Size))
	}
	return tw.Flush()
}

func templateDescribe(ctx context.Context, args []string, out io.Writer) error {
	reg, pos, err := templateFlags("describe", "Show a template and its tags as JSON.\nUsage: corral template describe <name|id>", out, args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: corral template describe <name|id>")
	}
	id, err := reg.FindTemplate(ctx, pos[0])
	if err != nil {
		return err
	}
	t, err := reg.Template(ctx, id)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(t)
}

func templateDelete(ctx context.Context, args []string, out io.Writer) error {
	var tag string
	reg, pos, err := templateFlags("delete", "Delete a template, or one tag with --tag. Space is freed by the next GC.\nUsage: corral template delete <name|id> [--tag T]", out, args, func(f *flags) {
		f.String(&tag, "tag", "", "delete only this tag")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: corral template delete <name|id> [--tag T]")
	}
	id, err := reg.FindTemplate(ctx, pos[0])
	if err != nil {
		return err
	}
	return reg.Delete(ctx, id, tag)
}

func templateRevert(ctx context.Context, args []string, out io.Writer) error {
	reg, pos, err := templateFlags("revert", "Drop a template's latest tag.\nUsage: corral template revert <name|id>", out, args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: corral template revert <name|id>")
	}
	id, err := reg.FindTemplate(ctx, pos[0])
	if err != nil {
		return err
	}
	return reg.Revert(ctx, id)
}

// progressPrinter draws a one-line bar on a terminal and plain lines elsewhere.
type progressPrinter struct {
	w        io.Writer
	terminal bool
	last     time.Time
	phase    string
	drawn    bool
}

func newProgressPrinter(w *os.File) *progressPrinter {
	st, err := w.Stat()
	return &progressPrinter{w: w, terminal: err == nil && st.Mode()&os.ModeCharDevice != 0}
}

func (p *progressPrinter) print(pr client.Progress) {
	if pr.Phase == "done" {
		return
	}
	pct := 100.0
	if pr.Total > 0 {
		pct = 100 * float64(pr.Done) / float64(pr.Total)
	}
	line := fmt.Sprintf("%-11s %5.1f%% %s/%s %s/s ETA %s  chunks sent %d, skipped %d, wire %s",
		pr.Phase, pct, bytesHuman(pr.Done), bytesHuman(pr.Total), bytesHuman(int64(pr.Rate())),
		pr.ETA().Round(time.Second), pr.Chunks, pr.Skipped, bytesHuman(pr.WireBytes))
	if p.terminal {
		if p.drawn && pr.Phase != p.phase {
			fmt.Fprintln(p.w) // keep each finished phase on its own line
		}
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.drawn, p.phase = true, pr.Phase
		return
	}
	if pr.Phase != p.phase || time.Since(p.last) >= 2*time.Second || pr.Done == pr.Total {
		p.phase = pr.Phase
		fmt.Fprintln(p.w, line)
		p.last = time.Now()
	}
}

func (p *progressPrinter) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
