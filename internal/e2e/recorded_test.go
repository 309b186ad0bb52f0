package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/testenv"
)

// shapeDiff compares a recorded response shape of the reference product
// with Corral's answer: every key the recorded one has must be present,
// with the same JSON type (null in the recording admits anything; a
// recorded array's first element is the shape of each of ours). Extra keys
// are fine. It returns one line per difference, by JSON path.
func shapeDiff(path string, want, got any) []string {
	if want == nil {
		return nil
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %s, want object", path, jsonType(got))}
		}
		var out []string
		if len(w) > 0 && allIDs(w) { // a map by id (distribute_status): each value has the shape
			var shape any
			for _, v := range w {
				shape = v
			}
			for k, gv := range g {
				out = append(out, shapeDiff(path+"."+k, shape, gv)...)
			}
			return out
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			gv, present := g[k]
			if !present {
				out = append(out, fmt.Sprintf("%s.%s: missing", path, k))
				continue
			}
			out = append(out, shapeDiff(path+"."+k, w[k], gv)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %s, want array", path, jsonType(got))}
		}
		if len(w) == 0 || len(g) == 0 {
			return nil
		}
		var out []string
		for i, gv := range g {
			for _, d := range shapeDiff(fmt.Sprintf("%s[%d]", path, i), w[0], gv) {
				if !slices.Contains(out, d) {
					out = append(out, d)
				}
			}
			if i == 2 {
				break
			}
		}
		return out
	default:
		if jsonType(want) != jsonType(got) {
			return []string{fmt.Sprintf("%s: %s, want %s", path, jsonType(got), jsonType(want))}
		}
		if s, isStr := want.(string); isStr && looksLikeTime(s) {
			if _, err := time.Parse(time.RFC3339Nano, got.(string)); err != nil {
				return []string{fmt.Sprintf("%s: %q is not a timestamp like %q", path, got, s)}
			}
		}
		return nil
	}
}

var idPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func allIDs(m map[string]any) bool {
	for k := range m {
		if !idPattern.MatchString(k) {
			return false
		}
	}
	return true
}

func looksLikeTime(s string) bool {
	_, err := time.Parse(time.RFC3339Nano, s)
	return err == nil
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	}
	return fmt.Sprintf("%T", v)
}

func readRecorded(t *testing.T, name string) any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "recorded", name))
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func rawCall(t *testing.T, method, url, body string) any {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s %s: not JSON: %s", method, url, data)
	}
	return v
}

// knownDifferences are the recorded fields Corral does not have yet, each
// a documented gap (README, "API"); the test fails on any
// other difference, and on a listed one that is gone (so the list shrinks).
var knownDifferences = map[string]string{
	// The documentation's example capitalises one key; the responses
	// recorded from a real controller (vm-get, vm-list) say "name".
	"docs-controller.GET_api_v1_vm_id.json.body.vminfo.port_forwarding[0].Name: missing": "documentation typo",
}

