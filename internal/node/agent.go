// Package node is the node agent: it joins a controller, keeps its lease
// alive, long-polls for its desired instances and reconciles them through a
// VM driver (level-triggered: the desired set is always complete).
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/retry"
)

// Config is the agent's configuration.
type Config struct {
	ControllerURLs []string
	Token          string
	NodeID         string // empty: kept in DataDir/node-id, created on first run
	Name           string // default: hostname
	IP             string // address clients reach VMs on; default: the route to the controller
	Capacity       int
	Groups         []string
	DataDir        string
	Driver         driver.Driver
	Templates      Templates // nil: the controller's registry, else simulated pulls
	// TLS is how the node trusts HTTPS controllers and registries.
	TLS *tls.Config
	// SimulatedPullTime is how long a pull takes when the cloud has no registry.
	SimulatedPullTime time.Duration
	// MinFreeDisk is the space template pulls leave free on the data disk,
	// deleting least recently used unused templates (0: never delete).
	MinFreeDisk int64
	Log         *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	cfg    Config
	ctl    *client.Controller
	log    *slog.Logger
	report apiv1.NodeReport

	reportMu sync.Mutex // a.report's measured fields and templates
	cpuPrev  [2]uint64  // busy, total CPU jiffies at the last measure

	mu        sync.Mutex
	instances map[string]*instance
	// lost holds instances this node ran before a restart: the controller
	// may still want them, but their VMs are gone. The value says whether
	// their job may have begun (Started reported or the script run).
	lost map[string]bool
	// leaseID is the current lease, released when the agent stops.
	leaseID atomic.Int64
	// fenced: the lease was lost; start nothing until the node is back.
	fenced atomic.Bool
	// joinSent is when the last join's request was sent (heartbeatLoop's).
	joinSent time.Time
	// fencedIDs: instances this node stopped by self-fencing (a.mu). Their
	// assignments may still be listed until the controller has heard; they
	// are not started again.
	fencedIDs map[string]bool
	// inFlight holds requests being worked on: distribute pulls, image saves.
	inFlight map[string]bool
	statusCh chan apiv1.InstanceStatus
	reportCh chan struct{}
	wg       sync.WaitGroup
}

// New prepares an agent; Run joins and serves.
func New(cfg Config) (*Agent, error) {
	if cfg.Driver == nil {
		return nil, errors.New("node: no driver")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ctl, err := client.New(cfg.ControllerURLs, cfg.Token)
	if err != nil {
		return nil, err
	}
	ctl.UseTLS(cfg.TLS)
	a := &Agent{cfg: cfg, ctl: ctl, log: cfg.Log, instances: map[string]*instance{}, lost: map[string]bool{}, inFlight: map[string]bool{}, fencedIDs: map[string]bool{},
		statusCh: make(chan apiv1.InstanceStatus, 256), reportCh: make(chan struct{}, 1)}
	if err := a.describe(); err != nil {
		return nil, err
	}
	for id, begun := range a.runningMarkers() {
		a.lost[id] = begun
	}
	return a, nil
}

// ID is the node's id.
func (a *Agent) ID() string { return a.report.NodeID }

// Run joins and serves until ctx ends or the node is disjoined. On return
// every VM this agent started has been destroyed.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if sw, ok := a.cfg.Driver.(driver.Sweeper); ok {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Minute)
		if err := sw.Sweep(sctx); err != nil {
			a.log.Warn("could not delete VMs left by an earlier run of the agent", "err", err)
		}
		scancel()
	}
	join, err := a.join(ctx)
	if err != nil {
		return err
	}
	if a.cfg.Templates == nil {
		a.useRegistry(join.RegistryURL)
	}
	errc := make(chan error, 2)
	// Status reports outlive ctx so the final ones of a shutdown are sent.
	sendCtx, stopSending := context.WithCancel(context.WithoutCancel(ctx))
	sent, final := make(chan struct{}), make(chan struct{})
	go func() { a.sendStatusLoop(sendCtx, final); close(sent) }()
	go func() { errc <- a.heartbeatLoop(ctx, join) }()
	assigning := make(chan struct{})
	go func() { errc <- a.assignmentLoop(ctx); close(assigning) }()
	go a.reportLoop(ctx)
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	cancel()
	// No reconcile may start instances while they are being stopped (its
	// WaitGroup Add would race stopAll's Wait): the loop ends first.
	<-assigning
	a.stopAll()
	// Every VM is gone and every final status queued: the loop sends them
	// all (retrying a failed send) and ends, or gives up after a while.
	close(final)
	giveUp := time.AfterFunc(statusFlushTimeout, stopSending)
	<-sent
	giveUp.Stop()
	stopSending()
	if !errors.Is(err, client.ErrDisjoined) {
		// Go Offline now rather than be given work until the lease expires.
		lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
		if lerr := a.ctl.Leave(lctx, a.report.NodeID, a.leaseID.Load()); lerr != nil {
			a.log.Warn("could not release the node's lease; it goes Offline when it expires", "err", lerr)
		}
		lcancel()
	}
	return err
}

