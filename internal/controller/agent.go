package controller

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// AuthorizeNode checks a node agent's join token (joining only).
func (s *Service) AuthorizeNode(ctx context.Context, token string) error {
	hash, err := s.st.JoinTokenHash(ctx)
	if errors.Is(err, store.ErrNotFound) || (err == nil && subtle.ConstantTimeCompare([]byte(hash), []byte(secretHash(token))) != 1) {
		return ErrBadToken
	}
	return err
}

// NewJoinToken makes a random join token.
func NewJoinToken() string { return randomHex(16) }

// RotateJoinToken replaces the join token and returns the new one (the only
// time it can be read: etcd keeps its hash). Joined nodes keep their own
// credentials; only new joins need the new token.
func (s *Service) RotateJoinToken(ctx context.Context) (string, error) {
	token := NewJoinToken()
	if err := s.st.SetJoinTokenHash(ctx, secretHash(token)); err != nil {
		return "", err
	}
	s.log.Info("join token rotated")
	return token, nil
}

// AuthenticateNode checks a node's own credential ("<node id>.<secret>",
// issued at join) and returns the node it belongs to.
func (s *Service) AuthenticateNode(ctx context.Context, token string) (string, error) {
	id, secret, ok := strings.Cut(token, ".")
	if !ok || !validSecretID(id) || secret == "" {
		return "", ErrBadToken
	}
	hash := []byte(secretHash(secret))
	matches := func(n store.NodeRecord) bool {
		return n.CredentialHash != "" && subtle.ConstantTimeCompare([]byte(n.CredentialHash), hash) == 1
	}
	// The view answers the common case without an etcd read (every
	// heartbeat, report and poll of every node comes here): the node is
	// there with this credential. A node the view does not have, or with
	// another credential, is read from etcd, so a credential issued a
	// moment ago works and a refusal is never the view's lag. A disjoin
	// the view has not seen yet lets a call through for that moment, as a
	// call just before the disjoin would have been; the node's lease is
	// already revoked.
	n, err := s.knownNode(ctx, id, matches)
	if errors.Is(err, ErrDisjoined) {
		// Only the disjoined node itself hears so (and stops); anyone
		// else's token is just wrong.
		if h, herr := s.st.DisjoinedCredential(ctx, id); herr == nil && subtle.ConstantTimeCompare([]byte(h), hash) == 1 {
			return "", ErrDisjoined
		} else if herr != nil && !errors.Is(herr, store.ErrNotFound) {
			return "", herr
		}
		return "", ErrBadToken
	}
	if err != nil {
		return "", err
	}
	if !matches(n) {
		return "", ErrBadToken
	}
	return id, nil
}

// NodeMismatchError is a node's call about another node.
type NodeMismatchError struct{ Caller, Target string }

func (e *NodeMismatchError) Error() string {
	return fmt.Sprintf("Permission denied: node %s may act only for itself, not for node %s", e.Caller, e.Target)
}

// NodeIdentityError is a join under the id of a node already registered,
// without that node's own credential.
type NodeIdentityError struct{ NodeID string }

func (e *NodeIdentityError) Error() string {
	return fmt.Sprintf("Permission denied: node %s is already joined; only that node's own credential re-joins it "+
		"(or an administrator disjoins it first: corral node disjoin %s); a new machine needs its own node id", e.NodeID, e.NodeID)
}

