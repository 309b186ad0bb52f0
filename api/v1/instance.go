package v1

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Instance states, exactly as clients compare them.
const (
	StateScheduling  = "Scheduling"
	StatePulling     = "Pulling"
	StateStarted     = "Started"
	StateStopping    = "Stopping"
	StateStopped     = "Stopped"
	StateTerminating = "Terminating"
	StateTerminated  = "Terminated"
	StateError       = "Error"
	StatePushing     = "Pushing"
)

// InstanceStates lists every valid instance state (for ?state= validation).
var InstanceStates = []string{StateScheduling, StatePulling, StateStarted, StateStopping,
	StateStopped, StateTerminating, StateTerminated, StateError, StatePushing}

// Instance is the flat object of GET /api/v1/vm?id= and of every list item's "vm".
type Instance struct {
	InstanceID    string          `json:"instance_id"`
	State         string          `json:"instance_state"`
	Message       string          `json:"message,omitempty"`
	AnkaRegistry  string          `json:"anka_registry"`
	VMID          string          `json:"vmid"`
	Tag           string          `json:"tag"`
	Version       *int            `json:"version,omitempty"`
	NodeID        string          `json:"node_id"`
	GroupID       string          `json:"group_id,omitempty"`
	ExternalID    string          `json:"external_id,omitempty"`
	Name          string          `json:"name,omitempty"`
	VLAN          string          `json:"vlan"`        // Corral attaches no VLANs: always ""
	MACAddress    string          `json:"mac_address"` // not chosen by Corral: always ""
	InflightReqID string          `json:"inflight_reqid"`
	TS            time.Time       `json:"ts,omitzero"`
	CrTime        time.Time       `json:"cr_time,omitzero"`
	Progress      float64         `json:"progress"`
	Arch          string          `json:"arch,omitempty"`
	Priority      int             `json:"priority"`
	Metadata      json.RawMessage `json:"metadata,omitempty"`
	StartupScript *ScriptResult   `json:"startup_script,omitempty"`
	VMInfo        *VMInfo         `json:"vminfo,omitempty"`
}

// InstanceListItem is one element of GET /api/v1/vm. external_id and name are
// null when unset, as the reference product sends them.
type InstanceListItem struct {
	InstanceID string   `json:"instance_id"`
	ExternalID *string  `json:"external_id"`
	Name       *string  `json:"name"`
	VM         Instance `json:"vm"`
}

// ListItem wraps an instance the way GET /api/v1/vm lists it.
func (in Instance) ListItem() InstanceListItem {
	item := InstanceListItem{InstanceID: in.InstanceID, VM: in}
	if in.ExternalID != "" {
		item.ExternalID = &in.ExternalID
	}
	if in.Name != "" {
		item.Name = &in.Name
	}
	return item
}

// ScriptResult reports a startup script's outcome.
type ScriptResult struct {
	ReturnCode int    `json:"return_code"`
	DidTimeout bool   `json:"did_timeout"`
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
}

// VMInfo describes the running VM behind an instance.
type VMInfo struct {
	UUID                string    `json:"uuid"`
	Name                string    `json:"name"`
	Status              string    `json:"status"` // "running" or "stopped"
	CPUCores            int       `json:"cpu_cores"`
	RAM                 string    `json:"ram"`
	NodeID              string    `json:"node_id"`
	HostIP              string    `json:"host_ip"`
	IP                  string    `json:"ip"`
	VNCPort             int       `json:"vnc_port"`
	VNCConnectionString string    `json:"vnc_connection_string"`
	CreationDate        time.Time `json:"creation_date,omitzero"`
	StartDate           time.Time `json:"start_date,omitzero"`
	AccessDate          time.Time `json:"access_date,omitzero"`
	// StopDate is the zero time while the VM runs, as the reference sends.
	StopDate time.Time `json:"stop_date"`
	// Timestamp is when the node last reported the VM.
	Timestamp      time.Time        `json:"timestamp,omitzero"`
	Version        string           `json:"version"`
	PortForwarding []PortForwarding `json:"port_forwarding"`
	Accelerator    string           `json:"accelerator,omitempty"` // Corral extension: kvm, tcg, ...
}

