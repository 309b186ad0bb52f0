package e2e

import (
	"encoding/base64"
	"fmt"
	"slices"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
)

var timestampKeys = []string{"ts", "cr_time", "creation_date", "stop_date", "start_date"}

// checkNoBadValues walks a decoded response: timestamps are RFC 3339 or
// absent (never ""), and nothing the spec types as a string is null.
func checkNoBadValues(t *testing.T, where string, v any) {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if slices.Contains(timestampKeys, k) {
				s, isStr := val.(string)
				if !isStr {
					t.Errorf("%s.%s: timestamp is %T %v, want an RFC 3339 string", where, k, val, val)
				} else if _, err := time.Parse(time.RFC3339, s); err != nil {
					t.Errorf("%s.%s = %q: not RFC 3339", where, k, s)
				}
			}
			checkNoBadValues(t, where+"."+k, val)
		}
	case []any:
		for i, val := range x {
			checkNoBadValues(t, fmt.Sprintf("%s[%d]", where, i), val)
		}
	}
}

func requireKeys(t *testing.T, where string, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("%s: missing %q in %v", where, k, m)
		}
	}
}

// TestContract decodes every endpoint's response with the spec's strict
// expectations, the way existing CI plugins read them.
func TestContract(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 4, Groups: []string{"g1"}}}})
	base := c.Controllers[0].URL + "/api/v1"

	st := ok(t, "GET", base+"/status", "").(map[string]any)
	requireKeys(t, "status", st, "status", "version", "registry_address", "registry_status", "license")
	if st["status"] != "Running" || st["registry_address"] == "" || st["license"] == "" {
		t.Errorf("status: %v", st)
	}
	if rs := st["registry_status"]; rs != "Running" && rs != "FAIL" {
		t.Errorf("registry_status %v", rs)
	}

	// Nodes: array also with ?id=, exact state names, non-negative integer counters.
	nodes := ok(t, "GET", base+"/node", "").([]any)
	nodeID := nodes[0].(map[string]any)["node_id"].(string)
	one := ok(t, "GET", base+"/node?id="+nodeID, "").([]any)
	if len(one) != 1 {
		t.Fatalf("node?id=: want a one-element array, got %v", one)
	}
	n := one[0].(map[string]any)
	requireKeys(t, "node", n, "node_id", "node_name", "ip_address", "state", "capacity", "capacity_mode", "cpu_count",
		"ram", "vm_count", "vcpu_count", "vram", "cpu_util", "ram_util", "free_disk_space", "anka_disk_usage",
		"disk_size", "host_arch", "templates", "groups")
	nodeStates := []string{apiv1.NodeOffline, apiv1.NodeInactive, apiv1.NodeActive, apiv1.NodeUpdating, apiv1.NodeDrain}
	if !slices.Contains(nodeStates, n["state"].(string)) {
		t.Errorf("node state %q", n["state"])
	}
	for _, k := range []string{"capacity", "cpu_count", "ram", "vm_count", "vcpu_count", "vram", "free_disk_space", "anka_disk_usage", "disk_size"} {
		if f, isNum := n[k].(float64); !isNum || f < 0 || f != float64(int64(f)) {
			t.Errorf("node.%s = %v: want a non-negative integer", k, n[k])
		}
	}
	if a := n["host_arch"]; a != apiv1.ArchAMD64 && a != apiv1.ArchARM64 {
		t.Errorf("host_arch %v", a)
	}
	g := n["groups"].([]any)[0].(map[string]any)
	requireKeys(t, "node.groups[0]", g, "id", "name", "description", "fallback_group_id")
	if _, isStr := g["description"].(string); !isStr {
		t.Errorf("group description must be a string, got %v", g["description"])
	}
	fail(t, "GET", base+"/node?id=nope", "", 200, apiv1.MsgNotFound)

	// Groups: description never null, even when not given.
	created := ok(t, "POST", base+"/group", `{"name":"bare"}`).(map[string]any)
	for _, gr := range ok(t, "GET", base+"/group", "").([]any) {
		gm := gr.(map[string]any)
		requireKeys(t, "group", gm, "id", "name", "description", "fallback_group_id")
		if _, isStr := gm["description"].(string); !isStr {
			t.Errorf("group %v: description %v", gm["name"], gm["description"])
		}
	}
	ok(t, "PUT", base+"/group", `{"id":"`+created["id"].(string)+`","description":"now described"}`)
	ok(t, "DELETE", base+"/group", `{"id":"`+created["id"].(string)+`"}`)
	fail(t, "DELETE", base+"/group", `{"id":"`+created["id"].(string)+`"}`, 200, apiv1.MsgNotFound)

	// Instances: every content type clients use, numeric strings, Basic root: header.
	script := base64.StdEncoding.EncodeToString([]byte("echo hello; echo oops >&2"))
	bodies := []struct{ contentType, body string }{
		{"", `{"vmid":"` + c.TemplateID + `","count":"1","priority":"10","startup_script":"` + script + `","script_monitoring":true}`},
		{"application/json", `{"vmid":"` + c.TemplateID + `","tag":"v1","external_id":"ext-1","name":"named","metadata":{"k":"v","n":1}}`},
		{"application/x-www-form-urlencoded", `{"vmid":"` + c.TemplateID + `","version":2,"unknown_field":{"x":1}}`},
	}
	var ids []string
	for _, b := range bodies {
		code, env := call(t, "POST", base+"/vm", b.contentType, b.body)
		if code != 200 || env["status"] != "OK" {
			t.Fatalf("POST vm with Content-Type %q: %d %v", b.contentType, code, env)
		}
		for _, id := range env["body"].([]any) {
			ids = append(ids, id.(string))
		}
	}
	// A list taken while some are still Scheduling must satisfy the contract too.
	checkList(t, ok(t, "GET", base+"/vm", ""))
	for _, id := range ids {
		c.WaitState(id, apiv1.StateStarted, 10*time.Second)
	}
	checkList(t, ok(t, "GET", base+"/vm", ""))

	in := ok(t, "GET", base+"/vm?id="+ids[0], "").(map[string]any)
	checkNoBadValues(t, "vm", in)
	requireKeys(t, "vm", in, "instance_id", "instance_state", "anka_registry", "vmid", "tag", "node_id",
		"inflight_reqid", "ts", "cr_time", "progress", "arch", "priority", "vminfo", "startup_script")
	if in["priority"].(float64) != 10 {
		t.Errorf("priority from a numeric string: %v", in["priority"])
	}
	ss := in["startup_script"].(map[string]any)
	if ss["stdout"] != "hello\n" || ss["stderr"] != "oops\n" || ss["return_code"].(float64) != 0 || ss["did_timeout"] != false {
		t.Errorf("startup_script result: %v", ss)
	}
	vi := in["vminfo"].(map[string]any)
	requireKeys(t, "vminfo", vi, "uuid", "name", "status", "cpu_cores", "ram", "node_id", "host_ip", "ip",
		"creation_date", "start_date", "version", "port_forwarding")
	pf := vi["port_forwarding"].([]any)[0].(map[string]any)
	if pf["guest_port"].(float64) != 22 || pf["protocol"] != "tcp" {
		t.Errorf("first port forward must be SSH: %v", pf)
	}
	if vi["status"] != "running" || vi["ip"] == "" {
		t.Errorf("vminfo: %v", vi)
	}
	for _, k := range []string{"message", "external_id"} {
		if _, present := in[k]; present {
			t.Errorf("vm.%s present (%v) though unset: must be omitted", k, in[k])
		}
	}
	second := ok(t, "GET", base+"/vm?id="+ids[1], "").(map[string]any)
	if second["tag"] != "v1" || second["external_id"] != "ext-1" || second["metadata"].(map[string]any)["k"] != "v" {
		t.Errorf("tag/external_id/metadata not kept: %v", second)
	}
	if third := ok(t, "GET", base+"/vm?id="+ids[2], "").(map[string]any); third["tag"] != "v2" {
		t.Errorf("version 2 resolves to tag v2, got %v", third["tag"])
	}

	// Auth off: a Basic root: header and odd extra headers are tolerated.
	req := `{"id":"` + ids[0] + `"}`
	code, env := callWithHeaders(t, "DELETE", base+"/vm", req, map[string]string{"Authorization": "Basic cm9vdDo=", "X-Jenkins": "1"})
	if code != 200 || env["status"] != "OK" {
		t.Fatalf("DELETE with Basic root: %d %v", code, env)
	}
	term := c.WaitState(ids[0], apiv1.StateTerminated, 10*time.Second)
	if term.VMInfo == nil || term.VMInfo.StopDate.IsZero() || term.VMInfo.Status != "stopped" {
		t.Errorf("terminated vminfo: %+v", term.VMInfo)
	}
	checkList(t, ok(t, "GET", base+"/vm", ""))

	// Registry proxy endpoints answer from the template list.
	tmpls := ok(t, "GET", base+"/registry/vm?apiVer=v1", "").([]any)
	requireKeys(t, "registry/vm", tmpls[0].(map[string]any), "id", "name", "size", "arch")
	detail := ok(t, "GET", base+"/registry/vm?id="+c.TemplateID, "").(map[string]any)
	v := detail["versions"].([]any)[0].(map[string]any)
	requireKeys(t, "versions[0]", v, "tag", "number", "size", "description", "config_file", "nvram", "images", "state_files")
	disk := ok(t, "GET", base+"/registry/disk", "").(map[string]any)
	if disk["total"].(float64) <= 0 {
		t.Errorf("registry/disk: %v", disk)
	}
	fail(t, "GET", base+"/registry/vm?id=nope", "", 200, apiv1.MsgNotFound) // the reference's answer: clients then look it up by name
	fail(t, "GET", base+"/no-such-route", "", 404, apiv1.MsgNotFound)
	fail(t, "PATCH", base+"/vm", "", 404, apiv1.MsgNotFound)
	fail(t, "GET", base+"/vm?id=nope", "", 200, apiv1.MsgNotFound)
}