// statusFlushTimeout bounds how long a stopping agent keeps trying to send
// its final instance statuses.
const statusFlushTimeout = 10 * time.Second

// join retries (retry.Forever) until the controller accepts the node. The
// node presents its own credential from its last join (kept in the data
// dir across restarts), without which the controller refuses to re-join a
// registered node; a refusal stops the agent with the reason.
func (a *Agent) join(ctx context.Context) (apiv1.JoinResponse, error) {
	var resp apiv1.JoinResponse
	if tok := a.savedCredential(); tok != "" {
		a.ctl.UseNodeToken(tok)
	}
	err := retry.Forever.Do(ctx, func(ctx context.Context) error {
		var err error
		a.joinSent = time.Now() // the lease is granted after this
		resp, err = a.ctl.Join(ctx, a.currentReport())
		var fe *client.FailError
		switch {
		case errors.Is(err, client.ErrUnauthorized):
			return retry.Permanent(fmt.Errorf("join %s: the join token was rejected (see the controller's startup output)", a.ctl.URL()))
		case errors.As(err, &fe) && fe.HTTPStatus < 500 && fe.HTTPStatus != http.StatusTooManyRequests:
			return retry.Permanent(fmt.Errorf("join %s as node %s refused: %w", a.ctl.URL(), a.report.NodeID, err))
		case err != nil:
			a.log.Warn("join failed, retrying", "err", err)
		}
		return err
	})
	if err != nil {
		return resp, err
	}
	a.ctl.UseNodeToken(resp.NodeToken)
	if err := a.saveCredential(resp.NodeToken); err != nil {
		a.log.Warn("could not keep the node's credential; after a restart an administrator must disjoin this node before it re-joins", "err", err)
	}
	a.log.Info("node joined", "controller", a.ctl.URL(), "node_id", resp.NodeID, "lease_ttl_s", resp.LeaseTTL)
	return resp, nil
}

// credentialFile keeps the node's own credential (0600) beside its id.
func (a *Agent) credentialFile() string {
	if a.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(a.cfg.DataDir, "node-credential")
}

// savedCredential is the credential of this node's last join, if kept.
func (a *Agent) savedCredential() string {
	path := a.credentialFile()
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	tok := strings.TrimSpace(string(b))
	if id, _, _ := strings.Cut(tok, "."); id != a.report.NodeID {
		return "" // another node's (a data dir copied from elsewhere)
	}
	return tok
}