// PortForwarding maps a guest port to a port on the node. The SSH rule
// (guest 22) comes first because some clients take the first rule.
type PortForwarding struct {
	GuestPort int    `json:"guest_port"`
	HostPort  int    `json:"host_port"`
	Protocol  string `json:"protocol"`
	Name      string `json:"name"`
}

// StartRequest is the body of POST /api/v1/vm.
type StartRequest struct {
	VMID                   string          `json:"vmid"`
	Tag                    string          `json:"tag"`
	Version                *FlexInt        `json:"version"`
	Count                  *FlexInt        `json:"count"`
	Name                   string          `json:"name"`
	NameTemplate           string          `json:"name_template"`
	ExternalID             string          `json:"external_id"`
	NodeID                 string          `json:"node_id"`
	GroupID                string          `json:"group_id"`
	Priority               *FlexInt        `json:"priority"`
	StartupScript          string          `json:"startup_script"`
	StartupScriptCondition *FlexInt        `json:"startup_script_condition"`
	ScriptMonitoring       FlexBool        `json:"script_monitoring"`
	ScriptTimeout          *FlexInt        `json:"script_timeout"`
	ScriptFailHandler      *FlexInt        `json:"script_fail_handler"`
	VCPU                   *FlexInt        `json:"vcpu"`
	VRAM                   *FlexInt        `json:"vram"`
	Metadata               json.RawMessage `json:"metadata"`
	USBDevice              string          `json:"usb_device"`
	VLANTag                string          `json:"vlan_tag"`
	Disk                   *struct {
		Size *FlexSize `json:"size"`
	} `json:"disk"`
}

// Script fail handlers.
const (
	FailHandlerStop   = 0
	FailHandlerKeep   = 1
	FailHandlerDelete = 2
)

// Defaults applied by Normalize.
const (
	DefaultPriority      = 1000
	DefaultScriptTimeout = 90
	MaxCount             = 1000
)

// Bounds on one instance's spec, so every instance record fits an etcd
// request with room to spare and a start is refused with a clear FAIL
// naming the field and the limit instead of failing deep in etcd.
const (
	MaxScriptBytes   = 128 << 10 // startup_script, decoded
	MaxMetadataBytes = 16 << 10  // metadata, as JSON
	MaxMetadataDepth = 32        // nesting of metadata objects and arrays
	MaxTextField     = 256       // name, name_template, external_id (bytes)
)

