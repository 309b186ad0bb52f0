package web

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
)

// PageSize is how many instances one page of the dashboard shows.
const PageSize = 50

var views = []string{"instances", "nodes", "groups", "templates", "events"}

func templates() *template.Template {
	return template.Must(template.New("").Funcs(template.FuncMap{
		"class":   func(state string) string { return strings.ReplaceAll(strings.ToLower(state), " ", "-") },
		"gib":     func(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) },
		"percent": func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) },
		"when": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.Local().Format("2006-01-02 15:04:05")
		},
		"unix": func(s int64) string {
			if s == 0 {
				return ""
			}
			return time.Unix(s, 0).Local().Format("2006-01-02 15:04")
		},
		"name": func(names map[string]string, id string) string { return cmp.Or(names[id], id) },
		"short": func(id string) string {
			if len(id) > 8 {
				return id[:8]
			}
			return id
		},
		"ssh": func(info *apiv1.VMInfo) string { return info.SSHEndpoint() },
		// sshcmd is the command line that reaches the guest.
		"sshcmd": func(info *apiv1.VMInfo) string {
			host, port, ok := info.SSH()
			if !ok {
				return ""
			}
			return fmt.Sprintf("ssh -p %d anka@%s", port, host)
		},

		"vnc": func(info *apiv1.VMInfo) string {
			if info == nil || info.VNCPort == 0 {
				return ""
			}
			return fmt.Sprintf("vnc://%s:%d", info.HostIP, info.VNCPort)
		},
		"json": func(v any) string {
			b, _ := json.MarshalIndent(v, "", "  ")
			return string(b)
		},
		"js":      func(v any) string { b, _ := json.Marshal(v); return string(b) },
		"q":       func(f instanceFilter, kv ...string) string { return f.with(kv...) },
		"add":     func(a, b int) int { return a + b },
		"sub":     func(a, b int64) int64 { return a - b },
		"itoa":    strconv.Itoa,
		"dict1":   func(id string) map[string]string { return map[string]string{"id": id} },
		"nodeids": func(id string) map[string][]string { return map[string][]string{"node_ids": {id}} },
		"nodecfg": func(id, k string, v any) map[string]any {
			m := map[string]any{"node_id": id}
			if k != "" {
				m[k] = v
			}
			return m
		},
		"kinds": func() []string {
			return []string{"instance", "node", "template", "auth", "scheduler", apiv1.EventInstanceError, apiv1.EventInstanceTerminated}
		},
	}).ParseFS(files, "templates/*.html"))
}

// pageView is the shell around a view.
type pageView struct {
	View    string
	Views   []string
	CSRF    string
	Auth    bool
	Caller  string
	Version string
	Body    template.HTML
	Src     string // the fragment's URL, refreshed live
}

func (d *Dashboard) viewPage(w http.ResponseWriter, r *http.Request) {
	id, ok := d.session(w, r, false)
	if !ok {
		return
	}
	name := cmp.Or(r.URL.Query().Get("view"), "instances")
	if !slices.Contains(views, name) {
		http.Error(w, "unknown view "+strconv.Quote(name), http.StatusNotFound)
		return
	}
	d.shell(w, r, id, name, "/ui/view/"+name)
}

func (d *Dashboard) instancePage(w http.ResponseWriter, r *http.Request) {
	id, ok := d.session(w, r, false)
	if !ok {
		return
	}
	d.shell(w, r, id, "instance", "/ui/view/instance")
}

func (d *Dashboard) shell(w http.ResponseWriter, r *http.Request, id controller.Identity, name, src string) {
	var body strings.Builder
	if err := d.renderView(r.Context(), &body, name, r.URL.Query()); err != nil {
		body.Reset()
		body.WriteString(`<p class="error">` + template.HTMLEscapeString(err.Error()) + `</p>`)
	}
	d.render(w, "layout.html", pageView{View: name, Views: views, CSRF: csrfToken(w, r), Auth: d.svc.AuthEnabled(),
		Caller: id.String(), Version: apiv1.Version, Body: template.HTML(body.String()), Src: src})
}

