package v1

import "time"

// ImageRequest is the body of POST /api/v1/image: save a Started instance as
// a new tag of its template (or of target_vm_id, or of a new template).
type ImageRequest struct {
	ID               string    `json:"id"` // the instance
	Tag              string    `json:"tag"`
	Description      string    `json:"description"`
	NewTemplateName  string    `json:"new_template_name"`
	TargetVMID       string    `json:"target_vm_id"`
	Suspend          *FlexBool `json:"suspend"`            // default true, as the reference documents
	RevertBeforePush bool      `json:"revert_before_push"` // drop the target's latest tag when the new one commits
	Script           string    `json:"script"`             // run in the VM before saving (plain text or base64)
	// CancelOnScriptFailure: a failing script cancels the save (default:
	// the save goes on and the script's result is reported).
	CancelOnScriptFailure bool `json:"cancel_on_script_failure"`
	// Refused when set: Corral does not do these.
	RevertTag     string `json:"revert_tag"`
	DoSuspendTest bool   `json:"do_suspend_sanity_test"`
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
	// What was asked, kept for the reference's view of the request.
	VMID                  string        `json:"vmid,omitempty"`
	NewTemplateName       string        `json:"new_template_name,omitempty"`
	Suspend               bool          `json:"suspend,omitempty"`
	RevertBeforePush      bool          `json:"revert_before_push,omitempty"`
	CancelOnScriptFailure bool          `json:"cancel_on_script_failure,omitempty"`
	Script                string        `json:"script,omitempty"`
	ScriptResult          *ScriptResult `json:"script_result,omitempty"`
}

// ImageView is GET /api/v1/image in the reference's shape (id, request,
// status, error, script_result) with Corral's fields beside them.
type ImageView struct {
	Image
	ID           string           `json:"id"`
	Request      ImageRequestView `json:"request"`
	Error        *string          `json:"error"`
	ScriptResult *ImageScriptView `json:"script_result"`
}

// ImageRequestView is the request as the reference shows it.
type ImageRequestView struct {
	RequestID              string `json:"RequestId"`
	Priority               int    `json:"Priority"`
	Timestamp              int64  `json:"Timestamp"`
	ReserveExpiryTimestamp int64  `json:"ReserveExpiryTimestamp"`
	RegistryAddr           string `json:"RegistryAddr"`
	VMID                   string `json:"VMID"`
	InstanceID             string `json:"InstanceID"`
	NodeID                 string `json:"NodeID"`
	TemplateID             string `json:"TemplateID"`
	NewTemplateName        string `json:"NewTemplateName"`
	Tag                    string `json:"Tag"`
	Description            string `json:"Description"`
	Suspend                bool   `json:"Suspend"`
	Script                 string `json:"Script"`
	DoSuspendTest          bool   `json:"DoSuspendTest"`
	RevertBeforePush       bool   `json:"RevertBeforePush"`
	RevertTag              string `json:"RevertTag"`
	CancelOnScriptFailure  bool   `json:"CancelOnScriptFailure"`
}

// ImageScriptView is a pre-save script's result as the reference shows it.
type ImageScriptView struct {
	Stdout     string   `json:"stdout"`
	Stderr     string   `json:"stderr"`
	Errors     []string `json:"errors"`
	DidTimeout bool     `json:"did_timeout"`
	ReturnCode int      `json:"return_code"`
}

// View returns the reference's shape of img; registry is the registry
// address of the cloud.
func (img Image) View(registry string) ImageView {
	v := ImageView{Image: img, ID: img.RequestID, Request: ImageRequestView{
		RequestID: img.RequestID, Timestamp: img.CrTime.Unix(), RegistryAddr: registry, VMID: img.VMID,
		InstanceID: img.InstanceID, NodeID: img.NodeID, TemplateID: img.TemplateID, NewTemplateName: img.NewTemplateName,
		Tag: img.Tag, Description: img.Description, Suspend: img.Suspend, Script: img.Script,
		RevertBeforePush: img.RevertBeforePush, CancelOnScriptFailure: img.CancelOnScriptFailure}}
	if img.Status == ImageError {
		msg := img.Message
		v.Error = &msg
	}
	if r := img.ScriptResult; r != nil {
		v.ScriptResult = &ImageScriptView{Stdout: r.Stdout, Stderr: r.Stderr, DidTimeout: r.DidTimeout, ReturnCode: r.ReturnCode}
	}
	return v
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
	// CancelOnScriptFailure: a failing pre-save script cancels the save.
	CancelOnScriptFailure bool `json:"cancel_on_script_failure,omitempty"`
}

// ImageResult is a node's report on an ImageSave.
type ImageResult struct {
	NodeID     string `json:"node_id"`
	RequestID  string `json:"request_id"`
	TemplateID string `json:"template_id,omitempty"`
	Note       string `json:"note,omitempty"` // e.g. "suspend not supported; the VM was stopped"
	Error      string `json:"error,omitempty"`
	// ScriptResult is the pre-save script's, when there was one.
	ScriptResult *ScriptResult `json:"script_result,omitempty"`
}
