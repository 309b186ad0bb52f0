package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/testenv"
)

// TestDashboard renders the dashboard with a node, instances and templates.
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

	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	html := string(body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{"mini-7", ids[0].(string), ids[1].(string), "build-42", "test-template",
		`<b id="capacity">1 / 1</b>`, `<b id="active-nodes">1</b>`, "the only active node is at capacity",
		`class="state-started">Started`, "127.0.0.1:", "<td>test-template:v2</td><td>mini-7</td>"} {
		if !strings.Contains(html, want) {
			t.Errorf("dashboard lacks %q", want)
		}
	}
	if resp, _ := http.Get(base + "/nope"); resp.StatusCode != 404 {
		t.Errorf("GET /nope: %d", resp.StatusCode)
	}
}
