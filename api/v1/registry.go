package v1

import (
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Registry transfer protocol (Corral's own, under /registry/corral/v1/).
// A push: open an upload lease, ask which chunks are missing, PUT them in
// bounded requests, then commit a manifest; the tag appears only at commit,
// once every chunk is present and verified.

// File roles in a tag.
const (
	RoleConfig = "config"
	RoleImage  = "image"
	RoleNVRAM  = "nvram"
	RoleState  = "state"
)

// ManifestFile is one file of a tag: its chunks in order ("" = all zeros).
type ManifestFile struct {
	Name   string   `json:"name"`
	Role   string   `json:"role"`
	Size   int64    `json:"size"`
	Chunks []string `json:"chunks"`
}

// Manifest lists a tag's files. It is immutable and named by its sha256.
type Manifest struct {
	ChunkSize int            `json:"chunk_size"`
	Files     []ManifestFile `json:"files"`
}

// MissingRequest asks which chunks the registry lacks.
type MissingRequest struct {
	UploadID string   `json:"upload_id"`
	Digests  []string `json:"digests"`
}

// MissingResponse lists the chunks to send.
type MissingResponse struct {
	Missing []string `json:"missing"`
}

// PackResponse reports a pack upload: chunks in the request, chunks the
// registry stored (the others it had) and their stored bytes.
type PackResponse struct {
	Chunks      int   `json:"chunks"`
	Stored      int   `json:"stored"`
	StoredBytes int64 `json:"stored_bytes"`
	// Resend lists chunks sent as deltas the registry could not rebuild:
	// send them whole.
	Resend []string `json:"resend,omitempty"`
}

// FetchRequest names chunks to stream back as frames.
type FetchRequest struct {
	Digests []string `json:"digests"`
}

// Upload is a push's lease: chunks it relies on are safe from GC while it lives.
type Upload struct {
	ID      string    `json:"upload_id"`
	Started time.Time `json:"started"`
}

// CommitRequest publishes a tag. TemplateID selects an existing template;
// otherwise Template names it (created on first push).
type CommitRequest struct {
	UploadID    string   `json:"upload_id"`
	TemplateID  string   `json:"template_id,omitempty"`
	Template    string   `json:"template"`
	Arch        string   `json:"arch"`
	Tag         string   `json:"tag"`
	Description string   `json:"description"`
	Manifest    Manifest `json:"manifest"`
}

// CommitResponse names what was published.
type CommitResponse struct {
	TemplateID string `json:"template_id"`
	Tag        string `json:"tag"`
	Number     int    `json:"number"`
	Manifest   string `json:"manifest"` // sha256 of the manifest
}

// TagManifest is a tag with its manifest, what a pull starts from.
type TagManifest struct {
	TemplateID   string   `json:"template_id"`
	TemplateName string   `json:"template_name"`
	Arch         string   `json:"arch"`
	Tag          string   `json:"tag"`
	Number       int      `json:"number"`
	Manifest     Manifest `json:"manifest"`
}

// RegistryStatus is the body of GET /registry/status.
type RegistryStatus struct {
	Status  string `json:"status"`
	Version string `json:"version"`
}

// DistributeRequest is the body of POST /api/v1/registry/vm/distribute:
// pre-pull a template to nodes (all active nodes when neither is given).
type DistributeRequest struct {
	TemplateID string   `json:"template_id"`
	Tag        string   `json:"tag"`
	NodeIDs    []string `json:"node_ids"`
	GroupID    string   `json:"group_id"`
}

// Distribution is a distribute request's status: each node's outcome is
// "pending", "done" or "error: <reason>".
type Distribution struct {
	RequestID  string            `json:"request_id"`
	TemplateID string            `json:"template_id"`
	Tag        string            `json:"tag"`
	Nodes      map[string]string `json:"nodes"` // node id -> "pending", "done" or "error: ..."
	CrTime     time.Time         `json:"cr_time,omitzero"`
	TS         time.Time         `json:"ts,omitzero"` // last change
}

// DistributionView is GET /api/v1/registry/vm/distribute?id= in the
// reference's shape (request, distribute_status per node), with Corral's
// Distribution fields beside it.
type DistributionView struct {
	Distribution
	Request          DistributionRequestInfo       `json:"request"`
	DistributeStatus map[string]DistributionStatus `json:"distribute_status"`
}

// DistributionRequestInfo is the request part of a DistributionView.
type DistributionRequestInfo struct {
	RequestID     string    `json:"request_id"`
	TemplateID    string    `json:"template_id"`
	Tag           string    `json:"tag"`
	TimeRequested time.Time `json:"time_requested"`
}

// DistributionStatus is one node's part: status is true once it holds the
// template.
type DistributionStatus struct {
	Status   bool    `json:"status"`
	Progress float64 `json:"progress"`
	Error    string  `json:"error,omitempty"`
}

// View returns the reference's shape of d.
func (d Distribution) View() DistributionView {
	v := DistributionView{Distribution: d, Request: DistributionRequestInfo{RequestID: d.RequestID, TemplateID: d.TemplateID,
		Tag: d.Tag, TimeRequested: d.CrTime}, DistributeStatus: map[string]DistributionStatus{}}
	for node, outcome := range d.Nodes {
		st := DistributionStatus{}
		switch {
		case outcome == "done":
			st.Status, st.Progress = true, 1
		case strings.HasPrefix(outcome, "error: "):
			st.Error = strings.TrimPrefix(outcome, "error: ")
		}
		v.DistributeStatus[node] = st
	}
	return v
}

// Prefetch tells a node to pull a template now.
type Prefetch struct {
	RequestID    string `json:"request_id"`
	VMID         string `json:"vmid"`
	Tag          string `json:"tag"`
	TemplateName string `json:"template_name"`
	// Remove asks the node to delete the template (Tag "": every tag it
	// holds) from its cache instead of pulling it.
	Remove bool `json:"remove,omitempty"`
}

// RemoveFromNodesResponse is DELETE /api/v1/registry/vm/remove's answer.
type RemoveFromNodesResponse struct {
	RequestsSent int      `json:"requests_sent"`
	NodeIDs      []string `json:"node_ids"`
	RequestID    string   `json:"request_id,omitempty"` // follow it at GET .../distribute?id=
}

// PrefetchResult is a node's report on a prefetch.
type PrefetchResult struct {
	NodeID    string `json:"node_id"`
	RequestID string `json:"request_id"`
	Error     string `json:"error,omitempty"`
}

// RevertRequest is the optional body of DELETE .../revert: the tag to revert
// to, by name or number (every later tag is dropped).
type RevertRequest struct {
	Tag    string   `json:"tag"`
	Number *FlexInt `json:"number"`
}

// Target merges the body with the query (?tag=, ?number= win) and returns
// the tag and number to revert to; number is -1 when none was given.
func (b RevertRequest) Target(q url.Values) (tag string, number int, err error) {
	tag, number = b.Tag, -1
	if t := q.Get("tag"); t != "" {
		tag = t
	}
	if b.Number != nil {
		number = int(*b.Number)
	}
	if n := q.Get("number"); n != "" {
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 {
			return "", 0, &FieldError{Field: "number", Reason: "must be a non-negative integer, got " + strconv.Quote(n)}
		}
		number = v
	}
	return tag, number, nil
}