// checkList asserts every list item has vm and vm.cr_time, and nulls only
// where the spec allows them.
func checkList(t *testing.T, body any) {
	t.Helper()
	for i, item := range body.([]any) {
		m := item.(map[string]any)
		where := fmt.Sprintf("vm list[%d]", i)
		requireKeys(t, where, m, "instance_id", "external_id", "name", "vm")
		vm, isObj := m["vm"].(map[string]any)
		if !isObj {
			t.Fatalf("%s: vm is %T", where, m["vm"])
		}
		requireKeys(t, where+".vm", vm, "instance_id", "instance_state", "cr_time")
		if !slices.Contains(apiv1.InstanceStates, vm["instance_state"].(string)) {
			t.Errorf("%s: state %q is not a spec state", where, vm["instance_state"])
		}
		if vm["instance_state"] == apiv1.StateScheduling && vm["vminfo"] != nil {
			t.Errorf("%s: vminfo present while Scheduling", where)
		}
		for _, k := range []string{"message", "external_id"} {
			if val, present := vm[k]; present && val == nil {
				t.Errorf("%s.vm.%s is null", where, k)
			}
		}
		checkNoBadValues(t, where, m)
	}
}

func callWithHeaders(t *testing.T, method, url, body string, headers map[string]string) (int, map[string]any) {
	t.Helper()
	return callH(t, method, url, body, headers)
}

