package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	apiv1 "github.com/corral-build/corral/api/v1"
)

func runVersion(_ context.Context, args []string, out io.Writer) error {
	f := newFlags("version", "Print the version.", out)
	if err := f.Parse(args, slog.Default); err != nil {
		return err
	}
	fmt.Fprintf(out, "corral %s\n", apiv1.Version)
	return nil
}
