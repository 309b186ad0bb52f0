package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/testenv"
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

// TestPickListsAtMostTen: an unknown name lists ten candidates and says how
// many more; a candidate whose name is its id is listed once.
func TestPickListsAtMostTen(t *testing.T) {
	var cs []candidate
	for i := range 12 {
		cs = append(cs, candidate{fmt.Sprintf("id-%02d", i), fmt.Sprintf("n-%02d", i)})
	}
	cs = append(cs, candidate{"same", "same"})
	_, err := pick("node", "zz", cs, false)
	if err == nil || !strings.Contains(err.Error(), "n-09 (id-09), and 3 more") || strings.Contains(err.Error(), "n-10") {
		t.Fatalf("%v", err)
	}
	_, err = pick("node", "zz", cs[11:], false)
	if err == nil || !strings.HasSuffix(err.Error(), "known: n-11 (id-11), same") {
		t.Fatalf("%v", err)
	}
}

// TestResolveAgainstAController: names, ids and prefixes resolve against
// what a real controller lists.
func TestResolveAgainstAController(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "mac-a", Capacity: 2}, {Name: "mac-b", Capacity: 2}}})
	ctx := context.Background()
	cl := c.Client
	nodes, err := cl.Nodes(ctx)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("nodes %v %v", nodes, err)
	}
	byName := map[string]string{}
	for _, n := range nodes {
		byName[n.NodeName] = n.NodeID
	}
	if ids, err := resolveNodes(ctx, cl, []string{"mac-b", byName["mac-a"]}); err != nil || strings.Join(ids, ",") != byName["mac-b"]+","+byName["mac-a"] {
		t.Fatalf("nodes by name and id: %v %v", ids, err)
	}
	if ids, err := resolveNodes(ctx, cl, nil); err != nil || ids != nil {
		t.Fatalf("no nodes asked: %v %v", ids, err)
	}
	if _, err := resolveNode(ctx, cl, "mac-c"); err == nil || !strings.Contains(err.Error(), `no node "mac-c"`) {
		t.Fatalf("an unknown node: %v", err)
	}
	g, err := cl.CreateGroup(ctx, "fast", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := resolveGroup(ctx, cl, "fast"); err != nil || id != g.ID {
		t.Fatalf("group by name: %q %v", id, err)
	}
	if id, err := resolveTemplate(ctx, cl, "test-template"); err != nil || id != c.TemplateID {
		t.Fatalf("template by name: %q %v", id, err)
	}
	started, err := cl.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "name": "job-7"})
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{started[0], started[0][:8], "job-7"} {
		if ids, err := resolveInstances(ctx, cl, []string{arg}); err != nil || len(ids) != 1 || ids[0] != started[0] {
			t.Errorf("instance %q: %v %v", arg, ids, err)
		}
	}
	if _, err := resolveInstances(ctx, cl, []string{"nope"}); err == nil {
		t.Fatal("an unknown instance resolved")
	}
}
