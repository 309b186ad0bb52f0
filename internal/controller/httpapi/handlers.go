package httpapi

import (
	"cmp"
	"errors"
	"net/http"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
)

func (a *API) status(r *http.Request) (any, error) { return a.svc.Status(r.Context()), nil }

// errNoRoute is a path (or method) the API does not serve: HTTP 404 with
// FAIL "Not found", as the reference answers; unknown ids stay HTTP 200.
var errNoRoute = errors.New("no such route")

func (a *API) notFound(r *http.Request) (any, error) { return nil, errNoRoute }

func (a *API) listNodes(r *http.Request) (any, error) {
	nodes, err := a.svc.ListNodes(r.Context(), r.URL.Query().Get("id"))
	if err != nil {
		return nil, err
	}
	return paginate(r, nodes)
}

func (a *API) disjoinNode(r *http.Request) (any, error) {
	var req apiv1.NodeIDRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.DisjoinNode(r.Context(), req.NodeID)
}

func (a *API) configureNode(r *http.Request) (any, error) {
	var req apiv1.NodeConfigRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.ConfigureNode(r.Context(), req)
}

func (a *API) addNodesToGroup(r *http.Request) (any, error)      { return a.nodeGroup(r, true) }
func (a *API) removeNodesFromGroup(r *http.Request) (any, error) { return a.nodeGroup(r, false) }

func (a *API) nodeGroup(r *http.Request, add bool) (any, error) {
	var req apiv1.NodeIDsRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.SetNodeGroups(r.Context(), r.PathValue("group_id"), req.NodeIDs, add)
}

func (a *API) addNodesToGroups(r *http.Request) (any, error)      { return a.nodeGroups(r, true) }
func (a *API) removeNodesFromGroups(r *http.Request) (any, error) { return a.nodeGroups(r, false) }

// nodeGroups is the body form: {"node_id"|"node_ids", "group_ids"}.
func (a *API) nodeGroups(r *http.Request, add bool) (any, error) {
	var req apiv1.NodeGroupsRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	nodes := req.NodeIDs
	if req.NodeID != "" {
		nodes = append([]string{req.NodeID}, nodes...)
	}
	return okNoBody{}, a.svc.SetNodesGroups(r.Context(), req.GroupIDs, nodes, add)
}

// usb lists USB devices free for VMs by name, as the reference does: none,
// since no Corral driver passes USB devices through (usb_device on a start
// is refused).
func (a *API) usb(*http.Request) (any, error) { return map[string]any{}, nil }

// vlan lists the VLAN ids nodes offer: none (vlan_tag on a start is refused).
func (a *API) vlan(*http.Request) (any, error) { return []string{}, nil }

