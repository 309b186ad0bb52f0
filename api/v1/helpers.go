package v1

import "fmt"

func rangeMsg(lo, hi int64) string { return fmt.Sprintf("must be an integer from %d to %d", lo, hi) }
