// Package web is the controller's dashboard: a read-only overview of nodes,
// instances and templates, rendered with html/template from embedded files.
// It calls the controller service, never etcd.
package web

import (
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/httpapi"
)

//go:embed templates/*.html
var files embed.FS

var page = template.Must(template.New("").Funcs(template.FuncMap{
	"class":   func(state string) string { return strings.ReplaceAll(strings.ToLower(state), " ", "-") },
	"gib":     func(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) },
	"percent": func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) },
	// name shows a name for an id, or the id when none is known.
	"name": func(names map[string]string, id string) string {
		if n := names[id]; n != "" {
			return n
		}
		return id
	},
	"ssh": func(info *apiv1.VMInfo) string {
		if info != nil {
			for _, p := range info.PortForwarding {
				if p.GuestPort == 22 {
					return fmt.Sprintf("%s:%d", info.HostIP, p.HostPort)
				}
			}
		}
		return ""
	},
}).ParseFS(files, "templates/*.html"))

// Dashboard serves the dashboard at /.
type Dashboard struct {
	svc *controller.Service
	log *slog.Logger
}

// New returns the dashboard handler.
func New(svc *controller.Service, log *slog.Logger) *Dashboard { return &Dashboard{svc: svc, log: log} }

type view struct {
	Status    apiv1.Status
	Nodes     []apiv1.Node
	Instances []apiv1.Instance
	Templates []apiv1.Template
	ByState   []stateCount
	Active    int
	Slots     int
	Used      int
	Error     string
	NodeNames map[string]string // id -> name
	TmplNames map[string]string // id -> name
}

type stateCount struct {
	State string
	Count int
}

func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	ctx := r.Context()
	id, err := d.svc.Authenticate(ctx, r.Header.Get("Authorization"), httpapi.ClientCert(r))
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Basic realm="Corral", charset="UTF-8"`)
		http.Error(w, "Authentication Required", http.StatusUnauthorized)
		return
	}
	if err := d.svc.Authorize(ctx, id, apiv1.PermView); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	v := view{Status: d.svc.Status(ctx)}
	if v.Nodes, err = d.svc.ListNodes(ctx, ""); err != nil {
		v.Error = err.Error()
	}
	if v.Instances, err = d.svc.ListInstances(ctx, controller.InstanceFilter{}); err != nil {
		v.Error = err.Error()
	}
	if v.Templates, err = d.svc.Registry().ListTemplates(ctx); err != nil && v.Error == "" {
		v.Error = "registry: " + err.Error()
	}
	v.NodeNames, v.TmplNames = map[string]string{}, map[string]string{}
	for _, n := range v.Nodes {
		v.NodeNames[n.NodeID] = n.NodeName
	}
	for _, t := range v.Templates {
		v.TmplNames[t.ID] = t.Name
	}
	counts := map[string]int{}
	for _, in := range v.Instances {
		counts[in.State]++
	}
	for _, s := range apiv1.InstanceStates {
		if counts[s] > 0 {
			v.ByState = append(v.ByState, stateCount{s, counts[s]})
		}
	}
	for _, n := range v.Nodes {
		if n.State == apiv1.NodeActive {
			v.Active++
			v.Slots += n.Capacity
		}
		v.Used += n.VMCount
	}
	slices.Reverse(v.Instances) // newest first
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := page.ExecuteTemplate(w, "dashboard.html", v); err != nil {
		d.log.Error("render dashboard", "err", err)
	}
}
