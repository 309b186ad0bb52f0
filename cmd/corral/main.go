// Command corral is the single binary of the Corral build cloud: controller,
// registry, node agent and tools. See `corral --help`.
package main

import (
	"os"

	"github.com/corral-build/corral/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