// Join registers a node and grants it a liveness lease. Groups named in the
// report are joined on first registration only; later, admins own membership.
// The join token only creates nodes: a node already registered re-joins
// with its own credential (req.NodeToken), checked in the join's
// transaction, so no holder of the join token can take over a node, read
// its instances or speak for it.
func (s *Service) Join(ctx context.Context, req apiv1.JoinRequest) (apiv1.JoinResponse, error) {
	r := req.Report
	if err := validateReport(r); err != nil {
		return apiv1.JoinResponse{}, err
	}
	groupIDs, err := s.resolveGroups(ctx, r.Groups)
	if err != nil {
		return apiv1.JoinResponse{}, err
	}
	ttl := max(int64(s.cfg.NodeLeaseTTL/time.Second), 1)
	presented := ""
	if id, secret, ok := strings.Cut(req.NodeToken, "."); ok && id == r.NodeID {
		presented = secretHash(secret)
	}
	secret := randomHex(32)
	lease, err := s.st.Join(ctx, store.NodeJoin{Report: r, Groups: groupIDs, TTL: ttl, CredentialHash: secretHash(secret),
		Admit: func(n *store.NodeRecord) error {
			// A record without a credential was disjoined mid-join or
			// written by a controller before credentials: nobody holds it.
			if n == nil || n.CredentialHash == "" {
				return nil
			}
			if presented == "" || subtle.ConstantTimeCompare([]byte(n.CredentialHash), []byte(presented)) != 1 {
				return &NodeIdentityError{NodeID: r.NodeID}
			}
			return nil
		}})
	var denied *NodeIdentityError
	if errors.As(err, &denied) {
		s.log.Warn("join refused: the node id is taken and its credential was not presented", "id", r.NodeID, "name", r.NodeName, "ip", r.IPAddress)
		return apiv1.JoinResponse{}, err
	}
	if err != nil {
		return apiv1.JoinResponse{}, err
	}
	s.log.Info("node joined", "node", r.NodeName, "id", r.NodeID, "ip", r.IPAddress, "capacity", r.Capacity, "driver", r.Driver)
	return apiv1.JoinResponse{NodeID: r.NodeID, LeaseID: lease, LeaseTTL: ttl, RegistryURL: s.cfg.RegistryURL,
		NodeToken: r.NodeID + "." + secret}, nil
}

// Bounds of what a node reports about itself: a report is stored whole in
// the node's record and read by every scheduling pass.
const (
	MaxNodeIDLen     = 128
	MaxNodeNameLen   = 256
	MaxNodeCapacity  = 1000
	MaxNodeCPUs      = 4096
	MaxNodeRAMMB     = 64 << 20 // 64 TiB
	MaxNodeGroups    = 64
	MaxNodeTemplates = 10000
	maxReportString  = 256
)

// validNodeID admits ids that are safe in a key path, a URL and a log line:
// letters, digits, '.', '_', '-', starting with a letter or digit.
func validNodeID(id string) bool {
	if id == "" || len(id) > MaxNodeIDLen {
		return false
	}
	for i, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return !strings.Contains(id, "..")
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if unicode.IsControl(c) {
			return false
		}
	}
	return true
}

// validateReport checks what a node says about itself, field by field.
func validateReport(r apiv1.NodeReport) error {
	switch {
	case r.NodeID == "":
		return fieldErr("report.node_id", "required")
	case !validNodeID(r.NodeID):
		return fieldErr("report.node_id", "1-%d letters, digits, '.', '_' or '-', starting with a letter or digit, got %.40q", MaxNodeIDLen, r.NodeID)
	case strings.TrimSpace(r.NodeName) == "":
		return fieldErr("report.node_name", "required")
	case len(r.NodeName) > MaxNodeNameLen || !printable(r.NodeName):
		return fieldErr("report.node_name", "at most %d bytes of printable UTF-8", MaxNodeNameLen)
	case r.Capacity < 0 || r.Capacity > MaxNodeCapacity:
		return fieldErr("report.capacity", "0-%d slots, got %d", MaxNodeCapacity, r.Capacity)
	case r.CPUCount < 0 || r.CPUCount > MaxNodeCPUs:
		return fieldErr("report.cpu_count", "0-%d, got %d", MaxNodeCPUs, r.CPUCount)
	case r.RAMMB < 0 || r.RAMMB > MaxNodeRAMMB:
		return fieldErr("report.ram_mb", "0-%d, got %d", MaxNodeRAMMB, r.RAMMB)
	case r.DiskSize < 0 || r.FreeDiskSpace < 0 || r.TemplateDiskUsage < 0:
		return fieldErr("report", "disk sizes must not be negative")
	case len(r.Groups) > MaxNodeGroups:
		return fieldErr("report.groups", "at most %d, got %d", MaxNodeGroups, len(r.Groups))
	case len(r.Templates) > MaxNodeTemplates:
		return fieldErr("report.templates", "at most %d, got %d", MaxNodeTemplates, len(r.Templates))
	}
	for field, v := range map[string]string{"report.ip_address": r.IPAddress, "report.host_arch": r.HostArch,
		"report.driver": r.Driver, "report.agent_version": r.AgentVersion} {
		if len(v) > maxReportString || !printable(v) {
			return fieldErr(field, "at most %d bytes of printable UTF-8", maxReportString)
		}
	}
	for _, g := range r.Groups {
		if g == "" || len(g) > maxReportString || !printable(g) {
			return fieldErr("report.groups", "names of 1-%d bytes of printable UTF-8", maxReportString)
		}
	}
	for _, t := range r.Templates {
		if len(t.UUID) > maxReportString || len(t.Name) > maxReportString || len(t.Tag) > maxReportString {
			return fieldErr("report.templates", "ids and tags of at most %d bytes", maxReportString)
		}
	}
	return nil
}