// TestBadInput: every bad request gets a FAIL naming the field, never a 500.
func TestBadInput(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 1}}})
	base := c.Controllers[0].URL + "/api/v1"
	vm := func(extra string) string { return `{"vmid":"` + c.TemplateID + `"` + extra + `}` }
	cases := []struct {
		method, path, body string
		code               int
		msg                string
	}{
		{"POST", "/vm", `{"vmid":`, 400, "body: malformed JSON: unexpected end of JSON input"},
		{"POST", "/vm", `[1,2]`, 400, "body: must be a JSON object, got array"},
		{"POST", "/vm", `{}`, 200, "vmid: required"},
		{"POST", "/vm", `{"vmid":5}`, 200, "vmid: must be a string, got number"},
		{"POST", "/vm", vm(`,"count":-1`), 200, "count: must be an integer from 1 to 1000"},
		{"POST", "/vm", vm(`,"count":0`), 200, "count: must be an integer from 1 to 1000"},
		{"POST", "/vm", vm(`,"count":"two"`), 200, `count: must be an integer (number or numeric string), got "two"`},
		{"POST", "/vm", vm(`,"count":1.5`), 200, `count: must be an integer (number or numeric string), got 1.5`},
		{"POST", "/vm", vm(`,"priority":0`), 200, "priority: must be an integer from 1 to 10000"},
		{"POST", "/vm", vm(`,"priority":true`), 200, "priority: must be an integer (number or numeric string), got true"},
		{"POST", "/vm", vm(`,"script_fail_handler":3`), 200, "script_fail_handler: must be an integer from 0 to 2"},
		{"POST", "/vm", vm(`,"startup_script":"not base64!"`), 200, "startup_script: must be base64: illegal base64 data at input byte 3"},
		{"POST", "/vm", vm(`,"metadata":[1]`), 200, "metadata: must be a JSON object"},
		{"POST", "/vm", vm(`,"script_monitoring":"maybe"`), 200, `script_monitoring: must be a boolean, got "maybe"`},
		{"POST", "/vm", vm(`,"group_id":"nope"`), 200, `group_id: no group with id "nope"`},
		{"POST", "/vm", vm(`,"node_id":"nope"`), 200, `node_id: no node with id "nope"`},
		{"POST", "/vm", vm(`,"tag":"nope"`), 200, "No such tag nope"},
		{"POST", "/vm", vm(`,"version":9`), 200, "version: template test-template has no version 9"},
		{"POST", "/vm", `{"vmid":"not-a-template"}`, 200, apiv1.MsgNotInRegistry},
		{"PUT", "/vm", `{"name":"x"}`, 200, "id: required as ?id="},
		{"PUT", "/vm?id=x", `{"name":7}`, 200, "name: must be a string, got number"},
		{"DELETE", "/vm", `{}`, 200, "id: required"},
		{"POST", "/group", `{"description":"no name"}`, 200, "name: required"},
		{"POST", "/group", `{"name":"g","fallback_group_id":"nope"}`, 200, `fallback_group_id: no group with id "nope"`},
		{"PUT", "/group", `{"name":"x"}`, 200, "id: required"},
		{"POST", "/node/config", `{"capacity":2}`, 200, "node_id: required"},
		{"POST", "/node/config", `{"node_id":"nope","capacity":2}`, 200, apiv1.MsgNotFound},
		{"POST", "/node/config", `{"node_id":"x","capacity":-1}`, 200, "capacity: must be a non-negative integer"},
		{"POST", "/node/config", `{"node_id":"x","capacity":2,"max_vm_count":3}`, 200, "max_vm_count: is capacity: give one of them, or the same value"},
		{"POST", "/node/config", `{"node_id":"x","capacity_mode":"resource"}`, 200, `capacity_mode: only "number" is supported (capacity counts instances; limit resources with max_vcpu_count and max_vram)`},
		{"POST", "/node/config", `{"node_id":"x","name":"renamed"}`, 200, "name: not supported: a node's name is the agent's (--name), reported at each join"},
		{"POST", "/node/config", `{"node_id":"x","vcpu_override":4}`, 200, "vcpu_override: not supported: nodes report their CPUs; limit what instances use with max_vcpu_count"},
		{"POST", "/node/config", `{"node_id":"x","ram_override":8}`, 200, "ram_override: not supported: nodes report their RAM; limit what instances use with max_vram"},
		{"POST", "/vm", vm(`,"usb_device":"iphone"`), 200, "usb_device: not supported: no Corral driver passes USB devices to VMs"},
		{"POST", "/vm", vm(`,"vlan_tag":"12"`), 200, "vlan_tag: not supported: Corral's nodes attach VMs to no VLAN (GET /api/v1/vlan lists none)"},
		{"DELETE", "/node", `{}`, 200, "node_id: required"},
		{"POST", "/node/group/nope", `{"node_ids":["x"]}`, 200, apiv1.MsgNotFound},
		{"GET", "/no/such/endpoint", ``, 404, apiv1.MsgNotFound}, // a route the API does not have
		{"POST", "/image", `{"id":"x","tag":"t"}`, 200, apiv1.MsgNotFound},
		{"POST", "/image", `{"tag":"t"}`, 200, "id: required"},
		{"POST", "/image", `{"id":"x","tag":"a/b"}`, 200, `tag: want 1-128 letters, digits or ._+@-, got "a/b"`},
		{"POST", "/image", `{"id":"x","tag":"t","new_template_name":"n","target_vm_id":"v"}`, 200, "new_template_name: give new_template_name or target_vm_id, not both"},
		{"GET", "/image?id=nope", ``, 200, apiv1.MsgNotFound},
		{"POST", "/agent/join", `{}`, 401, apiv1.MsgAuthRequired},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path+" "+tc.body, func(t *testing.T) {
			fail(t, tc.method, base+tc.path, tc.body, tc.code, tc.msg)
		})
	}
	// Numbers as strings are accepted where the spec says so.
	ok(t, "POST", base+"/vm", vm(`,"count":"1","priority":"5","script_timeout":"30","vcpu":"2","vram":"2048"`))
}
