package v1

import (
	"fmt"
	"regexp"
	"strings"
)

// NamePattern admits template, tag and file names in the registry: no
// slashes, no traversal ("..", which storage paths refuse, is refused here,
// at the edge).
var NamePattern = SafeName(regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}$`))

// SafeNamePattern is a name pattern that also refuses "..".
type SafeNamePattern struct{ re *regexp.Regexp }

// SafeName wraps re so that names containing ".." never match.
func SafeName(re *regexp.Regexp) SafeNamePattern { return SafeNamePattern{re} }

// MatchString reports whether s is a valid name.
func (p SafeNamePattern) MatchString(s string) bool {
	return !strings.Contains(s, "..") && p.re.MatchString(s)
}

func rangeMsg(lo, hi int64) string { return fmt.Sprintf("must be an integer from %d to %d", lo, hi) }
