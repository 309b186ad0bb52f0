package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/node"
)

func runUp(ctx context.Context, args []string, out io.Writer) error {
	f := newFlags("up", "Run a whole build cloud on this machine: embedded etcd, a controller and a local node.", out)
	var c controllerFlags
	var n nodeFlags
	c.register(f, ":8090")
	n.register(f, "node-")
	if err := f.Parse(args, func() *slog.Logger { return newLogger(c.logLevel) }); err != nil {
		return err
	}
	log := newLogger(c.logLevel)
	cfg, err := c.daemonConfig(log)
	if err != nil {
		return err
	}
	demoID, err := controller.WriteDemoTemplate(cfg.TemplatesFile, apiv1.NewID())
	if err != nil {
		return fmt.Errorf("template list: %w", err)
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
		ncfg, err := n.config([]string{d.URL}, d.JoinToken, log)
		if err != nil {
			return err
		}
		agent, err := node.New(ncfg)
		if err != nil {
			return err
		}
		go func() { agentDone <- agent.Run(ctx) }()
	}
	fmt.Fprintf(out, `Corral is up.
  controller API:  %[1]s/api/v1   (status: curl %[1]s/api/v1/status)
  join token:      %[2]s
  local node:      %[3]s driver
  demo template:   %[4]s

Start two instances of the demo template:
  curl -s -d '{"vmid":"%[4]s","count":2}' %[1]s/api/v1/vm
List instances:
  curl -s %[1]s/api/v1/vm
`, d.URL, d.JoinToken, n.driver, demoID)
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