// TestRecordedShapes: Corral's answers have the shape of the reference
// product's recorded responses (../shared/spec/recorded, copied to
// testdata/recorded): same keys, same JSON types, timestamps as timestamps.
func TestRecordedShapes(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 4, Groups: []string{"g1"}}}})
	base := c.Controllers[0].URL
	reg := c.Registry.URL
	rc, _ := client.NewRegistry(reg)
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	pushed, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "recorded", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	c.TemplateID = pushed.TemplateID
	script := base64.StdEncoding.EncodeToString([]byte("echo hi; exit 3"))
	hello := base64.StdEncoding.EncodeToString([]byte("echo hi"))
	started := ok(t, "POST", base+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","tag":"v1","external_id":"ext-1","startup_script":"`+hello+`","script_monitoring":true}`).([]any)[0].(string)
	c.WaitState(started, apiv1.StateStarted, 20*time.Second)
	failed := ok(t, "POST", base+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","external_id":"ext-2","startup_script":"`+script+`","script_monitoring":true,"script_fail_handler":1}`).([]any)[0].(string)
	c.WaitState(failed, apiv1.StateError, 20*time.Second)
	// Only the instances above are listed when the list is compared.
	deadline := time.Now().Add(10 * time.Second)
	for in := c.WaitState(started, apiv1.StateStarted, time.Second); in.StartupScript == nil && time.Now().Before(deadline); in = c.WaitState(started, apiv1.StateStarted, time.Second) {
		time.Sleep(50 * time.Millisecond)
	}
	nodeID := ok(t, "GET", base+"/api/v1/node", "").([]any)[0].(map[string]any)["node_id"].(string)
	group := ok(t, "POST", base+"/api/v1/group", `{"name":"recorded","description":"d"}`).(map[string]any)["id"].(string)
	saving := ok(t, "POST", base+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","external_id":"ext-3","startup_script":"`+hello+`","script_monitoring":true}`).([]any)[0].(string)
	c.WaitState(saving, apiv1.StateStarted, 20*time.Second)
	image := ok(t, "POST", base+"/api/v1/image", `{"id":"`+saving+`","tag":"saved","script":"echo hi"}`).(map[string]any)["request_id"].(string)
	dist := ok(t, "POST", base+"/api/v1/registry/vm/distribute", `{"template_id":"`+c.TemplateID+`","tag":"v1","node_ids":["`+nodeID+`"]}`).(map[string]any)["request_id"].(string)

	cases := []struct{ file, method, url, body string }{
		{"docs-controller.GET_api_v1_status.json", "GET", base + "/api/v1/status", ""},
		{"vm-start.not-in-registry.json", "POST", base + "/api/v1/vm", `{"vmid":"00000000-0000-0000-0000-000000000000"}`},
		{"docs-controller.GET_api_v1_vm_id.json", "GET", base + "/api/v1/vm?id=" + started, ""},
		{"vm-get.script-error.json", "GET", base + "/api/v1/vm?id=" + failed, ""},
		{"vm-list.started.json", "GET", base + "/api/v1/vm", ""},
		{"docs-controller.GET_api_v1_vm.json", "GET", base + "/api/v1/vm", ""},
		{"vm-start.ok.json", "POST", base + "/api/v1/vm", `{"vmid":"` + c.TemplateID + `"}`},
		{"docs-controller.POST_api_v1_vm.json", "POST", base + "/api/v1/vm", `{"vmid":"` + c.TemplateID + `"}`},
		{"docs-controller.GET_api_v1_node.json", "GET", base + "/api/v1/node", ""},
		{"docs-controller.GET_api_v1_node_id.json", "GET", base + "/api/v1/node?id=" + nodeID, ""},
		{"docs-controller.GET_api_v1_group.json", "GET", base + "/api/v1/group", ""},
		{"docs-controller.POST_api_v1_group.json", "POST", base + "/api/v1/group", `{"name":"another"}`},
		{"docs-controller.PUT_api_v1_group_id.json", "PUT", base + "/api/v1/group?id=" + group, `{"description":"e"}`},
		{"docs-controller.GET_api_v1_registry_vm.json", "GET", base + "/api/v1/registry/vm", ""},
		{"docs-controller.GET_api_v1_registry_vm_id.json", "GET", base + "/api/v1/registry/vm?id=" + c.TemplateID, ""},
		{"docs-controller.GET_api_v1_image_id.json", "GET", base + "/api/v1/image?id=" + image, ""},
		{"docs-controller.GET_api_v1_registry_vm_distribute_id.json", "GET", base + "/api/v1/registry/vm/distribute?id=" + dist, ""},
		{"docs-controller.PUT_api_v1_vm_id.json", "PUT", base + "/api/v1/vm?id=" + started, `{"external_id":"x"}`},
		{"docs-controller.DELETE_api_v1_vm.json", "DELETE", base + "/api/v1/vm", `{"id":"` + started + `"}`},
		{"vm-terminate.ok.json", "DELETE", base + "/api/v1/vm", `{"id":"` + failed + `"}`},
		{"docs-registry.GET_registry_status.json", "GET", reg + "/registry/status", ""},
		{"docs-registry.GET_registry_vm_id.json", "GET", reg + "/registry/vm?id=" + c.TemplateID, ""},
		{"docs-registry.GET_registry_v2_vm_id.json", "GET", reg + "/registry/v2/vm?id=" + c.TemplateID, ""},
		{"docs-registry.GET_registry_vm.json", "GET", reg + "/registry/vm", ""},
	}
	var diffs []string
	for _, tc := range cases {
		got := rawCall(t, tc.method, tc.url, tc.body)
		for _, d := range shapeDiff(tc.file, readRecorded(t, tc.file), got) {
			diffs = append(diffs, d)
		}
	}
	var unexpected, gone []string
	for _, d := range diffs {
		if _, known := knownDifferences[d]; !known {
			unexpected = append(unexpected, d)
		}
	}
	for d := range knownDifferences {
		if !slices.Contains(diffs, d) {
			gone = append(gone, d)
		}
	}
	sort.Strings(gone)
	if len(unexpected) > 0 {
		t.Errorf("differences from the recorded shapes:\n%s", strings.Join(unexpected, "\n"))
	}
	if len(gone) > 0 {
		t.Errorf("fixed, drop from knownDifferences:\n%s", strings.Join(gone, "\n"))
	}
}
