package v1

// The node agent is an API client of the controller. These types form its
// protocol (under /api/v1/agent/, authenticated by the join token). Liveness is
// an etcd lease the controller renews on each heartbeat, so heartbeats never
// write to etcd.

import (
	"math"
	"reflect"
	"time"
)

// NodeReport is what a node says about itself on join and when it changes.
type NodeReport struct {
	NodeID        string         `json:"node_id"`
	NodeName      string         `json:"node_name"`
	IPAddress     string         `json:"ip_address"`
	HostArch      string         `json:"host_arch"`
	CPUCount      int            `json:"cpu_count"`
	RAMMB         int            `json:"ram_mb"`
	DiskSize      int64          `json:"disk_size"`
	FreeDiskSpace int64          `json:"free_disk_space"`
	Capacity      int            `json:"capacity"` // slots; the admin may override via node/config
	Driver        string         `json:"driver"`
	AgentVersion  string         `json:"agent_version,omitempty"`
	Groups        []string       `json:"groups,omitempty"` // group names or ids to join on first registration
	Templates     []NodeTemplate `json:"templates"`
	CPUUtil       float64        `json:"cpu_util"`
	RAMUtil       float64        `json:"ram_util"`
	// TemplateDiskUsage is what the node's template cache holds (bytes).
	TemplateDiskUsage int64 `json:"template_disk_usage"`
}

// JoinRequest registers (or re-registers) a node.
type JoinRequest struct {
	Report NodeReport `json:"report"`
	// NodeToken is the node's own credential from its last join. A node
	// already registered under Report.NodeID joins again only with it:
	// the join token alone creates new nodes, never takes over one.
	NodeToken string `json:"node_token,omitempty"`
}

// JoinResponse grants the node a liveness lease.
type JoinResponse struct {
	NodeID      string `json:"node_id"`
	LeaseID     int64  `json:"lease_id"`
	LeaseTTL    int64  `json:"lease_ttl"` // seconds; heartbeat at a third of it
	RegistryURL string `json:"registry_url"`
	// NodeToken is this node's own credential for every later agent call
	// (Authorization: Bearer <token>); the join token only joins. A new
	// join issues a new one.
	NodeToken string `json:"node_token"`
}

// HeartbeatRequest renews the node's lease.
type HeartbeatRequest struct {
	NodeID  string `json:"node_id"`
	LeaseID int64  `json:"lease_id"`
}

// Assignment is one instance the controller wants running on a node. The set
// of assignments is the node's whole desired state: anything else it runs is
// to be destroyed.
type Assignment struct {
	InstanceID string    `json:"instance_id"`
	VMID       string    `json:"vmid"`
	Tag        string    `json:"tag"`
	Spec       StartSpec `json:"spec"`
	// Terminate marks a stored assignment the controller wants gone; the
	// long poll lists such instances in Assignments.Terminate instead.
	Terminate bool `json:"terminate,omitempty"`
	// Restarts counts restarts asked for (POST /api/v1/rpc/vm/restart): a
	// node whose VM ran an older count stops and starts it again in place.
	Restarts int `json:"restarts,omitempty"`
}

// Assignments is the long-poll answer: the full desired set at Revision.
type Assignments struct {
	Revision    int64        `json:"revision"`
	Assignments []Assignment `json:"assignments"`
	// Terminate lists instances placed on the node and wanted gone: the node
	// destroys the VM if it has one and reports each Terminated either way
	// (it may never have seen the assignment), which frees the slot.
	Terminate []string `json:"terminate,omitempty"`
	// Prefetches are templates to pull ahead of any instance (distribute).
	Prefetches []Prefetch `json:"prefetches,omitempty"`
	// Saves are instances to save as templates (POST /api/v1/image).
	Saves []ImageSave `json:"saves,omitempty"`
}

// InstanceStatus is a node's report of one instance's actual state.
type InstanceStatus struct {
	InstanceID    string        `json:"instance_id"`
	State         string        `json:"state"`
	Message       string        `json:"message,omitempty"`
	Progress      float64       `json:"progress,omitempty"`
	VMInfo        *VMInfo       `json:"vminfo,omitempty"`
	StartupScript *ScriptResult `json:"startup_script,omitempty"`
	// Console is the tail of the VM's console log (drivers that keep one),
	// sent when the instance starts or fails.
	Console string `json:"console,omitempty"`
	// Released means the node no longer holds a VM for this instance, so its
	// slot may be given to another instance.
	Released bool `json:"released,omitempty"`
	// Replace asks the controller to place the instance on another node
	// (the failure was this node's, e.g. its template pull failed).
	Replace bool `json:"replace,omitempty"`
	// Requeue gives back an instance whose VM this node never started (its
	// agent is shutting down): it goes back to Scheduling, keeping its id
	// and priority, for any node.
	Requeue bool `json:"requeue,omitempty"`
}

// StatusReport carries instance updates from a node.
type StatusReport struct {
	NodeID    string           `json:"node_id"`
	Instances []InstanceStatus `json:"instances"`
}

// RegistryToken is the controller's answer at /api/v1/registry/token: a
// short-lived registry token (the distribution token spec's fields).
type RegistryToken struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

// ReportRefresh is how often an agent sends, and about how old a node's
// stored report may grow, while only its measurements drift a little (as
// the kubelet's node status, whose liveness is a lease too): a thousand
// idle nodes reporting every 15 s were 67 requests and etcd writes a
// second.
const ReportRefresh = time.Minute

// ReportChanged reports whether a node's new report differs from the
// stored one in anything but small drifts of its measurements: the CPU or
// RAM use by less than 5 points, the free or template disk by less than
// 1 GiB, none of them appearing or vanishing.
func ReportChanged(old, new NodeReport) bool {
	// A measurement that appears (the first CPU sample needs two readings)
	// or vanishes is a change however small.
	near := func(a, b, by float64) bool { return (a == 0) == (b == 0) && math.Abs(a-b) < by }
	const gib = 1 << 30
	if !near(old.CPUUtil, new.CPUUtil, 0.05) || !near(old.RAMUtil, new.RAMUtil, 0.05) ||
		!near(float64(old.FreeDiskSpace), float64(new.FreeDiskSpace), gib) ||
		!near(float64(old.TemplateDiskUsage), float64(new.TemplateDiskUsage), gib) {
		return true
	}
	for _, r := range []*NodeReport{&old, &new} {
		r.CPUUtil, r.RAMUtil, r.FreeDiskSpace, r.TemplateDiskUsage = 0, 0, 0, 0
		if len(r.Templates) == 0 {
			r.Templates = nil // [] and null alike
		}
		if len(r.Groups) == 0 {
			r.Groups = nil
		}
	}
	return !reflect.DeepEqual(old, new)
}
