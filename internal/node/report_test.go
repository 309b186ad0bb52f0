package node

import (
	"strings"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// TestReportsStayUnderTheBodyLimit: a batch of statuses with large outputs
// was sent whole, over the controller's 8 MiB limit, refused and retried
// forever; the node's other reports queued behind it.
func TestReportsStayUnderTheBodyLimit(t *testing.T) {
	out := &apiv1.ScriptResult{Stdout: strings.Repeat("o", apiv1.MaxScriptOutput), Stderr: strings.Repeat("e", apiv1.MaxScriptOutput)}
	var batch []apiv1.InstanceStatus
	for range 200 {
		batch = append(batch, apiv1.InstanceStatus{InstanceID: "i", State: apiv1.StateStarted, StartupScript: out,
			Console: strings.Repeat("c", apiv1.MaxConsole)})
	}
	sent := 0
	for sent < len(batch) {
		n := reportPart(batch[sent:])
		if n < 1 {
			t.Fatal("a part of no status")
		}
		size := 0
		for _, st := range batch[sent : sent+n] {
			size += len(st.Console) + len(st.StartupScript.Stdout) + len(st.StartupScript.Stderr)
		}
		if size > maxReportBytes {
			t.Fatalf("a report of %d bytes of output", size)
		}
		sent += n
	}
	if n := reportPart(batch[:1]); n != 1 {
		t.Errorf("a single status: part %d", n)
	}
}
