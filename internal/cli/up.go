package cli

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/node"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
)

func runUp(ctx context.Context, args []string, out io.Writer) error {
	f := newFlags("up", "Run a whole build cloud on this machine: embedded etcd, a controller, a registry and a local node.", out)
	f.warnAnka = true
	var c controllerFlags
	var n nodeFlags
	var r registryFlags
	// One machine: reachable only from it unless --listen says otherwise.
	c.register(f, "127.0.0.1:8090")
	n.register(f, "node-")
	f.String(&n.driver, "driver", n.driver, "the local node's VM driver (same as --node-driver)")
	r.register(f, "registry-", "127.0.0.1:8089", "")
	if err := f.Parse(args, func() *slog.Logger { return newLogger(c.logLevel, c.logFormat) }); err != nil {
		return err
	}
	if err := checkLogFormat(c.logFormat); err != nil {
		return err
	}
	log := newLogger(c.logLevel, c.logFormat)
	r.accessLog = c.accessLog

	// A local registry unless --registry-url names another one.
	if c.registryURL == "" {
		if r.dataDir == "" {
			r.dataDir = filepath.Join(c.dataDir, "registry")
		}
		rcfg, err := r.config(log)
		if err != nil {
			return err
		}
		// The controller's credentials guard the registry too.
		rcfg.Auth = regdaemon.Auth{Enabled: c.enableAuth, RootToken: c.rootToken, TokenSecret: c.registryTokenSecret}
		if host, port, err := net.SplitHostPort(c.listen); err == nil && port != "0" {
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			scheme := "http://"
			if c.tls.useHTTPS {
				scheme = "https://"
			}
			rcfg.Auth.ControllerURL = scheme + net.JoinHostPort(host, port)
		}
		reg, err := regdaemon.Start(rcfg)
		if err != nil {
			return err
		}
		defer reg.Close()
		c.registryURL = reg.URL
	}
	cfg, err := c.daemonConfig(log)
	if err != nil {
		return err
	}
	demoID, err := seedDemoTemplate(ctx, c.registryURL, c.rootToken, filepath.Join(c.dataDir, "demo-template"))
	if err != nil {
		return fmt.Errorf("demo template: %w", err)
	}
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer d.Close()

	agentDone := make(chan error, 1)
	if n.driver != "none" {
		if n.dataDir == "corral-node" {
			n.dataDir = filepath.Join(c.dataDir, "node")
		}
		n.hide = append(n.hide, c.dataDir) // etcd's and the registry's data too
		if n.forwardHost == "0.0.0.0" {
			n.forwardHost = "127.0.0.1" // one machine: keep guests' SSH on loopback
		}
		token := d.JoinToken
		if token == "" { // etcd keeps only its hash: this machine's node gets a new one
			if token, err = d.Service.RotateJoinToken(ctx); err != nil {
				return err
			}
			d.JoinToken, d.JoinTokenCreated = token, true
		}
		ncfg, err := n.config([]string{d.URL}, token, log)
		if err != nil {
			return err
		}
		agent, err := node.New(ncfg)
		if err != nil {
			return err
		}
		go func() { agentDone <- agent.Run(ctx) }()
	}
	// With auth on, the hints carry the root token from the environment
	// (never printed: it was given with --root-token or its file).
	curlAuth, authNote := "", ""
	if c.enableAuth {
		curlAuth = ` -u "root:$ANKA_ROOT_TOKEN"`
		authNote = "\nAuthentication is on: export ANKA_ROOT_TOKEN=<the root token you gave> for the commands below\n(the dashboard asks for it too; API keys: corral apikey).\n"
	}
	fmt.Fprintf(out, `Corral is up.
  dashboard:       %[1]s/
  controller API:  %[1]s/api/v1   (status: curl%[7]s %[1]s/api/v1/status)
  registry:        %[2]s   (templates: curl%[7]s %[2]s/registry/vm)
  OCI registry:    %[6]s   (oras/crane/skopeo, plain HTTP)
  join token:      %[3]s
  local node:      %[4]s driver
  demo template:   %[5]s
%[8]s
Start two instances of the demo template:
  curl -s%[7]s -d '{"vmid":"%[5]s","count":2}' %[1]s/api/v1/vm
List instances:
  curl -s%[7]s %[1]s/api/v1/vm
Push your own template:
  corral template push ./my-vm-dir --name my-vm --tag v1 --registry %[2]s
`, d.URL, c.registryURL, shownJoinToken(d, c.showJoinToken), n.driver, demoID, strings.TrimPrefix(strings.TrimPrefix(c.registryURL, "http://"), "https://"),
		curlAuth, authNote)
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-agentDone:
		if err != nil {
			return fmt.Errorf("local node: %w", err)
		}
	case err := <-d.EtcdErr():
		return fmt.Errorf("embedded etcd: %w", err)
	}
	if n.driver != "none" {
		<-agentDone // the node destroys its VMs before the controller goes
	}
	return nil
}

// seedDemoTemplate pushes a small "demo" template (a sparse 256 MiB disk with
// 4 MiB of data, a config and an nvram) unless the registry has templates.
func seedDemoTemplate(ctx context.Context, registryURL, rootToken, dir string) (string, error) {
	reg, err := client.NewRegistry(registryURL)
	if err != nil {
		return "", err
	}
	if rootToken != "" {
		reg.UseRootToken(rootToken)
	}
	list, err := reg.Templates(ctx)
	if err != nil {
		return "", err
	}
	for _, t := range list {
		if t.Name == "demo" {
			return t.ID, nil
		}
	}
	if len(list) > 0 {
		return list[0].ID, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cfg, _ := json.Marshal(map[string]any{"name": "demo", "arch": runtime.GOARCH, "cpu": 2, "ram_mb": 4096, "disk_size": 256 << 20})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		return "", err
	}
	nvram := make([]byte, 64<<10)
	rand.Read(nvram[:4096])
	if err := os.WriteFile(filepath.Join(dir, "nvram"), nvram, 0o644); err != nil {
		return "", err
	}
	disk, err := os.Create(filepath.Join(dir, "disk.img"))
	if err != nil {
		return "", err
	}
	defer disk.Close()
	if err := disk.Truncate(256 << 20); err != nil {
		return "", err
	}
	data := make([]byte, 4<<20)
	rand.Read(data)
	if _, err := disk.WriteAt(data, 0); err != nil {
		return "", err
	}
	res, err := reg.Push(ctx, client.PushOptions{Source: dir, Template: "demo", Tag: "v1", Description: "demo template"})
	return res.TemplateID, err
}
