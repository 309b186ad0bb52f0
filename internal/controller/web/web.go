// Package web is the controller's dashboard: instances, nodes, groups,
// templates and the event log, with forms and actions, rendered with
// html/template from embedded files and refreshed live (fragments swapped
// on each event, no full reloads). Actions go through the same /api/v1
// handlers and permission checks as the REST API, with the caller from a
// session cookie (HttpOnly, SameSite=Strict) and a CSRF token on every
// change. It calls the controller service, never etcd.
package web

import (
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/corral-build/corral/internal/httpserve"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/httpapi"
)

//go:embed templates/*.html
var files embed.FS

//go:embed static
var static embed.FS

const (
	sessionCookie = "corral_session"
	csrfCookie    = "corral_csrf"
	csrfHeader    = "X-CSRF-Token"
)

// Dashboard serves /, /login, /logout and /ui/.
type Dashboard struct {
	svc  *controller.Service
	log  *slog.Logger
	mux  *http.ServeMux
	api  http.Handler
	page *template.Template
}

// New returns the dashboard handler.
func New(svc *controller.Service, log *slog.Logger) *Dashboard {
	d := &Dashboard{svc: svc, log: log, mux: http.NewServeMux(), page: templates()}
	d.api = http.StripPrefix("/ui", httpapi.NewWithAuth(svc, log, d.caller))
	sub, _ := fs.Sub(static, "static")
	d.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", cacheFor(time.Hour, validPaths(http.FileServerFS(sub)))))
	d.mux.HandleFunc("GET /{$}", d.viewPage)
	d.mux.HandleFunc("GET /login", d.loginPage)
	d.mux.Handle("POST /login", httpserve.NewPerAddress(httpapi.OpenRouteRate, httpapi.OpenRouteBurst).Wrap(http.HandlerFunc(d.login)))
	d.mux.HandleFunc("POST /logout", d.logout)
	d.mux.HandleFunc("GET /ui/view/{name}", d.fragment)
	d.mux.HandleFunc("GET /ui/instance", d.instancePage)
	d.mux.HandleFunc("GET /ui/stream", d.stream)
	d.mux.HandleFunc("/ui/api/", d.apiCall)
	return d
}

// Routes lists what the controller must send to the dashboard.
func Routes() []string {
	return []string{"GET /{$}", "/login", "POST /logout", "/ui/"}
}

func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'")
	d.mux.ServeHTTP(w, r)
}

// validPaths answers 404 for a path no file can have (invalid UTF-8, a
// NUL): the file server answered 500 for them.
func validPaths(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, "/")
		if p != "" && !fs.ValidPath(strings.TrimSuffix(p, "/")) || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func cacheFor(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", fmt.Sprintf("max-age=%d", int(d.Seconds())))
		h.ServeHTTP(w, r)
	})
}

// caller is the session's identity (root when auth is off); a request
// without a session may bring API credentials instead (scripts, API-key
// users), which no browser sends by itself: the dashboard never asks for
// Basic credentials.
func (d *Dashboard) caller(r *http.Request) (controller.Identity, error) {
	if c, err := r.Cookie(sessionCookie); err == nil || !d.svc.AuthEnabled() {
		secret := ""
		if c != nil {
			secret = c.Value
		}
		return d.svc.DashboardSession(r.Context(), secret)
	}
	if h := r.Header.Get("Authorization"); h != "" {
		return d.svc.Authenticate(r.Context(), h, httpapi.ClientCert(r))
	}
	if cert := httpapi.ClientCert(r); cert != nil {
		return d.svc.Authenticate(r.Context(), "", cert)
	}
	return controller.Identity{}, controller.ErrAuth
}

// session answers the caller allowed to view, or writes the way to log in.
func (d *Dashboard) session(w http.ResponseWriter, r *http.Request, fragment bool) (controller.Identity, bool) {
	id, err := d.caller(r)
	if err == nil {
		err = d.svc.Authorize(r.Context(), id, apiv1.PermView)
	}
	var denied *controller.PermissionError
	if id.Root || len(id.Subjects) > 0 {
		httpserve.SetCaller(r.Context(), id.String())
	}
	switch {
	case err == nil:
		return id, true
	case errors.As(err, &denied):
		http.Error(w, err.Error(), http.StatusForbidden)
	case errors.Is(err, controller.ErrAuth) && fragment:
		w.Header().Set("X-Corral-Login", "/login")
		http.Error(w, "Authentication Required: log in again", http.StatusUnauthorized)
	case errors.Is(err, controller.ErrAuth):
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
	default:
		d.log.Error("dashboard session", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
	return id, false
}

// csrfToken returns the browser's CSRF token, setting one first if needed.
func csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 32 {
		return c.Value
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: tok, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode})
	r.AddCookie(&http.Cookie{Name: csrfCookie, Value: tok})
	return tok
}

// csrfOK checks a change: the token (header or form field) must match the
// cookie, and a browser's Origin, when sent, must be this host.
func csrfOK(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) != 32 {
		return false
	}
	got := r.Header.Get(csrfHeader)
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(c.Value)) != 1 {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	return true
}

// apiCall is /ui/api/v1/...: the REST API with the session's caller; every
// change needs the CSRF token.
func (d *Dashboard) apiCall(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !csrfOK(r) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"status":"FAIL","message":"CSRF token missing or wrong: reload the page"}` + "\n"))
		return
	}
	if strings.HasPrefix(r.URL.Path, "/ui/api/v1/agent/") {
		http.NotFound(w, r) // the nodes' protocol is not the dashboard's
		return
	}
	d.api.ServeHTTP(w, r)
}

func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	if !d.svc.AuthEnabled() {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	d.render(w, "login.html", loginView{CSRF: csrfToken(w, r), Next: safeNext(r.URL.Query().Get("next")),
		Error: r.URL.Query().Get("error")})
}

type loginView struct {
	CSRF, Next, Error string
}

// safeNext keeps a redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		return "/"
	}
	return next
}

func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	next := safeNext(r.PostFormValue("next"))
	if !csrfOK(r) {
		http.Redirect(w, r, "/login?error="+url.QueryEscape("The form expired: try again.")+"&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	secret, err := d.svc.DashboardLogin(r.Context(), r.PostFormValue("token"), r.PostFormValue("session"))
	if err != nil {
		d.svc.RecordAuthFailure(httpapi.RemoteHost(r), r.Method, "/login", "dashboard login refused")
		http.Redirect(w, r, "/login?error="+url.QueryEscape("That token was not accepted.")+"&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: secret, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(controller.DashboardSessionTTL.Seconds())})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if !csrfOK(r) {
		http.Error(w, "CSRF token missing or wrong: reload the page", http.StatusForbidden)
		return
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		if err := d.svc.DashboardLogout(r.Context(), c.Value); err != nil {
			d.log.Warn("dashboard logout", "err", err)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (d *Dashboard) render(w http.ResponseWriter, name string, v any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := d.page.ExecuteTemplate(w, name, v); err != nil {
		d.log.Error("render dashboard", "template", name, "err", err)
	}
}
