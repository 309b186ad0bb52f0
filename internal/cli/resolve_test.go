package cli

import (
	"strings"
	"testing"
)

func TestPick(t *testing.T) {
	cs := []candidate{{"n-1111", "mac-a"}, {"n-2222", "mac-b"}, {"n-3333", "mac-b"}, {"abcd-ef01", "x"}, {"abcd-ef02", "y"}}
	for _, tc := range []struct {
		arg      string
		prefixes bool
		want     string // an id, or "error: <part of the message>"
	}{
		{"n-1111", false, "n-1111"},
		{"mac-a", false, "n-1111"},
		{"mac-b", false, "error: is ambiguous: mac-b (n-2222), mac-b (n-3333)"},
		{"nope", false, `error: no node "nope"; known: mac-a (n-1111)`},
		{"n-22", true, "n-2222"},
		{"abcd", true, "error: is ambiguous"},
		{"abc", true, "error: no node"}, // prefixes of 4 characters at least
		{"n-22", false, "error: no node"},
	} {
		got, err := pick("node", tc.arg, cs, tc.prefixes)
		if err != nil {
			got = "error: " + err.Error()
		}
		if want, ok := strings.CutPrefix(tc.want, "error: "); ok && !strings.Contains(got, want) || !ok && got != tc.want {
			t.Errorf("pick(%q, prefixes %v) = %q, want %q", tc.arg, tc.prefixes, got, tc.want)
		}
	}
	if _, err := pick("group", "g", nil, false); err == nil || !strings.Contains(err.Error(), "there are none") {
		t.Errorf("no candidates: %v", err)
	}
}