// resolveGroups maps group names or ids to ids, creating named groups that do
// not exist so `corral node --group mac-arm` works on a fresh cloud.
func (s *Service) resolveGroups(ctx context.Context, refs []string) ([]string, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	groups, err := s.st.ListGroups(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
next:
	for _, ref := range refs {
		for _, g := range groups {
			if g.ID == ref || g.Name == ref {
				ids = append(ids, g.ID)
				continue next
			}
		}
		name := ref
		g, err := s.CreateGroup(ctx, apiv1.GroupRequest{Name: &name})
		if err != nil {
			return nil, fmt.Errorf("create group %s for joining node: %w", ref, err)
		}
		groups = append(groups, g)
		ids = append(ids, g.ID)
	}
	return ids, nil
}

// Heartbeat renews a node's lease without writing to etcd.
func (s *Service) Heartbeat(ctx context.Context, req apiv1.HeartbeatRequest) error {
	if _, err := s.nodeWithLease(ctx, req); err != nil {
		return err
	}
	err := s.st.KeepAlive(ctx, req.LeaseID)
	if errors.Is(err, store.ErrLeaseExpired) {
		// The view may not have seen a disjoin yet: a disjoined node must
		// hear so, not rejoin.
		if _, gerr := s.st.GetNode(ctx, req.NodeID); errors.Is(gerr, store.ErrNotFound) {
			return ErrDisjoined
		}
	}
	return err
}

// nodeWithLease returns the node of a heartbeat or leave, checking that the
// lease it names is still the node's.
func (s *Service) nodeWithLease(ctx context.Context, req apiv1.HeartbeatRequest) (store.NodeRecord, error) {
	// The view answers the common case without an etcd read: the node is
	// there with this lease. Anything else (unknown to the view, another
	// lease) is read from etcd; a lease the view still shows but etcd has
	// revoked fails in the keep-alive itself.
	n, err := s.knownNode(ctx, req.NodeID, func(n store.NodeRecord) bool { return n.LeaseID == req.LeaseID })
	if err != nil {
		return n, err
	}
	if n.LeaseID != req.LeaseID {
		return n, ErrLeaseExpired // the node re-joined elsewhere or its lease was replaced
	}
	return n, nil
}

// Leave ends a stopping node's lease at once, so no new work is placed on
// it while it would otherwise stay Active until the TTL.
func (s *Service) Leave(ctx context.Context, req apiv1.HeartbeatRequest) error {
	n, err := s.nodeWithLease(ctx, req)
	if err != nil {
		return err
	}
	if err := s.st.ReleaseLease(ctx, req.LeaseID); err != nil {
		return err
	}
	s.log.Info("node left", "node", n.Report.NodeName, "id", req.NodeID)
	return nil
}

// UpdateReport stores a node's changed report (templates, disk, utilization).
func (s *Service) UpdateReport(ctx context.Context, r apiv1.NodeReport) error {
	if err := validateReport(r); err != nil {
		return err
	}
	if n, ok := s.st.ViewNode(r.NodeID); ok && !apiv1.ReportChanged(n.Report, r) && time.Since(n.ReportedAt) < apiv1.ReportRefresh/2 {
		// Nothing a reader or the scheduler would notice: no write. (Half
		// the refresh: an agent's own refresh, a minute after its last
		// report, then always finds the stored one old enough to write.)
		return nil
	}
	_, err := s.st.UpdateNode(ctx, r.NodeID, func(n *store.NodeRecord) error {
		n.Report, n.ReportedAt = r, time.Now().UTC()
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return ErrDisjoined
	}
	return err
}

// knownNode is a node as the view has it when fresh accepts it (nil: as it
// is; every heartbeat, report and poll of a busy cloud asks), or else as
// etcd has it; ErrDisjoined when it is gone.
func (s *Service) knownNode(ctx context.Context, id string, fresh func(store.NodeRecord) bool) (store.NodeRecord, error) {
	if n, ok := s.st.ViewNode(id); ok && (fresh == nil || fresh(n.NodeRecord)) {
		return n.NodeRecord, nil
	}
	n, err := s.st.GetNode(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return n, ErrDisjoined
	}
	return n, err
}

// WaitAssignments returns the node's desired instances once they changed after
// revision since, or after the poll interval; since 0 answers at once. With
// the store's view on, a poll costs no etcd request: the node, the wait
// and the answer all come from the view.
func (s *Service) WaitAssignments(ctx context.Context, nodeID string, since int64) (apiv1.Assignments, error) {
	if _, err := s.knownNode(ctx, nodeID, nil); errors.Is(err, ErrDisjoined) {
		return apiv1.Assignments{}, err
	}
	d, err := s.st.WaitDesired(ctx, nodeID, since, s.cfg.AssignmentPoll)
	if err != nil {
		return apiv1.Assignments{}, err
	}
	out := apiv1.Assignments{Revision: d.Rev, Prefetches: d.Prefetches, Saves: d.Saves, Assignments: d.Assignments[:0:0]}
	for _, as := range d.Assignments {
		if as.Terminate {
			out.Terminate = append(out.Terminate, as.InstanceID)
			continue
		}
		if as.Spec.ScriptRef != "" && len(as.Spec.StartupScript) == 0 {
			// Stored once per start; the node gets it inline.
			script, err := s.st.Script(ctx, as.Spec.ScriptRef)
			if err != nil {
				return apiv1.Assignments{}, fmt.Errorf("startup script of instance %s: %w", as.InstanceID, err)
			}
			as.Spec.StartupScript = script
		}
		out.Assignments = append(out.Assignments, as)
	}
	return out, nil
}

// ReportStatus applies a node's instance reports. Reports for instances no
// longer bound to the node are ignored, so a late report cannot resurrect one.
func (s *Service) ReportStatus(ctx context.Context, rep apiv1.StatusReport) error {
	// The node's name (for $node_name) and that it still exists. A disjoin
	// the view has not seen yet changes nothing: the updates below apply
	// only to instances still bound to the node.
	node, err := s.knownNode(ctx, rep.NodeID, nil)
	if errors.Is(err, ErrDisjoined) {
		return err // a disjoined node's instances are the scheduler's to fail
	}
	// Other errors: the updates below fail with their own.

	// A report's updates go to etcd together, a round per update of the same
	// instance (the k-th update of each instance in round k), so every state
	// an instance passed through is still a revision of its own for watchers
	// (the event log) while a report on many instances costs one.
	var rounds [][]apiv1.InstanceStatus
	seen := map[string]int{}
	for _, st := range rep.Instances {
		k := seen[st.InstanceID]
		seen[st.InstanceID]++
		if k == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[k] = append(rounds[k], st)
	}
	for _, round := range rounds {
		ids := make([]string, len(round))
		byID := make(map[string]apiv1.InstanceStatus, len(round))
		for i, st := range round {
			ids[i], byID[st.InstanceID] = st.InstanceID, st
		}
		err := s.st.UpdateInstances(ctx, ids, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
			st := byID[r.InstanceID]
			if r.NodeID != rep.NodeID || !r.SlotHeld {
				return store.InstanceUpdate{Skip: true}, nil
			}
			if strings.Contains(r.Name, "$node_") {
				r.Name = nodeName(r.Name, rep.NodeID, node.Report.NodeName)
			}
			u := applyStatus(r, st)
			if len(st.Console) > apiv1.MaxConsole {
				st.Console = st.Console[len(st.Console)-apiv1.MaxConsole:]
			}
			u.Console = st.Console
			return u, nil
		})
		if err != nil {
			return fmt.Errorf("report of node %s: %w", rep.NodeID, err)
		}
	}
	return nil
}

func applyStatus(r *store.InstanceRecord, st apiv1.InstanceStatus) store.InstanceUpdate {
	now := time.Now().UTC()
	if st.VMInfo != nil {
		r.VMInfo = st.VMInfo
		r.VMInfo.Timestamp = time.Now().UTC() // when the node last reported it
		if r.VMInfo.AccessDate.IsZero() {
			r.VMInfo.AccessDate = r.VMInfo.StartDate
		}
	}
	if st.StartupScript != nil {
		res := *st.StartupScript
		res.Stdout, res.Stderr = apiv1.TailOutput(res.Stdout), apiv1.TailOutput(res.Stderr)
		r.StartupScript = &res
	}
	r.TS = now
	switch {
	case st.State == apiv1.StateTerminated:
		r.State, r.FinishedAt, r.SlotHeld = apiv1.StateTerminated, now, false
		return store.InstanceUpdate{Unassign: true}
	case st.Requeue && r.State == apiv1.StateTerminating:
		r.State, r.FinishedAt, r.SlotHeld = apiv1.StateTerminated, now, false
		return store.InstanceUpdate{Unassign: true}
	case r.State == apiv1.StateTerminating && st.Released:
		// The node's VM is gone (it died, was lost, or never started) while
		// the instance was wanted gone: that is the end. Keeping Terminating
		// with the slot released stranded it, since reports for instances
		// whose slot is not held are ignored.
		r.State, r.FinishedAt, r.SlotHeld = apiv1.StateTerminated, now, false
		return store.InstanceUpdate{Unassign: true}
	case r.State == apiv1.StateTerminating:
		// Still waiting for the node to destroy the VM; keep the state.
	case st.Requeue && r.NeverStarted():
		r.Requeue(fmt.Sprintf("node %s gave it back before starting it: %s", r.NodeID, st.Message))
		return store.InstanceUpdate{Unassign: true}
	case st.Requeue:
		// Seen Started: its job may have run, so it is not run again.
		r.State, r.Message, r.SlotHeld = apiv1.StateError, st.Message, false
		return store.InstanceUpdate{Unassign: true}
	case st.State == apiv1.StateError && st.Replace:
		// Pulling -> Scheduling: another node may succeed where this one failed.
		r.FailedNodes = append(r.FailedNodes, r.NodeID)
		r.State, r.Message, r.Progress = apiv1.StateScheduling, fmt.Sprintf("%s; placing on another node", st.Message), 0
		r.NodeID, r.SlotHeld, r.VMInfo = "", false, nil
		return store.InstanceUpdate{Unassign: true}
	default:
		r.State, r.Message, r.Progress = st.State, st.Message, st.Progress
	}
	if st.Released {
		r.SlotHeld = false
	}
	return store.InstanceUpdate{}
}