func (d *Dashboard) fragment(w http.ResponseWriter, r *http.Request) {
	if _, ok := d.session(w, r, true); !ok {
		return
	}
	name := r.PathValue("name")
	if !slices.Contains(views, name) && name != "instance" {
		http.Error(w, "unknown view", http.StatusNotFound)
		return
	}
	var body strings.Builder
	if err := d.renderView(r.Context(), &body, name, r.URL.Query()); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(body.String()))
}

func (d *Dashboard) renderView(ctx context.Context, w *strings.Builder, name string, q url.Values) error {
	var v any
	var err error
	switch name {
	case "instances":
		v, err = d.instances(ctx, q)
	case "instance":
		v, err = d.instance(ctx, q.Get("id"))
	case "nodes":
		v, err = d.nodes(ctx)
	case "groups":
		v, err = d.groups(ctx)
	case "templates":
		v, err = d.templatesView(ctx)
	case "events":
		v, err = d.events(ctx, q)
	}
	if err != nil {
		return err
	}
	return d.page.ExecuteTemplate(w, name+".html", v)
}

// names maps ids to names for display.
type names struct {
	Nodes, Templates, Groups map[string]string
}

func (d *Dashboard) names(ctx context.Context) (names, []apiv1.Node, []apiv1.Group, []apiv1.Template, string) {
	n := names{map[string]string{}, map[string]string{}, map[string]string{}}
	var problems []string
	nodes, err := d.svc.ListNodes(ctx, "")
	if err != nil {
		problems = append(problems, err.Error())
	}
	groups, err := d.svc.ListGroups(ctx)
	if err != nil {
		problems = append(problems, err.Error())
	}
	tmpls, err := d.svc.Registry().ListTemplates(ctx)
	if err != nil {
		problems = append(problems, "registry: "+err.Error())
	}
	for _, x := range nodes {
		n.Nodes[x.NodeID] = x.NodeName
	}
	for _, x := range groups {
		n.Groups[x.ID] = x.Name
	}
	for _, x := range tmpls {
		n.Templates[x.ID] = x.Name
	}
	slices.SortFunc(tmpls, func(a, b apiv1.Template) int { return strings.Compare(a.Name, b.Name) })
	return n, nodes, groups, tmpls, strings.Join(problems, "; ")
}

// instanceFilter is the instances view's query.
type instanceFilter struct {
	State, Group, Node, Template, ExternalID, Sort string
	Desc                                           bool
	Page                                           int
}

// with is the filter's query string with kv changed.
func (f instanceFilter) with(kv ...string) string {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("state", f.State)
	set("group", f.Group)
	set("node", f.Node)
	set("template", f.Template)
	set("external_id", f.ExternalID)
	set("sort", f.Sort)
	if f.Desc {
		q.Set("desc", "1")
	}
	if f.Page > 1 {
		q.Set("page", strconv.Itoa(f.Page))
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			q.Del(kv[i])
		} else {
			q.Set(kv[i], kv[i+1])
		}
		if kv[i] != "page" {
			q.Del("page")
		}
	}
	return "?" + q.Encode()
}

type stateCount struct {
	State string
	Count int
}

type instancesView struct {
	F         instanceFilter
	Counts    []stateCount
	All       int
	Total     int
	Rows      []apiv1.Instance
	Page      int
	Pages     int
	N         names
	Nodes     []apiv1.Node
	Groups    []apiv1.Group
	Templates []apiv1.Template
	States    []string
	Sorts     []string
	Problem   string
}

