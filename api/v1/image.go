package v1

import "time"

// ImageRequest is the body of POST /api/v1/image: save a Started instance as
// a new tag of its template (or of target_vm_id, or of a new template).
type ImageRequest struct {
	ID               string `json:"id"` // the instance
	Tag              string `json:"tag"`
	Description      string `json:"description"`
	NewTemplateName  string `json:"new_template_name"`
	TargetVMID       string `json:"target_vm_id"`
	Suspend          bool   `json:"suspend"`
	RevertBeforePush bool   `json:"revert_before_push"` // drop the target's latest tag when the new one commits
	Script           string `json:"script"`             // run in the VM before saving (plain text or base64)
}

// Image request states.
const (
	ImagePending = "pending"
	ImageDone    = "done"
	ImageError   = "error"
)

// Image is a save-image request and its outcome (GET /api/v1/image).
type Image struct {
	RequestID    string    `json:"request_id"`
	InstanceID   string    `json:"instance_id"`
	NodeID       string    `json:"node_id"`
	TemplateID   string    `json:"template_id"` // the target; for a new template, set when done
	TemplateName string    `json:"template_name"`
	Tag          string    `json:"tag"`
	Description  string    `json:"description"`
	Status       string    `json:"status"`
	Message      string    `json:"message,omitempty"`
	CrTime       time.Time `json:"cr_time"`
	TS           time.Time `json:"ts"`
}

// ImageSave tells a node to save one of its instances (agent protocol).
type ImageSave struct {
	RequestID        string `json:"request_id"`
	InstanceID       string `json:"instance_id"`
	TemplateName     string `json:"template_name"`
	Tag              string `json:"tag"`
	Description      string `json:"description"`
	Suspend          bool   `json:"suspend"`
	RevertBeforePush bool   `json:"revert_before_push"`
	Script           []byte `json:"script,omitempty"`
}

// ImageResult is a node's report on an ImageSave.
type ImageResult struct {
	NodeID     string `json:"node_id"`
	RequestID  string `json:"request_id"`
	TemplateID string `json:"template_id,omitempty"`
	Note       string `json:"note,omitempty"` // e.g. "suspend not supported; the VM was stopped"
	Error      string `json:"error,omitempty"`
}
