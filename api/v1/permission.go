package v1

// Permissions a permission group can grant.
const (
	PermView               = "view"                // every GET: instances, nodes, groups, templates, the dashboard
	PermStartInstances     = "start_instances"     // POST /api/v1/vm, PUT /api/v1/vm, POST /api/v1/rpc/vm/restart
	PermTerminateInstances = "terminate_instances" // DELETE /api/v1/vm
	PermManageNodes        = "manage_nodes"        // node config/drain/disjoin, groups, group membership
	PermManageTemplates    = "manage_templates"    // registry delete/revert/distribute, /api/v1/image
	PermAdmin              = "admin"               // all of the above and permission groups
)

// Permissions lists every permission, in the order above.
var Permissions = []string{PermView, PermStartInstances, PermTerminateInstances, PermManageNodes, PermManageTemplates, PermAdmin}

// PermissionGroup is a named set of permissions and the identities it binds.
// Members are "key:<api key id>", "cert:<certificate common name>" or
// "cert-group:<certificate organization or organizational unit>".
type PermissionGroup struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Permissions []string `json:"permissions"`
	Members     []string `json:"members"`
}

// MsgPermissionDenied starts the FAIL message of HTTP 403 answers.
const MsgPermissionDenied = "Permission denied"
