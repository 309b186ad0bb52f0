package driver

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// TestScriptOutputIsATail: a job printing without end drove the node to
// 4.6 GB (its output was buffered whole) and its status reports past the
// controller's body limit. The result keeps the last MaxScriptOutput bytes
// of each stream and says how much was cut.
func TestScriptOutputIsATail(t *testing.T) {
	cmd := exec.CommandContext(context.Background(), "sh", "-s")
	res, err := RunScript(context.Background(), cmd, []byte(`
i=0
while [ $i -lt 2000 ]; do
	printf '%0500d\n' $i
	i=$((i+1))
done
echo the end
echo err-tail >&2`))
	if err != nil || res.ReturnCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if len(res.Stdout) > apiv1.MaxScriptOutput+200 {
		t.Errorf("stdout kept %d bytes, want about %d", len(res.Stdout), apiv1.MaxScriptOutput)
	}
	if !strings.HasSuffix(res.Stdout, "the end\n") || !strings.HasPrefix(res.Stdout, "[corral: ") || !strings.Contains(res.Stdout, "bytes of output cut") {
		t.Errorf("stdout head %.80q tail %q", res.Stdout, res.Stdout[max(0, len(res.Stdout)-20):])
	}
	if res.Stderr != "err-tail\n" {
		t.Errorf("stderr %q", res.Stderr)
	}
}

func TestTailBuffer(t *testing.T) {
	var b tailBuffer
	b.Write([]byte("abc"))
	if b.String() != "abc" {
		t.Fatalf("%q", b.String())
	}
	big := strings.Repeat("x", apiv1.MaxScriptOutput) + "yz"
	b.Write([]byte(big))
	got := b.String()
	if !strings.HasSuffix(got, "yz") || !strings.Contains(got, "[corral: 5 bytes of output cut") {
		t.Errorf("%.60q ... %q", got, got[len(got)-5:])
	}
	b.Write([]byte("12"))
	if got := b.String(); !strings.HasSuffix(got, "xyz12") || !strings.Contains(got, "[corral: 7 bytes") {
		t.Errorf("after a small write: %.60q", got)
	}
}

// A script that leaves a process running (`server &`) ended: its exit code
// is its result. It was "startup script could not run: exec: WaitDelay
// expired before I/O complete".
func TestScriptLeavingAProcessRunning(t *testing.T) {
	cmd := exec.CommandContext(context.Background(), "sh", "-s")
	res, err := RunScript(context.Background(), cmd, []byte("sleep 5 &\necho started\n"))
	if err != nil || res.ReturnCode != 0 || res.Stdout != "started\n" {
		t.Fatalf("%+v %v", res, err)
	}
}
