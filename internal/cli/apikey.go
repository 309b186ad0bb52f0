package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
)

// runAPIKey manages API keys: `corral apikey create|list|delete`.
func runAPIKey(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || (args[0] != "create" && args[0] != "list" && args[0] != "delete") {
		fmt.Fprintln(out, `Usage: corral apikey <create ID --private-key FILE | list | delete ID> [--etcd-endpoints ...]

API keys log in through /tap/v1/hand and /tap/v1/shake (controller --enable-api-keys).
create makes an RSA key pair, stores the public half in etcd and writes the private
key to FILE for the CI system that will use it.`)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errors.New("want create, list or delete")
	}
	var keyFile string
	cli, pos, err := etcdClient("apikey "+args[0], "Manage API keys.", out, args[1:], func(f *flags) {
		if args[0] == "create" {
			f.String(&keyFile, "private-key", "", "file to write the new private key to (mode 0600)")
		}
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	st := store.New(cli, "")
	switch args[0] {
	case "list":
		ids, err := st.APIKeys(ctx)
		for _, id := range ids {
			fmt.Fprintln(out, id)
		}
		return err
	case "delete":
		if len(pos) != 1 {
			return errors.New("usage: corral apikey delete ID")
		}
		return st.DeleteAPIKey(ctx, pos[0])
	}
	if len(pos) != 1 || keyFile == "" {
		return errors.New("usage: corral apikey create ID --private-key FILE")
	}
	priv, err := controller.NewAPIKey(ctx, st, pos[0])
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, priv, 0o600); err != nil {
		return fmt.Errorf("write private key: %w", err)
	}
	fmt.Fprintf(out, "API key %s created; private key in %s\n", pos[0], keyFile)
	return nil
}
