package e2e

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/testenv"
)

func get(t *testing.T, cl *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := cl.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfMeta = regexp.MustCompile(`name="csrf-token" content="([0-9a-f]{32})"`)

// TestDashboard renders each view with a node, instances and templates, and
// takes actions only with the CSRF token.
func TestDashboard(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "mini-7", Capacity: 1}}})
	base := c.Controllers[0].URL
	ids := ok(t, "POST", base+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","count":2,"name":"build-42"}`).([]any)
	waitStarted(t, c, 1) // capacity 1: one runs, one waits
	started := ok(t, "GET", base+"/api/v1/vm?state=Started", "").([]any)[0].(map[string]any)["instance_id"].(string)
	waiting := ids[0].(string)
	if waiting == started {
		waiting = ids[1].(string)
	}
	waitMessage(t, c, waiting, "the only active node is at capacity")

	jar, _ := cookiejar.New(nil)
	cl := &http.Client{Jar: jar}
	code, html := get(t, cl, base+"/")
	if code != 200 {
		t.Fatalf("GET /: %d", code)
	}
	for _, want := range []string{started[:8], waiting[:8], "build-42", "test-template:v2",
		"the only active node is at capacity", `class="state-started">Started`, `data-state="Scheduling"`, `id="start-form"`} {
		if !strings.Contains(html, want) {
			t.Errorf("instances view lacks %q", want)
		}
	}
	m := csrfMeta.FindStringSubmatch(html)
	if m == nil {
		t.Fatal("no CSRF token in the page")
	}
	if _, frag := get(t, cl, base+"/ui/view/instances?state=Scheduling"); !strings.Contains(frag, waiting[:8]) || strings.Contains(frag, started[:8]+"</a>") {
		t.Errorf("state filter: %s", frag)
	}
	if _, nodes := get(t, cl, base+"/?view=nodes"); !strings.Contains(nodes, "mini-7") || !strings.Contains(nodes, `<b id="capacity">1 / 1</b>`) {
		t.Errorf("nodes view: %s", nodes)
	}
	if _, detail := get(t, cl, base+"/ui/instance?id="+waiting); !strings.Contains(detail, "Waiting: the only active node is at capacity") {
		t.Errorf("instance view: %s", detail)
	}
	if _, detail := get(t, cl, base+"/ui/instance?id="+started); !strings.Contains(detail, "synthetic console: booting") || !strings.Contains(detail, "ssh -p") {
		t.Errorf("started instance view lacks console or ssh: %s", detail)
	}
	if _, evs := get(t, cl, base+"/?view=events"); !strings.Contains(evs, "instance.started") {
		t.Errorf("events view: %s", evs)
	}

	// Changes need the token: without it 403, with it done.
	act := func(token string) int {
		req, _ := http.NewRequest("DELETE", base+"/ui/api/v1/vm", strings.NewReader(`{"id":"`+waiting+`"}`))
		if token != "" {
			req.Header.Set("X-CSRF-Token", token)
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := act(""); code != http.StatusForbidden {
		t.Fatalf("action without CSRF token: HTTP %d", code)
	}
	if code := act(strings.Repeat("0", 32)); code != http.StatusForbidden {
		t.Fatalf("action with a wrong CSRF token: HTTP %d", code)
	}
	if code := act(m[1]); code != http.StatusOK {
		t.Fatalf("action with the CSRF token: HTTP %d", code)
	}
	if code, _ := get(t, cl, base+"/nope"); code != 404 {
		t.Errorf("GET /nope: %d", code)
	}
}

// TestDashboardLogin: with auth on, the dashboard sends to a login page
// (never the browser's Basic prompt), a session cookie (HttpOnly,
// SameSite=Strict) follows a right token only, and logging out ends it.
func TestDashboardLogin(t *testing.T) {
	const token = "dash-root-token"
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: token}})
	base := c.Controllers[0].URL
	jar, _ := cookiejar.New(nil)
	noFollow := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(base + "/?view=nodes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login") || resp.Header.Get("WWW-Authenticate") != "" {
		t.Fatalf("GET / without a session: %d %v", resp.StatusCode, resp.Header)
	}
	if code, _ := get(t, noFollow, base+"/ui/view/instances"); code != http.StatusUnauthorized {
		t.Fatalf("fragment without a session: %d", code)
	}
	_, page := get(t, noFollow, base+"/login")
	csrf := regexp.MustCompile(`name="csrf" value="([0-9a-f]{32})"`).FindStringSubmatch(page)
	if csrf == nil {
		t.Fatalf("login page: %s", page)
	}
	login := func(tok string) *http.Response {
		resp, err := noFollow.PostForm(base+"/login", url.Values{"csrf": {csrf[1]}, "token": {tok}, "next": {"/?view=nodes"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := login("wrong"); !strings.Contains(r.Header.Get("Location"), "error=") || len(r.Cookies()) != 0 {
		t.Fatalf("wrong token: %v %v", r.Header, r.Cookies())
	}
	r := login(token)
	var sess *http.Cookie
	for _, ck := range r.Cookies() {
		if ck.Name == "corral_session" {
			sess = ck
		}
	}
	if sess == nil || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode || r.Header.Get("Location") != "/?view=nodes" {
		t.Fatalf("login: %v %+v", r.Header, sess)
	}
	code, html := get(t, noFollow, base+"/?view=nodes")
	if code != 200 || !strings.Contains(html, "root") {
		t.Fatalf("after login: %d", code)
	}
	// The session is no API credential: /api/v1 still wants one.
	if code, _ := get(t, noFollow, base+"/api/v1/vm"); code != http.StatusUnauthorized {
		t.Fatalf("/api/v1 with only a dashboard cookie: %d", code)
	}
	resp, err = noFollow.PostForm(base+"/logout", url.Values{"csrf": {csrf[1]}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The old cookie is dead on the server too, not only dropped by the jar.
	req, _ := http.NewRequest("GET", base+"/ui/view/nodes", nil)
	req.AddCookie(sess)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("session after logout: %d", resp.StatusCode)
	}
}
