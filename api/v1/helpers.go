package v1

import (
	"fmt"
	"regexp"
)

// NamePattern admits template, tag and file names in the registry: no
// slashes, no traversal.
var NamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}$`)

func rangeMsg(lo, hi int64) string { return fmt.Sprintf("must be an integer from %d to %d", lo, hi) }
