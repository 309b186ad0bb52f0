package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// RunScript runs cmd with script on its stdin and reports the outcome the
// way the API does: output, exit code, and did_timeout when ctx ended first
// (cmd must come from exec.CommandContext with that ctx).
func RunScript(ctx context.Context, cmd *exec.Cmd, script []byte) (apiv1.ScriptResult, error) {
	cmd.Stdin = bytes.NewReader(script)
	var stdout, stderr tailBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second // a script's children must not hold the pipes open
	err := cmd.Run()
	res := apiv1.ScriptResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		res.DidTimeout, res.ReturnCode = true, -1
	case errors.As(err, &exit):
		res.ReturnCode = exit.ExitCode()
	case errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil:
		// The script ended; a process it left running holds its output
		// open (`server &`): that is the script's result, not a failure.
		res.ReturnCode = cmd.ProcessState.ExitCode()
	case err != nil:
		return res, fmt.Errorf("startup script: %w", err)
	}
	return res, nil
}

// tailBuffer keeps the last apiv1.MaxScriptOutput bytes written to it and
// counts the rest: a job that prints without end costs the node a fixed
// amount of memory, and its report stays small.
type tailBuffer struct {
	buf []byte
	cut int64
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= apiv1.MaxScriptOutput {
		t.cut += int64(len(t.buf) + len(p) - apiv1.MaxScriptOutput)
		t.buf = append(t.buf[:0], p[len(p)-apiv1.MaxScriptOutput:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - apiv1.MaxScriptOutput; over > 0 {
		t.cut += int64(over)
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailBuffer) String() string {
	if t.cut == 0 {
		return string(t.buf)
	}
	return apiv1.CutNote(t.cut, len(t.buf)) + string(t.buf)
}