func (a *API) restartInstance(r *http.Request) (any, error) {
	var req struct {
		InstanceID string `json:"instance_id"`
		ID         string `json:"id"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.Restart(r.Context(), cmp.Or(req.InstanceID, req.ID, r.URL.Query().Get("id")))
}

func (a *API) listGroups(r *http.Request) (any, error) { return a.svc.ListGroups(r.Context()) }

func (a *API) createGroup(r *http.Request) (any, error) {
	var req apiv1.GroupRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return a.svc.CreateGroup(r.Context(), req)
}

func (a *API) updateGroup(r *http.Request) (any, error) {
	var req apiv1.GroupRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.ID == "" {
		req.ID = r.URL.Query().Get("id")
	}
	return a.svc.UpdateGroup(r.Context(), req)
}

func (a *API) deleteGroup(r *http.Request) (any, error) {
	var req apiv1.IDRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.ID == "" {
		req.ID = r.URL.Query().Get("id")
	}
	return okNoBody{}, a.svc.DeleteGroup(r.Context(), req.ID)
}

func (a *API) startInstances(r *http.Request) (any, error) {
	var req apiv1.StartRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	spec, err := req.Normalize()
	if err != nil {
		return nil, err
	}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return a.svc.StartInstances(r.Context(), spec)
	}
	return a.svc.StartInstancesOnce(r.Context(), key, spec)
}

func (a *API) getInstances(r *http.Request) (any, error) {
	q := r.URL.Query()
	if id := q.Get("id"); id != "" {
		return a.svc.GetInstance(r.Context(), id)
	}
	items, err := a.svc.ListInstancesJSON(r.Context(), controller.InstanceFilter{
		State: q.Get("state"), ExternalID: q.Get("external_id"), GroupID: q.Get("group_id"), NodeID: q.Get("node_id"),
	})
	if err != nil {
		return nil, err
	}
	return paginate(r, items)
}

func (a *API) updateInstance(r *http.Request) (any, error) {
	var req apiv1.UpdateRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	id := r.URL.Query().Get("id")
	if id == "" {
		return nil, &apiv1.FieldError{Field: "id", Reason: "required as ?id="}
	}
	return okNoBody{}, a.svc.UpdateInstance(r.Context(), id, req)
}

func (a *API) terminateInstance(r *http.Request) (any, error) {
	var req apiv1.IDRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.ID == "" {
		req.ID = r.URL.Query().Get("id")
	}
	if req.ID == "" {
		return nil, &apiv1.FieldError{Field: "id", Reason: "required"}
	}
	return okNoBody{}, a.svc.Terminate(r.Context(), req.ID)
}

func (a *API) registryTemplates(r *http.Request) (any, error) {
	reg := a.svc.Registry()
	if id := r.URL.Query().Get("id"); id != "" {
		t, err := reg.GetTemplate(r.Context(), id)
		if errors.Is(err, controller.ErrNotInRegistry) {
			// "Not found", as the reference answers: clients (the Python
			// CLI) look the template up by name only on that answer.
			err = controller.ErrNotFound
		}
		return t, err
	}
	return reg.ListTemplates(r.Context())
}

func (a *API) registryDelete(r *http.Request) (any, error) {
	q := r.URL.Query()
	if q.Get("id") == "" {
		return nil, &apiv1.FieldError{Field: "id", Reason: "required as ?id="}
	}
	return okNoBody{}, a.svc.Registry().DeleteTemplate(r.Context(), q.Get("id"), q.Get("tag"))
}

func (a *API) registryRevert(r *http.Request) (any, error) {
	id := r.URL.Query().Get("id")
	if id == "" {
		return nil, &apiv1.FieldError{Field: "id", Reason: "required as ?id="}
	}
	var body apiv1.RevertRequest
	if r.ContentLength != 0 {
		if err := decode(r, &body); err != nil {
			return nil, err
		}
	}
	tag, number, err := body.Target(r.URL.Query())
	if err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.Registry().RevertTo(r.Context(), id, tag, number)
}

func (a *API) registryDisk(r *http.Request) (any, error) { return a.svc.Registry().Disk(r.Context()) }

func (a *API) distribute(r *http.Request) (any, error) {
	var req apiv1.DistributeRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	id, err := a.svc.Distribute(r.Context(), req)
	return map[string]string{"request_id": id}, err
}

func (a *API) distribution(r *http.Request) (any, error) {
	id := r.URL.Query().Get("id")
	if id == "" {
		return a.svc.Distributions(r.Context())
	}
	return a.svc.Distribution(r.Context(), id)
}

// removeFromNodes is DELETE /api/v1/registry/vm/remove?id=[&tag=][&node_id=][&group_id=]
// (or the same in a body).
func (a *API) removeFromNodes(r *http.Request) (any, error) {
	q := r.URL.Query()
	var req struct {
		ID      string   `json:"id"`
		Tag     string   `json:"tag"`
		NodeID  string   `json:"node_id"`
		NodeIDs []string `json:"node_ids"`
		GroupID string   `json:"group_id"`
	}
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return nil, err
		}
	}
	nodes := append(q["node_id"], req.NodeIDs...)
	if req.NodeID != "" {
		nodes = append(nodes, req.NodeID)
	}
	return a.svc.RemoveFromNodes(r.Context(), cmp.Or(q.Get("id"), req.ID), cmp.Or(q.Get("tag"), req.Tag), nodes, cmp.Or(q.Get("group_id"), req.GroupID))
}

func (a *API) cancelDistribution(r *http.Request) (any, error) {
	var req struct {
		ID        string `json:"id"`
		RequestID string `json:"request_id"`
	}
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return nil, err
		}
	}
	id := cmp.Or(r.URL.Query().Get("id"), req.ID, req.RequestID)
	if id == "" {
		return nil, &apiv1.FieldError{Field: "id", Reason: "required (?id= or a body {\"id\"})"}
	}
	return okNoBody{}, a.svc.CancelDistribution(r.Context(), id)
}

func (a *API) listPermissionGroups(r *http.Request) (any, error) {
	return a.svc.ListPermissionGroups(r.Context())
}

func (a *API) createPermissionGroup(r *http.Request) (any, error) {
	return a.putPermissionGroup(r, true)
}

func (a *API) replacePermissionGroup(r *http.Request) (any, error) {
	return a.putPermissionGroup(r, false)
}

func (a *API) putPermissionGroup(r *http.Request, create bool) (any, error) {
	var req apiv1.PermissionGroup
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return a.svc.PutPermissionGroup(r.Context(), req, create)
}

func (a *API) deletePermissionGroup(r *http.Request) (any, error) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.DeletePermissionGroup(r.Context(), req.Name)
}

func (a *API) saveImage(r *http.Request) (any, error) {
	var req apiv1.ImageRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	id, err := a.svc.SaveImage(r.Context(), req)
	return map[string]string{"request_id": id}, err
}

// images lists requests, or with ?id= returns one ({status, ...}).
func (a *API) images(r *http.Request) (any, error) {
	if id := r.URL.Query().Get("id"); id != "" {
		return a.svc.Image(r.Context(), id)
	}
	return a.svc.Images(r.Context())
}