// saveCredential writes the credential whole or not at all.
func (a *Agent) saveCredential(tok string) error {
	path := a.credentialFile()
	if path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(tok + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// useRegistry pulls templates from the registry the controller names, or
// simulates pulls when the cloud has none.
func (a *Agent) useRegistry(url string) {
	if url != "" {
		if puller, ok := a.cfg.Driver.(driver.OCIPuller); ok {
			reg, err := client.NewRegistry(url)
			if err == nil {
				reg.UseTLS(a.cfg.TLS)
				creds := &registryCreds{ctl: a.ctl}
				reg.UseAuth(creds.authorization)
				// The driver's tool logs in with the node's pull token as
				// the password; the registry trades it for a token.
				a.cfg.Templates = puller.UseRegistry(driver.Registry{URL: url, Template: reg.Template,
					Credentials: func(ctx context.Context) (string, string, error) {
						h, err := creds.authorization(ctx)
						if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
							return "token", tok, err
						}
						return "", "", err
					}})
				a.log.Info("templates come from the registry's OCI endpoint, pulled by the driver", "registry", url, "driver", a.cfg.Driver.Name())
				a.templatesChanged()
				return
			}
		}
		if reg, err := client.NewRegistry(url); err == nil {
			reg.UseTLS(a.cfg.TLS)
			reg.UseAuth((&registryCreds{ctl: a.ctl}).authorization)
			a.cfg.Templates = &RegistryTemplates{Client: reg, Dir: filepath.Join(a.dataDir(), "templates"),
				MinFree: a.cfg.MinFreeDisk, InUse: a.templateInUse,
				Evicted: func(vmid, tag string) {
					a.log.Info("template deleted from this node to make room", "vmid", vmid, "tag", tag)
					if ev, ok := a.cfg.Driver.(driver.TemplateEvicter); ok {
						ectx, ecancel := context.WithTimeout(context.Background(), 2*time.Minute)
						if err := ev.TemplateEvicted(ectx, vmid, tag); err != nil {
							a.log.Warn("could not delete the driver's copy of an evicted template", "vmid", vmid, "tag", tag, "err", err)
						}
						ecancel()
					}
					a.templatesChanged()
				}}
			a.log.Info("templates come from the registry", "registry", url)
			a.templatesChanged()
			return
		}
		a.log.Warn("unusable registry URL from the controller; simulating pulls", "registry", url)
	}
	a.cfg.Templates = &SimulatedTemplates{PullTime: a.cfg.SimulatedPullTime}
}

func (a *Agent) dataDir() string {
	if a.cfg.DataDir != "" {
		return a.cfg.DataDir
	}
	return filepath.Join(os.TempDir(), "corral-node-"+a.report.NodeID)
}

// reportEvery is how often the node sends a fresh report (free disk, CPU and
// RAM use) even when nothing else changed.
const reportEvery = 15 * time.Second

// heartbeatLoop renews the lease at a third of its TTL on a fixed ticker,
// re-joining when the lease expired (e.g. after a network partition). Each
// renewal is bounded by the interval, so a hung controller costs one
// renewal, not the lease; reports run in their own loop and never delay it.
//
// Self-fencing: etcd renews a lease when a renewal arrives, never before it
// was sent, so the lease lives at least TTL past the sending of the last
// renewal that succeeded. At that moment, with no renewal since, the node
// stops every VM: the controller re-places a lost node's work only a
// fencing margin after the lease expired (scheduler.Config.FenceMargin),
// so no instance ever runs on two nodes.
func (a *Agent) heartbeatLoop(ctx context.Context, join apiv1.JoinResponse) error {
	ttl := time.Duration(join.LeaseTTL) * time.Second
	interval := ttl / 3
	tick := time.NewTicker(interval)
	defer tick.Stop()
	a.leaseID.Store(join.LeaseID)
	// The fence runs on its own timer: a renewal hanging on a dead link
	// must not delay it.
	fenceNow := func() {
		if !a.fenced.Swap(true) {
			a.fence()
		}
	}
	fence := time.AfterFunc(time.Until(a.joinSent.Add(ttl)), fenceNow)
	defer fence.Stop()
	renewed := func(sent time.Time) {
		fence.Reset(time.Until(sent.Add(ttl)))
		a.fenced.Store(false)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		sent := time.Now()
		hctx, cancel := context.WithTimeout(ctx, interval)
		err := a.ctl.Heartbeat(hctx, join.NodeID, join.LeaseID)
		cancel()
		switch {
		case err == nil:
			// Also after a fence that raced this renewal: the fenced VMs
			// are stopped and reported, and the node takes new work.
			renewed(sent)
		case errors.Is(err, client.ErrDisjoined):
			a.log.Warn("this node was disjoined from the cloud; stopping")
			return client.ErrDisjoined
		case errors.Is(err, client.ErrLeaseExpired), errors.Is(err, client.ErrUnauthorized):
			if errors.Is(err, client.ErrUnauthorized) {
				a.log.Warn("the controller refused this node's credential; joining again")
			} else {
				a.log.Warn("lease expired; joining again")
			}
			// The old lease is gone: whatever ran under it is the
			// cloud's to re-place, so it stops before the node re-joins.
			fence.Stop()
			fenceNow()
			if join, err = a.join(ctx); err != nil {
				return err
			}
			a.leaseID.Store(join.LeaseID)
			ttl = time.Duration(join.LeaseTTL) * time.Second
			interval = ttl / 3
			renewed(a.joinSent)
			tick.Reset(interval)
		default:
			if ctx.Err() == nil {
				a.log.Warn("heartbeat failed", "err", err)
			}
		}
	}
}

// reportLoop sends the node's report when its templates change, and every
// reportEvery when its measurements moved noticeably or the last one sent
// is apiv1.ReportRefresh old (a report that only drifts is not worth a
// request: the controller would not write it).
func (a *Agent) reportLoop(ctx context.Context) {
	tick := time.NewTicker(reportEvery)
	defer tick.Stop()
	var last *apiv1.NodeReport
	var lastAt time.Time
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-a.reportCh:
			forced = true
		}
		cur := a.currentReport()
		if !reportDue(last, lastAt, cur, time.Now(), forced) {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := a.ctl.Report(rctx, cur)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("report failed", "err", err)
			}
			continue
		}
		last, lastAt = &cur, time.Now()
	}
}

