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
	var stdout, stderr bytes.Buffer
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
	case err != nil:
		return res, fmt.Errorf("startup script: %w", err)
	}
	return res, nil
}
