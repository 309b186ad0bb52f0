package cli

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/corral-build/corral/client"
)

// What people type where an id is asked: a node, group or template by id
// or name, an instance by id, unique id prefix (as the dashboard shows
// them) or unique name. An unknown or ambiguous one fails naming what was
// not found and the candidates.

type candidate struct{ id, name string }

var fullID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// pick finds arg among cands: an exact id, then a unique name, then (with
// prefixes) a unique id prefix.
func pick(kind, arg string, cands []candidate, prefixes bool) (string, error) {
	var byName, byPrefix []candidate
	for _, c := range cands {
		switch {
		case c.id == arg:
			return c.id, nil
		case c.name == arg && arg != "":
			byName = append(byName, c)
		case prefixes && len(arg) >= 4 && strings.HasPrefix(c.id, arg):
			byPrefix = append(byPrefix, c)
		}
	}
	for _, found := range [][]candidate{byName, byPrefix} {
		switch {
		case len(found) == 1:
			return found[0].id, nil
		case len(found) > 1:
			return "", fmt.Errorf("%s %q is ambiguous: %s; give the id", kind, arg, list(found, 10))
		}
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("no %s %q: there are none", kind, arg)
	}
	return "", fmt.Errorf("no %s %q; known: %s", kind, arg, list(cands, 10))
}

func list(cs []candidate, max int) string {
	var parts []string
	for i, c := range cs {
		if i == max {
			parts = append(parts, fmt.Sprintf("and %d more", len(cs)-max))
			break
		}
		if c.name != "" && c.name != c.id {
			parts = append(parts, fmt.Sprintf("%s (%s)", c.name, c.id))
		} else {
			parts = append(parts, c.id)
		}
	}
	return strings.Join(parts, ", ")
}

func resolveNode(ctx context.Context, cl *client.Controller, arg string) (string, error) {
	ids, err := resolveNodes(ctx, cl, []string{arg})
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// resolveNodes resolves each argument against one list of the nodes.
func resolveNodes(ctx context.Context, cl *client.Controller, args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var cs []candidate
	for _, n := range nodes {
		cs = append(cs, candidate{n.NodeID, n.NodeName})
	}
	return pickAll("node", args, cs, false)
}

// pickAll is pick for each argument.
func pickAll(kind string, args []string, cs []candidate, prefixes bool) ([]string, error) {
	var ids []string
	for _, a := range args {
		id, err := pick(kind, a, cs, prefixes)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func resolveGroup(ctx context.Context, cl *client.Controller, arg string) (string, error) {
	groups, err := cl.Groups(ctx)
	if err != nil {
		return "", err
	}
	var cs []candidate
	for _, g := range groups {
		cs = append(cs, candidate{g.ID, g.Name})
	}
	return pick("group", arg, cs, false)
}

func resolveTemplate(ctx context.Context, cl *client.Controller, arg string) (string, error) {
	ts, err := cl.Templates(ctx)
	if err != nil {
		return "", err
	}
	var cs []candidate
	for _, t := range ts {
		cs = append(cs, candidate{t.ID, t.Name})
	}
	return pick("template", arg, cs, false)
}

func resolveInstances(ctx context.Context, cl *client.Controller, args []string) ([]string, error) {
	if !slices.ContainsFunc(args, func(a string) bool { return !fullID.MatchString(a) }) {
		return args, nil // whole ids: no list of the cloud's instances needed
	}
	items, err := cl.Instances(ctx, "")
	if err != nil {
		return nil, err
	}
	var cs []candidate
	for _, it := range items {
		cs = append(cs, candidate{it.InstanceID, it.VM.Name})
	}
	return pickAll("instance", args, cs, true)
}
