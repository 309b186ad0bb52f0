package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/testenv"
)

// chromium finds Debian's chromium. With CORRAL_TEST_BROWSER set (CI
// installs it) a missing browser fails the test instead of skipping it.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CORRAL_TEST_BROWSER") != "" {
		t.Fatal("CORRAL_TEST_BROWSER is set but no chromium is installed (apt-get install chromium)")
	}
	t.Skip("no chromium: set CORRAL_TEST_BROWSER=1 after apt-get install chromium")
	return ""
}

// artifactDir is where screenshots go: $CORRAL_ARTIFACTS (CI keeps it),
// else the test's temporary directory.
func artifactDir(t *testing.T) string {
	dir := os.Getenv("CORRAL_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, "dashboard")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDashboardInBrowser drives the dashboard in headless Chromium as an
// operator would: log in, start instances from the form and watch one reach
// Started without reloading, see the other's waiting reason, terminate one,
// drain a node, delete a tag; every view fits 390 px without sideways
// scrolling; screenshots at 1400 and 390 px are kept.
func TestDashboardInBrowser(t *testing.T) {
	exe := chromium(t)
	const token = "browser-root-token"
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: token},
		Nodes: []testenv.NodeOptions{{Name: "mac-mini-1", Capacity: 1}}})
	base := c.Controllers[0].URL
	shots := artifactDir(t)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("headless", "new"), chromedp.WindowSize(1400, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	bctx, cancelB := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelB()
	ctx, cancel := context.WithTimeout(bctx, 3*time.Minute)
	defer cancel()
	// confirm() dialogs are accepted, as the operator would.
	if err := chromedp.Listen(ctx, func(ev any) {
		if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			go func() {
				_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
			}()
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	fatal := func(what string, err error) {
		t.Helper()
		html, _ := chromedp.Run(ctx, chromedp.OuterHTML("body"))
		t.Fatalf("%s: %v\npage: %.3000s", what, err, html)
	}
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			fatal(what, err)
		}
	}
	text := func(what, sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			fatal(what, err)
		}
		return v
	}
	attr := func(what, sel, name string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.AttributeValue(sel, name))
		if err != nil {
			fatal(what, err)
		}
		return v.Value
	}
	shot := func(name string) {
		t.Helper()
		for _, w := range []int64{1400, 390} {
			run("viewport "+name, chromedp.EmulateViewport(w, 900))
			png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
			if err != nil {
				fatal("screenshot "+name, err)
			}
			if err := os.WriteFile(filepath.Join(shots, fmt.Sprintf("%s-%d.png", name, w)), png, 0o644); err != nil {
				t.Fatal(err)
			}
			if w == 390 {
				fits, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth + 1`))
				if err != nil {
					fatal("width "+name, err)
				}
				if !fits {
					t.Errorf("%s scrolls sideways at 390 px", name)
				}
			}
		}
		run("viewport", chromedp.EmulateViewport(1400, 900))
	}

	// Log in: the dashboard sends to its login page.
	run("login page", chromedp.Navigate(base+"/"), chromedp.WaitVisible("#token"))
	shot("login")
	run("log in", chromedp.SendKeys("#token", token), chromedp.Click("#login"), chromedp.WaitVisible("#start-panel"))

	// Start two instances from the form on a one-slot node: one starts, one
	// waits; the list updates itself.
	run("start form", chromedp.Click("#start-panel summary"), chromedp.WaitVisible("#start-form input[name=count]"),
		chromedp.SetValue("#start-form input[name=count]", "2"), chromedp.SetValue("#start-form input[name=name]", "ui-build"),
		chromedp.SetValue("#start-form textarea[name=startup_script]", "echo built in the browser"),
		chromedp.Click("#start"))
	run("started live", chromedp.WaitVisible(`#instances tr[data-state="Started"]`), chromedp.WaitVisible(`#instances tr[data-state="Scheduling"]`))
	shot("instances")
	waitingID := attr("waiting id", `#instances tr[data-state="Scheduling"]`, "data-id")
	startedID := attr("started id", `#instances tr[data-state="Started"]`, "data-id")

	// The waiting one says why; the started one shows its script and console.
	run("waiting reason", chromedp.Navigate(base+"/ui/instance?id="+waitingID), chromedp.WaitVisible("#waiting-reason"))
	reason := text("waiting reason", "#waiting-reason")
	if !strings.Contains(reason, "capacity") {
		t.Fatalf("waiting reason %q", reason)
	}
	run("started detail", chromedp.Navigate(base+"/ui/instance?id="+startedID), chromedp.WaitVisible("#console"),
		chromedp.WaitVisible("#script-stdout"))
	stdout := text("script output", "#script-stdout")
	if !strings.Contains(stdout, "built in the browser") {
		t.Fatalf("script stdout %q", stdout)
	}
	shot("instance")

	// Terminate the started one from its page: the waiting one takes the slot.
	run("terminate", chromedp.Click("#terminate"))
	c.WaitState(startedID, apiv1.StateTerminated, 30*time.Second)
	c.WaitState(waitingID, apiv1.StateStarted, 30*time.Second)

	// Drain the node.
	run("nodes", chromedp.Navigate(base+"/?view=nodes"), chromedp.WaitVisible(`tr[data-node="mac-mini-1"] button.drain`))
	shot("nodes")
	run("drain", chromedp.Click(`tr[data-node="mac-mini-1"] button.drain`),
		chromedp.WaitVisible(`tr[data-node="mac-mini-1"] button.undrain`))
	nodes, err := c.Client.Nodes(context.Background())
	if err != nil || nodes[0].State != apiv1.NodeDrain {
		t.Fatalf("after drain: %v %+v", err, nodes)
	}

	// Groups, events: rendered, and screenshots for the README.
	run("groups", chromedp.Navigate(base+"/?view=groups"), chromedp.WaitVisible("#groups"))
	shot("groups")
	run("events", chromedp.Navigate(base+"/?view=events"), chromedp.WaitVisible("#events"))
	shot("events")

	// Delete tag v1 of the template.
	run("templates", chromedp.Navigate(base+"/?view=templates"), chromedp.WaitVisible(`tr[data-tag="v1"] button.delete-tag`))
	shot("templates")
	run("delete tag", chromedp.Click(`tr[data-tag="v1"] button.delete-tag`), chromedp.WaitNotPresent(`tr[data-tag="v1"]`))
	tmpl, err := c.Controllers[0].Service.Registry().GetTemplate(context.Background(), c.TemplateID)
	if err != nil || len(tmpl.Versions) != 1 || tmpl.Versions[0].Tag != "v2" {
		t.Fatalf("after deleting v1: %v %+v", err, tmpl.Versions)
	}
	t.Logf("screenshots in %s", shots)
}