// reportDue decides whether a periodic report is sent: always when asked
// (forced) or nothing was sent yet, else when it changed more than a drift
// or the last sent is apiv1.ReportRefresh old.
func reportDue(last *apiv1.NodeReport, lastAt time.Time, cur apiv1.NodeReport, now time.Time, forced bool) bool {
	return forced || last == nil || apiv1.ReportChanged(*last, cur) || now.Sub(lastAt) >= apiv1.ReportRefresh
}

// currentReport measures the machine and returns a copy of the report.
func (a *Agent) currentReport() apiv1.NodeReport {
	a.reportMu.Lock()
	defer a.reportMu.Unlock()
	if a.cfg.Templates != nil {
		a.report.Templates = a.cfg.Templates.List()
	}
	a.measure(&a.report)
	r := a.report
	r.Templates = slices.Clone(r.Templates)
	return r
}

// assignmentLoop long-polls the desired set and reconciles after each answer.
func (a *Agent) assignmentLoop(ctx context.Context) error {
	var since int64
	for ctx.Err() == nil {
		as, err := a.ctl.Assignments(ctx, a.report.NodeID, since)
		if errors.Is(err, client.ErrDisjoined) {
			return client.ErrDisjoined
		}
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("fetch assignments", "err", err)
				_ = retry.Sleep(ctx, time.Second)
			}
			continue
		}
		since = as.Revision
		a.reconcile(as.Assignments, as.Terminate)
		a.prefetch(ctx, as.Prefetches)
		a.saveImages(ctx, as.Saves)
	}
	return nil
}

// maxReportBytes bounds one status report's instances (the controller
// takes bodies up to 8 MiB).
const maxReportBytes = 2 << 20

// reportPart is how many of batch's first statuses go in one report: at
// least one, and no more than maxReportBytes of them (each bounded by its
// console and script output tails).
func reportPart(batch []apiv1.InstanceStatus) int {
	size := 0
	for i, st := range batch {
		n := 1024 + len(st.Console) + len(st.Message)
		if st.StartupScript != nil {
			n += len(st.StartupScript.Stdout) + len(st.StartupScript.Stderr)
		}
		if size += n; size > maxReportBytes && i > 0 {
			return i
		}
	}
	return len(batch)
}

// fence destroys every VM after the node lost its lease without being able
// to tell (a partition): the controller already counts them as gone.
func (a *Agent) fence() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.Warn("lease lost: stopping every VM on this node (self-fencing)", "vms", len(a.instances))
	for id, in := range a.instances {
		in.fenced.Store(true)
		a.fencedIDs[id] = true
		in.terminate()
	}
}

// stopAll destroys every VM on shutdown; the controller learns they failed.
func (a *Agent) stopAll() {
	a.mu.Lock()
	for _, in := range a.instances {
		in.shutdown.Store(true)
		in.terminate()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// sendStatusLoop batches instance updates to the controller, retrying failed
// sends, until ctx ends or, once final is closed (nothing more will be
// queued), everything queued is sent.
func (a *Agent) sendStatusLoop(ctx context.Context, final <-chan struct{}) {
	var batch []apiv1.InstanceStatus
	for {
		if len(batch) == 0 {
			select {
			case st := <-a.statusCh:
				batch = append(batch, st)
			case <-final:
				select {
				case st := <-a.statusCh:
					batch = append(batch, st)
				default:
					return // all sent
				}
			case <-ctx.Done():
				return
			}
		}
	drain:
		for {
			select {
			case st := <-a.statusCh:
				batch = append(batch, st)
			default:
				break drain
			}
		}
		// A shutdown still reports the final Terminated states. A report
		// stays far below the controller's body limit: a batch goes in
		// parts of at most maxReportBytes.
		part := reportPart(batch)
		sendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := a.ctl.SendStatus(sendCtx, a.report.NodeID, batch[:part])
		cancel()
		if err == nil {
			batch = append(batch[:0], batch[part:]...)
			continue
		}
		a.log.Warn("send instance status", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) sendStatus(st apiv1.InstanceStatus) { a.statusCh <- st }

// templatesChanged asks the heartbeat loop to send a fresh report.
func (a *Agent) templatesChanged() {
	select {
	case a.reportCh <- struct{}{}:
	default:
	}
}

// templateInUse reports whether any instance on this node (booting or
// running) uses vmid/tag.
func (a *Agent) templateInUse(vmid, tag string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, in := range a.instances {
		if in.as.VMID == vmid && in.as.Tag == tag {
			return true
		}
	}
	return false
}

// Running lists the instances whose VM this agent has booted and not yet
// destroyed.
func (a *Agent) Running() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id, in := range a.instances {
		if in.runningVM() != nil {
			ids = append(ids, id)
		}
	}
	return ids
}