// CheckMetadata validates a metadata value: a JSON object within
// MaxMetadataBytes and MaxMetadataDepth. null or empty means none.
func CheckMetadata(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if len(raw) > MaxMetadataBytes {
		return nil, &FieldError{"metadata", fmt.Sprintf("at most %d bytes of JSON, got %d", MaxMetadataBytes, len(raw))}
	}
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range raw {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case inString:
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	if deepest > MaxMetadataDepth {
		return nil, &FieldError{"metadata", fmt.Sprintf("nested at most %d deep, got %d", MaxMetadataDepth, deepest)}
	}
	var obj map[string]any
	if json.Unmarshal(raw, &obj) != nil {
		return nil, &FieldError{"metadata", "must be a JSON object"}
	}
	return raw, nil
}

// StartSpec is a validated start request with defaults applied: what a node
// needs to run one instance.
type StartSpec struct {
	VMID          string `json:"vmid"`
	TemplateName  string `json:"template_name,omitempty"`
	Tag           string `json:"tag,omitempty"`
	Version       *int   `json:"version,omitempty"` // tag number (from 0); nil: by tag or the latest
	Count         int    `json:"count"`
	Name          string `json:"name,omitempty"`
	NameTemplate  string `json:"name_template,omitempty"`
	ExternalID    string `json:"external_id,omitempty"`
	NodeID        string `json:"node_id,omitempty"`
	GroupID       string `json:"group_id,omitempty"`
	Priority      int    `json:"priority"`
	StartupScript []byte `json:"startup_script,omitempty"`
	// ScriptRef names the stored script (the controller's store keeps a
	// start's script once, not in every instance); nodes get StartupScript.
	ScriptRef         string          `json:"script_ref,omitempty"`
	WaitForNetwork    bool            `json:"wait_for_network"`
	ScriptMonitoring  bool            `json:"script_monitoring"`
	ScriptTimeout     int             `json:"script_timeout"`
	ScriptFailHandler int             `json:"script_fail_handler"`
	VCPU              int             `json:"vcpu,omitempty"`
	VRAM              int             `json:"vram,omitempty"` // MB
	Metadata          json.RawMessage `json:"metadata,omitempty"`
	USBDevice         string          `json:"usb_device,omitempty"`
	DiskSize          int64           `json:"disk_size,omitempty"`
}

// Normalize validates r and applies the documented defaults.
func (r *StartRequest) Normalize() (StartSpec, error) {
	s := StartSpec{
		VMID: r.VMID, Tag: r.Tag, Name: r.Name, NameTemplate: r.NameTemplate,
		ExternalID: r.ExternalID, NodeID: r.NodeID, GroupID: r.GroupID,
		Count: 1, Priority: DefaultPriority, WaitForNetwork: true,
		ScriptMonitoring: bool(r.ScriptMonitoring), ScriptTimeout: DefaultScriptTimeout,
		USBDevice: r.USBDevice,
	}
	if s.VMID == "" {
		return s, &FieldError{"vmid", "required"}
	}
	for _, f := range []struct{ name, v string }{{"vmid", r.VMID}, {"tag", r.Tag}, {"name", r.Name},
		{"name_template", r.NameTemplate}, {"external_id", r.ExternalID}, {"node_id", r.NodeID}, {"group_id", r.GroupID}} {
		if len(f.v) > MaxTextField {
			return s, &FieldError{f.name, fmt.Sprintf("at most %d bytes, got %d", MaxTextField, len(f.v))}
		}
	}
	var err error
	intField := func(name string, v *FlexInt, lo, hi int64, dst *int) {
		if err != nil || v == nil {
			return
		}
		if int64(*v) < lo || int64(*v) > hi {
			err = &FieldError{name, rangeMsg(lo, hi)}
			return
		}
		*dst = int(*v)
	}
	if r.USBDevice != "" {
		return s, &FieldError{"usb_device", "not supported: no Corral driver passes USB devices to VMs"}
	}
	if r.VLANTag != "" {
		return s, &FieldError{"vlan_tag", "not supported: Corral's nodes attach VMs to no VLAN (GET /api/v1/vlan lists none)"}
	}
	intField("count", r.Count, 1, MaxCount, &s.Count)
	if r.Version != nil {
		if *r.Version < 0 || *r.Version > 1<<31 {
			return s, &FieldError{"version", rangeMsg(0, 1<<31)}
		}
		v := int(*r.Version)
		s.Version = &v
	}
	intField("priority", r.Priority, 1, 10000, &s.Priority)
	intField("script_timeout", r.ScriptTimeout, 1, 86400, &s.ScriptTimeout)
	intField("script_fail_handler", r.ScriptFailHandler, 0, 2, &s.ScriptFailHandler)
	intField("vcpu", r.VCPU, 1, 1024, &s.VCPU)
	intField("vram", r.VRAM, 1, 1<<24, &s.VRAM)
	cond := 0
	intField("startup_script_condition", r.StartupScriptCondition, 0, 1, &cond)
	if err != nil {
		return s, err
	}
	s.WaitForNetwork = cond == 0
	if r.Disk != nil && r.Disk.Size != nil {
		if *r.Disk.Size < 0 {
			return s, &FieldError{"disk.size", "must not be negative"}
		}
		s.DiskSize = int64(*r.Disk.Size)
	}
	if r.StartupScript != "" {
		if n := base64.StdEncoding.DecodedLen(len(r.StartupScript)); n > MaxScriptBytes+2 {
			return s, &FieldError{"startup_script", fmt.Sprintf("at most %d bytes (decoded), got about %d", MaxScriptBytes, n)}
		}
		script, derr := base64.StdEncoding.DecodeString(r.StartupScript)
		if derr != nil {
			return s, &FieldError{"startup_script", "must be base64: " + derr.Error()}
		}
		if len(script) > MaxScriptBytes {
			return s, &FieldError{"startup_script", fmt.Sprintf("at most %d bytes (decoded), got %d", MaxScriptBytes, len(script))}
		}
		s.StartupScript = script
	}
	s.Metadata, err = CheckMetadata(r.Metadata)
	return s, err
}

// UpdateRequest is the body of PUT /api/v1/vm?id=.
type UpdateRequest struct {
	ExternalID *string         `json:"external_id"`
	Name       *string         `json:"name"`
	Metadata   json.RawMessage `json:"metadata"`
}

// IDRequest is the body of DELETE /api/v1/vm and similar calls.
type IDRequest struct {
	ID string `json:"id"`
}

// RAMMB parses a VM's RAM as drivers and the reference report it ("4G",
// "2048M", "8GB", a bare number of MB); ok is false when it cannot.
// SSH is where the guest's SSH (guest port 22) is reached on its node;
// ok is false before the VM runs. Endpoint is the same as "host:port".
func (v *VMInfo) SSH() (host string, port int, ok bool) {
	if v == nil {
		return "", 0, false
	}
	for _, p := range v.PortForwarding {
		if p.GuestPort == 22 {
			return v.HostIP, p.HostPort, true
		}
	}
	return "", 0, false
}

// SSHEndpoint is SSH as "host:port" ("" before the VM runs).
func (v *VMInfo) SSHEndpoint() string {
	host, port, ok := v.SSH()
	if !ok {
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func (v VMInfo) RAMMB() (int, bool) {
	s := strings.ToUpper(strings.TrimSpace(v.RAM))
	s = strings.TrimSuffix(s, "B")
	mult := 1
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1024, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		s = strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, false
	}
	return n * mult, true
}

// MarshalJSON sends the VM's dates in whole seconds, as the reference does.
func (v VMInfo) MarshalJSON() ([]byte, error) {
	type plain VMInfo
	p := plain(v)
	for _, t := range []*time.Time{&p.CreationDate, &p.StartDate, &p.AccessDate, &p.StopDate} {
		*t = t.UTC().Truncate(time.Second)
	}
	return json.Marshal(p)
}

// MaxConsole bounds the console tail a node sends and the controller keeps.
const MaxConsole = 64 << 10

// MaxScriptOutput bounds each of a startup script's stdout and stderr as
// kept and reported: their last bytes, after a line saying how much was cut.
const MaxScriptOutput = 32 << 10

// TailOutput is s cut to MaxScriptOutput, keeping its end.
func TailOutput(s string) string {
	if len(s) <= MaxScriptOutput {
		return s
	}
	return CutNote(int64(len(s)-MaxScriptOutput), MaxScriptOutput) + s[len(s)-MaxScriptOutput:]
}

// CutNote is the line before an output tail saying how much was cut.
func CutNote(cut int64, kept int) string {
	return fmt.Sprintf("[corral: %d bytes of output cut; the last %d follow]\n", cut, kept)
}

// InstanceLogs is GET /api/v1/vm/logs: the startup script's output and the
// tail of the VM's console, where its driver keeps one.
type InstanceLogs struct {
	InstanceID    string        `json:"instance_id"`
	State         string        `json:"instance_state"`
	Message       string        `json:"message,omitempty"`
	StartupScript *ScriptResult `json:"startup_script"`
	Console       string        `json:"console"`
	// ConsoleAt is when the node sent the console tail (zero: never).
	ConsoleAt time.Time `json:"console_at,omitzero"`
}
