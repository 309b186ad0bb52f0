package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
)

// runJoinToken manages the join token: `corral join-token rotate`.
func runJoinToken(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "rotate" {
		fmt.Fprintln(out, `Usage: corral join-token rotate [--etcd-endpoints ...]

Makes a new join token and prints it: the only time it can be read, since etcd
keeps its SHA-256. Nodes already joined keep their own credentials; new joins
need the new token. (With the API: POST /api/v1/join-token, admin permission.)`)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errors.New("want rotate")
	}
	cli, _, err := etcdClient("join-token rotate", "Rotate the join token.", out, args[1:], nil)
	if err != nil {
		return err
	}
	defer cli.Close()
	token := controller.NewJoinToken()
	if err := store.New(cli, "").SetJoinTokenHash(ctx, controller.SecretHash(token)); err != nil {
		return err
	}
	fmt.Fprintln(out, token)
	return nil
}
