package e2e

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
)

// TestStartupScripts covers script_monitoring, script_timeout and each
// script_fail_handler, and that a failed VM's slot is freed unless kept.
func TestStartupScripts(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 10}}})
	base := c.Controllers[0].URL + "/api/v1"
	start := func(script string, extra string) string {
		b64 := base64.StdEncoding.EncodeToString([]byte(script))
		body := `{"vmid":"` + c.TemplateID + `","startup_script":"` + b64 + `"` + extra + `}`
		return ok(t, "POST", base+"/vm", body).([]any)[0].(string)
	}
	cases := []struct {
		name, script, extra, state, message, vmStatus string
		code                                          int
		timeout, holdsSlot                            bool
	}{
		{name: "monitored success", script: "echo ready", extra: `,"script_monitoring":true`,
			state: apiv1.StateStarted, vmStatus: "running", holdsSlot: true},
		{name: "fail handler 0 stops", script: "echo bad >&2; exit 3", extra: `,"script_monitoring":true`,
			state: apiv1.StateError, message: "startup script exit code 3; VM stopped", code: 3, vmStatus: "stopped"},
		{name: "fail handler 1 keeps", script: "exit 4", extra: `,"script_monitoring":true,"script_fail_handler":1`,
			state: apiv1.StateError, message: "startup script exit code 4", code: 4, vmStatus: "running", holdsSlot: true},
		{name: "fail handler 2 deletes", script: "exit 5", extra: `,"script_monitoring":true,"script_fail_handler":"2"`,
			state: apiv1.StateError, message: "startup script exit code 5; VM deleted", code: 5, vmStatus: "stopped"},
		{name: "timeout", script: "sleep 30", extra: `,"script_monitoring":true,"script_timeout":1`,
			state: apiv1.StateError, message: "startup script timed out after 1s; VM stopped", code: -1, timeout: true, vmStatus: "stopped"},
		{name: "unmonitored failure is only reported", script: "exit 7", extra: ``,
			state: apiv1.StateStarted, code: 7, vmStatus: "running", holdsSlot: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := start(tc.script, tc.extra)
			in := c.WaitState(id, tc.state, 10*time.Second)
			deadline := time.Now().Add(5 * time.Second)
			for in.StartupScript == nil && time.Now().Before(deadline) { // unmonitored results arrive later
				time.Sleep(50 * time.Millisecond)
				in = c.WaitState(id, tc.state, time.Second)
			}
			if in.Message != tc.message {
				t.Errorf("message %q, want %q", in.Message, tc.message)
			}
			if in.StartupScript == nil || in.StartupScript.ReturnCode != tc.code || in.StartupScript.DidTimeout != tc.timeout {
				t.Errorf("startup_script %+v, want return_code %d did_timeout %v", in.StartupScript, tc.code, tc.timeout)
			}
			if in.VMInfo == nil || in.VMInfo.Status != tc.vmStatus {
				t.Errorf("vminfo %+v, want status %s", in.VMInfo, tc.vmStatus)
			}
			if tc.code == 3 && !strings.Contains(in.StartupScript.Stderr, "bad") {
				t.Errorf("stderr %q", in.StartupScript.Stderr)
			}
			nodes, _ := c.Client.Nodes(t.Context())
			before := nodes[0].VMCount
			ok(t, "DELETE", base+"/vm", `{"id":"`+id+`"}`)
			c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
			nodes, _ = c.Client.Nodes(t.Context())
			held := nodes[0].VMCount == before-1
			if held != tc.holdsSlot {
				t.Errorf("slot held until terminate = %v, want %v (vm_count %d -> %d)", held, tc.holdsSlot, before, nodes[0].VMCount)
			}
		})
	}
}

// TestRetention: Terminated instances disappear after the retention time.
func TestRetention(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Retention: time.Second, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	base := c.Controllers[0].URL + "/api/v1"
	id := ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`"}`).([]any)[0].(string)
	c.WaitState(id, apiv1.StateStarted, 10*time.Second)
	ok(t, "DELETE", base+"/vm", `{"id":"`+id+`"}`)
	c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, env := call(t, "GET", base+"/vm?id="+id, "", "")
		if code == 200 && env["message"] == apiv1.MsgNotFound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("terminated instance still stored after retention: %v", env)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