func (d *Dashboard) instances(ctx context.Context, q url.Values) (instancesView, error) {
	f := instanceFilter{State: q.Get("state"), Group: q.Get("group"), Node: q.Get("node"), Template: q.Get("template"),
		ExternalID: q.Get("external_id"), Sort: cmp.Or(q.Get("sort"), "created"), Desc: q.Get("desc") != "" || q.Get("sort") == "", Page: 1}
	if p, err := strconv.Atoi(q.Get("page")); err == nil && p > 0 {
		f.Page = p
	}
	v := instancesView{F: f, States: apiv1.InstanceStates, Sorts: []string{"created", "state", "template", "node", "priority", "name"}}
	if f.State != "" && !slices.Contains(apiv1.InstanceStates, f.State) {
		return v, fmt.Errorf("state: unknown state %q", f.State)
	}
	v.N, v.Nodes, v.Groups, v.Templates, v.Problem = d.names(ctx)
	all, err := d.svc.ListInstances(ctx, controller.InstanceFilter{GroupID: f.Group, NodeID: f.Node})
	if err != nil {
		return v, err
	}
	counts := map[string]int{}
	var rows []apiv1.Instance
	for _, in := range all {
		if f.Template != "" && in.VMID != f.Template {
			continue
		}
		if f.ExternalID != "" && !strings.Contains(in.ExternalID, f.ExternalID) {
			continue
		}
		counts[in.State]++
		v.All++
		if f.State == "" || in.State == f.State {
			rows = append(rows, in)
		}
	}
	for _, s := range apiv1.InstanceStates {
		if counts[s] > 0 {
			v.Counts = append(v.Counts, stateCount{s, counts[s]})
		}
	}
	key := func(in apiv1.Instance) string {
		switch f.Sort {
		case "state":
			return in.State
		case "template":
			return v.N.Templates[in.VMID] + ":" + in.Tag
		case "node":
			return v.N.Nodes[in.NodeID]
		case "priority":
			return fmt.Sprintf("%08d", in.Priority)
		case "name":
			return in.Name
		}
		return in.CrTime.Format(time.RFC3339Nano)
	}
	slices.SortStableFunc(rows, func(a, b apiv1.Instance) int {
		c := strings.Compare(key(a), key(b))
		if f.Desc {
			return -c
		}
		return c
	})
	v.Total = len(rows)
	v.Pages = max(1, (v.Total+PageSize-1)/PageSize)
	v.Page = min(f.Page, v.Pages)
	from := (v.Page - 1) * PageSize
	v.Rows = rows[from:min(from+PageSize, len(rows))]
	return v, nil
}

type instanceView struct {
	In      apiv1.Instance
	Logs    apiv1.InstanceLogs
	Events  []apiv1.Event
	N       names
	Problem string
}

func (d *Dashboard) instance(ctx context.Context, id string) (instanceView, error) {
	var v instanceView
	if id == "" {
		return v, fmt.Errorf("id: which instance? (?id=)")
	}
	in, err := d.svc.GetInstance(ctx, id)
	if err != nil {
		return v, fmt.Errorf("instance %s: %w", id, err)
	}
	v.In = in
	v.N, _, _, _, v.Problem = d.names(ctx)
	if v.Logs, err = d.svc.InstanceLogs(ctx, id); err != nil {
		return v, err
	}
	v.Events, err = d.svc.Events(ctx, store.EventQuery{InstanceID: id, Limit: 200})
	return v, err
}

type nodesView struct {
	Nodes   []apiv1.Node
	Groups  []apiv1.Group
	Active  int
	Slots   int
	Used    int
	Problem string
}

func (d *Dashboard) nodes(ctx context.Context) (nodesView, error) {
	var v nodesView
	var err error
	if v.Nodes, err = d.svc.ListNodes(ctx, ""); err != nil {
		return v, err
	}
	if v.Groups, err = d.svc.ListGroups(ctx); err != nil {
		return v, err
	}
	slices.SortFunc(v.Nodes, func(a, b apiv1.Node) int { return strings.Compare(a.NodeName, b.NodeName) })
	for _, n := range v.Nodes {
		if n.State == apiv1.NodeActive {
			v.Active++
			v.Slots += n.Capacity
		}
		v.Used += n.VMCount
	}
	return v, nil
}

