package v1

import (
	"encoding/json"
	"time"
)

// Node states, exactly as clients compare them.
const (
	NodeOffline  = "Offline"
	NodeInactive = "Inactive (Invalid License)"
	NodeActive   = "Active"
	NodeUpdating = "Updating"
	NodeDrain    = "Drain Mode"
)

// Node is an element of GET /api/v1/node.
type Node struct {
	NodeID        string         `json:"node_id"`
	NodeName      string         `json:"node_name"`
	IPAddress     string         `json:"ip_address"`
	State         string         `json:"state"`
	Capacity      int            `json:"capacity"`
	CapacityMode  string         `json:"capacity_mode"`
	CPUCount      int            `json:"cpu_count"`
	RAM           int            `json:"ram"` // GB
	VMCount       int            `json:"vm_count"`
	VCPUCount     int            `json:"vcpu_count"`
	VRAM          int            `json:"vram"` // MB in use by instances
	CPUUtil       float64        `json:"cpu_util"`
	RAMUtil       float64        `json:"ram_util"`
	FreeDiskSpace int64          `json:"free_disk_space"`
	AnkaDiskUsage int64          `json:"anka_disk_usage"`
	DiskSize      int64          `json:"disk_size"`
	HostArch      string         `json:"host_arch"`
	Templates     []NodeTemplate `json:"templates"`
	Groups        []Group        `json:"groups"`
	Driver        string         `json:"driver,omitempty"` // Corral extension
	LastSeen      time.Time      `json:"last_seen,omitzero"`
	// AnkaVersion says what runs the node's VMs (for anka nodes, what the
	// reference reports of the anka CLI; for others, Corral's driver).
	AnkaVersion  AnkaVersion `json:"anka_version"`
	AgentVersion string      `json:"agent_version"`
	USBDevices   []string    `json:"usb_devices"` // none: no driver passes USB through
	VCPUOverride int         `json:"vcpu_override"`
	RAMOverride  int         `json:"ram_override"`
	LastUpdated  time.Time   `json:"last_updated,omitzero"` // the node's last report
	Timestamp    int64       `json:"timestamp"`             // the same, in Unix seconds
}

// AnkaVersion is a node's anka_version.
type AnkaVersion struct {
	Product string `json:"product"`
	Version string `json:"version"`
	Build   string `json:"build"`
	License string `json:"license"`
	Expires string `json:"expires"`
}

// NodeTemplate is a template+tag a node holds locally.
type NodeTemplate struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
	Tag  string `json:"tag"`
}

// NodeConfigRequest is the body of PUT/POST /api/v1/node/config.
type NodeConfigRequest struct {
	NodeID    string    `json:"node_id"`
	Capacity  *FlexInt  `json:"capacity"`
	DrainMode *FlexBool `json:"drain_mode"`
	MaxVCPU   *FlexInt  `json:"max_vcpu_count"`
	MaxVRAM   *FlexInt  `json:"max_vram"`
	// The reference's other fields: max_vm_count is capacity; the rest are
	// refused with a reason rather than ignored.
	MaxVMCount   *FlexInt        `json:"max_vm_count"`
	Name         *string         `json:"name"`
	CapacityMode *string         `json:"capacity_mode"`
	VCPUOverride json.RawMessage `json:"vcpu_override"`
	RAMOverride  json.RawMessage `json:"ram_override"`
}

// NodeIDRequest is the body of DELETE /api/v1/node.
type NodeIDRequest struct {
	NodeID string `json:"node_id"`
}

// NodeIDsRequest is the body of POST/DELETE /api/v1/node/group/<group_id>.
type NodeIDsRequest struct {
	NodeIDs []string `json:"node_ids"`
}

// NodeGroupsRequest is the body of POST/DELETE /api/v1/node/group: nodes
// (node_id or node_ids) to add to or remove from each of group_ids.
type NodeGroupsRequest struct {
	NodeID   string   `json:"node_id"`
	NodeIDs  []string `json:"node_ids"`
	GroupIDs []string `json:"group_ids"`
}

// Group is a node group. Description is never null; fallback_group_id is
// null when unset, as the reference sends it.
type Group struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	Description     string `json:"description"`
	FallbackGroupID string `json:"fallback_group_id"`
}

// MarshalJSON sends an unset fallback as null.
func (g Group) MarshalJSON() ([]byte, error) {
	type plain struct {
		ID              string  `json:"id"`
		Name            string  `json:"name"`
		Description     string  `json:"description"`
		FallbackGroupID *string `json:"fallback_group_id"`
	}
	p := plain{ID: g.ID, Name: g.Name, Description: g.Description}
	if g.FallbackGroupID != "" {
		p.FallbackGroupID = &g.FallbackGroupID
	}
	return json.Marshal(p)
}

// GroupRequest is the body of POST/PUT/DELETE /api/v1/group.
type GroupRequest struct {
	ID              string  `json:"id"`
	Name            *string `json:"name"`
	Description     *string `json:"description"`
	FallbackGroupID *string `json:"fallback_group_id"`
}

// Status is the body of GET /api/v1/status.
type Status struct {
	Status          string `json:"status"`
	Version         string `json:"version"`
	RegistryAddress string `json:"registry_address"`
	RegistryStatus  string `json:"registry_status"`
	License         string `json:"license"`
}
