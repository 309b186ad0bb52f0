package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/anka"
	"github.com/corral-build/corral/internal/driver/qemu"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/driver/tart"
	"github.com/corral-build/corral/internal/node"
)

// nodeFlags are shared by `corral node` and `corral up`.
type nodeFlags struct {
	name, ip, driver, dataDir, forwardHost, minFree, qemuAccel, scriptUser string
	tartUser, tartPassword, tartKey                                        string
	tartSSHPort                                                            int
	groups                                                                 []string
	capacity                                                               int
	vnc, hostNetwork                                                       bool
	// hide: more paths synthetic VMs see empty (corral up: its data dir).
	hide               []string
	bootTime, pullTime time.Duration
	tls                clientTLSFlags
}

func (n *nodeFlags) register(f *flags, prefix string) {
	f.String(&n.driver, prefix+"driver", "synthetic", "VM driver: synthetic, qemu, anka, tart (for `up`, none = no local node)")
	f.String(&n.forwardHost, prefix+"forward-host", "0.0.0.0", "qemu, tart: address guests' SSH port forwards listen on")
	f.Bool(&n.vnc, prefix+"vnc", false, "qemu: give each guest a VNC display on 127.0.0.1; tart: run guests with --vnc (Screen Sharing) and report it")
	f.String(&n.tartUser, prefix+"tart-user", "admin", "tart: the images' SSH user for startup scripts")
	f.String(&n.tartPassword, prefix+"tart-password", "admin", "tart: the images' SSH password (prefer the environment variable for a real one)")
	f.String(&n.tartKey, prefix+"tart-ssh-key", "", "tart: private key file the images authorise, used instead of the password")
	f.Int(&n.tartSSHPort, prefix+"tart-ssh-port", 22, "tart: the guests' sshd port")
	f.String(&n.qemuAccel, prefix+"qemu-accel", "auto", "qemu: accelerator: auto (KVM only if a probe guest runs under it), kvm or tcg")
	f.String(&n.name, prefix+"name", "", "node name (default: hostname)")
	f.String(&n.ip, prefix+"ip", "", "address clients use to reach this node's VMs (default: the route to the controller)")
	f.Int(&n.capacity, prefix+"capacity", 2, "instance slots (anka, tart: Apple allows 2 macOS VMs per host)")
	f.List(&n.groups, prefix+"groups", "", "groups to join on first registration, comma-separated names (created if missing)")
	f.String(&n.dataDir, prefix+"data-dir", "corral-node", "node state: identity and template cache")
	f.String(&n.minFree, prefix+"min-free-disk", "5G", "disk space template pulls leave free, deleting the least recently used unused templates (e.g. 50G, 500M; 0 = never delete)")
	f.String(&n.scriptUser, prefix+"synthetic-script-user", synthetic.DefaultScriptUser, "synthetic driver: user startup scripts run as when the node runs as root (root only if you name it)")
	f.Duration(&n.bootTime, prefix+"synthetic-boot-time", 200*time.Millisecond, "synthetic driver: time a VM takes to boot")
	f.Bool(&n.hostNetwork, prefix+"synthetic-host-network", false, "synthetic driver: give VMs the node's network (by default a node running as root gives each VM a loopback of its own and no route to anything)")
	n.tls.register(f, prefix, true, prefix == "")
	f.Duration(&n.pullTime, prefix+"synthetic-pull-time", 0, "time a simulated template pull takes, when the cloud has no registry")
}

func (n *nodeFlags) driverFor(log *slog.Logger) (driver.Driver, error) {
	switch n.driver {
	case "synthetic":
		d := synthetic.New(n.bootTime)
		d.ScriptUser, d.StateDir = n.scriptUser, filepath.Join(n.dataDir, "synthetic")
		d.Hide, d.HostNetwork = append([]string{n.dataDir}, n.hide...), n.hostNetwork
		return d, nil
	case "qemu":
		return qemu.New(qemu.Config{StateDir: filepath.Join(n.dataDir, "qemu"), ForwardHost: n.forwardHost, VNC: n.vnc, Accel: n.qemuAccel, Log: log})
	case "anka":
		return anka.New(anka.Config{Log: log})
	case "tart":
		if n.capacity > tart.MaxMacOSVMs {
			log.Warn("capacity is above Apple's limit of macOS VMs per host: tart refuses a third running macOS VM", "capacity", n.capacity, "limit", tart.MaxMacOSVMs)
		}
		return tart.New(tart.Config{User: n.tartUser, Password: n.tartPassword, KeyFile: n.tartKey, SSHPort: n.tartSSHPort,
			ForwardHost: n.forwardHost, VNC: n.vnc, Log: log})
	}
	return nil, fmt.Errorf("unknown driver %q (want synthetic, qemu, anka or tart)", n.driver)
}

func (n *nodeFlags) config(controllers []string, token string, log *slog.Logger) (node.Config, error) {
	drv, err := n.driverFor(log)
	if err != nil {
		return node.Config{}, err
	}
	tlsCfg, err := n.tls.config().Config()
	if err != nil {
		return node.Config{}, err
	}
	minFree, err := parseSize(n.minFree)
	if err != nil {
		return node.Config{}, fmt.Errorf("--min-free-disk: %w", err)
	}
	return node.Config{
		MinFreeDisk: minFree,
		TLS:         tlsCfg, ControllerURLs: controllers, Token: token, Name: n.name, IP: n.ip, Capacity: n.capacity,
		Groups: n.groups, DataDir: n.dataDir, Driver: drv,
		SimulatedPullTime: n.pullTime, Log: log,
	}, nil
}

func runNode(ctx context.Context, args []string, out io.Writer) error {
	if len(args) > 0 && nodeVerbs[args[0]] != nil {
		return nodeVerbs[args[0]](ctx, args[1:], out)
	}
	f := newFlags("node", "Run a node agent: join a controller and run the instances it assigns.", out)
	var n nodeFlags
	var controllers []string
	var token string
	var logLevel int
	var logFormat string
	f.List(&controllers, "controller", "", "controller URL(s), comma-separated, e.g. http://10.0.0.2:80")
	f.Secret(&token, "token", "join token printed by the controller")
	f.Int(&logLevel, "log-level", 0, "log verbosity: 0 info, 1+ debug", "ANKA_V")
	f.String(&logFormat, "log-format", "text", "log lines as text (key=value) or json")
	n.register(f, "")
	if err := f.Parse(args, func() *slog.Logger { return newLogger(logLevel, logFormat) }); err != nil {
		return err
	}
	if err := checkLogFormat(logFormat); err != nil {
		return err
	}
	if len(controllers) == 0 {
		return fmt.Errorf("--controller is required")
	}
	if token == "" {
		return fmt.Errorf("--token is required (the controller prints it at start)")
	}
	log := newLogger(logLevel, logFormat)
	cfg, err := n.config(controllers, token, log)
	if err != nil {
		return err
	}
	agent, err := node.New(cfg)
	if err != nil {
		return err
	}
	return agent.Run(ctx)
}

// parseSize reads a byte count: plain bytes, or with K, M, G, T (powers of
// 1024; "GiB" and "GB" are read the same).
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	shift := 0
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift > 0 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (want e.g. 50G, 500M or a byte count)", s)
	}
	return int64(n * float64(int64(1)<<shift)), nil
}