type groupRow struct {
	apiv1.Group
	Members []apiv1.Node
}

type groupsView struct {
	Groups []groupRow
	All    []apiv1.Group
	Nodes  []apiv1.Node
	N      names
}

func (d *Dashboard) groups(ctx context.Context) (groupsView, error) {
	var v groupsView
	var err error
	if v.All, err = d.svc.ListGroups(ctx); err != nil {
		return v, err
	}
	if v.Nodes, err = d.svc.ListNodes(ctx, ""); err != nil {
		return v, err
	}
	v.N = names{Groups: map[string]string{}}
	for _, g := range v.All {
		v.N.Groups[g.ID] = g.Name
	}
	for _, g := range v.All {
		row := groupRow{Group: g}
		for _, n := range v.Nodes {
			for _, ng := range n.Groups {
				if ng.ID == g.ID {
					row.Members = append(row.Members, n)
				}
			}
		}
		v.Groups = append(v.Groups, row)
	}
	return v, nil
}

type templatesView struct {
	Templates     []apiv1.TemplateDetail
	Disk          apiv1.Disk
	DiskErr       string
	Nodes         []apiv1.Node
	Groups        []apiv1.Group
	Distributions []apiv1.DistributionView
	N             names
	Problem       string
}

func (d *Dashboard) templatesView(ctx context.Context) (templatesView, error) {
	var v templatesView
	var tmpls []apiv1.Template
	v.N, v.Nodes, v.Groups, tmpls, v.Problem = d.names(ctx)
	for _, t := range tmpls {
		detail, err := d.svc.Registry().GetTemplate(ctx, t.ID)
		if err != nil {
			continue // deleted meanwhile
		}
		slices.SortFunc(detail.Versions, func(a, b apiv1.TemplateVersion) int { return b.Number - a.Number })
		v.Templates = append(v.Templates, detail)
	}
	if disk, err := d.svc.Registry().Disk(ctx); err != nil {
		v.DiskErr = err.Error()
	} else {
		v.Disk = disk
	}
	ds, err := d.svc.Distributions(ctx)
	if err != nil {
		return v, err
	}
	slices.Reverse(ds)
	v.Distributions = ds[:min(len(ds), 10)]
	return v, nil
}

type eventsView struct {
	Events             []apiv1.Event
	Type, Instance, ID string
}

func (d *Dashboard) events(ctx context.Context, q url.Values) (eventsView, error) {
	v := eventsView{Type: q.Get("type"), Instance: q.Get("instance_id")}
	evs, err := d.svc.Events(ctx, store.EventQuery{Type: v.Type, InstanceID: v.Instance, NodeID: q.Get("node_id"), Limit: 200})
	slices.Reverse(evs) // newest first
	v.Events = evs
	return v, err
}

// stream is a server-sent event per recorded event (the dashboard
// refreshes its view on each).
func (d *Dashboard) stream(w http.ResponseWriter, r *http.Request) {
	if _, ok := d.session(w, r, true); !ok {
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, "retry: 3000\n\n")
	_ = rc.Flush()
	zero := apiv1.EventID{}
	q := store.EventQuery{Limit: 100}
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		if id, err := apiv1.ParseEventID(last); err == nil {
			zero = id
			q.After = &zero
		}
	}
	if q.After == nil {
		q.Limit = 1 // only what happens from now on
	}
	first := q.After == nil
	_ = d.svc.FollowEvents(r.Context(), q, func(evs []apiv1.Event) error {
		if first {
			first = false
			evs = evs[len(evs):] // the newest one is history
		}
		for _, ev := range evs {
			data, _ := json.Marshal(ev)
			if _, err := fmt.Fprintf(w, "id: %s\ndata: %s\n\n", ev.ID, data); err != nil {
				return err
			}
		}
		return rc.Flush()
	})
}
