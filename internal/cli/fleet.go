package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// nodeVerbs are `corral node <verb>`: managing nodes through a controller.
// Without a verb, `corral node` runs the node agent.
var nodeVerbs = map[string]func(context.Context, []string, io.Writer) error{
	"list": nodeList, "show": nodeShow, "drain": nodeDrain, "undrain": nodeUndrain,
	"set-capacity": nodeSetCapacity, "disjoin": nodeDisjoin,
}

func nodeList(ctx context.Context, args []string, out io.Writer) error {
	cl, c, _, err := vmFlags("node list", "List nodes.\nUsage: corral node list", out, args, nil)
	if err != nil {
		return err
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(out, nodes)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tNAME\tSTATE\tSLOTS\tVCPU\tVRAM(MB)\tCPU\tRAM\tTEMPLATES\tGROUPS")
	for _, n := range nodes {
		var groups []string
		for _, g := range n.Groups {
			groups = append(groups, g.Name)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%.0f%%\t%.0f%%\t%d\t%s\n", n.NodeID, n.NodeName, n.State, n.VMCount, n.Capacity,
			n.VCPUCount, n.VRAM, n.CPUUtil*100, n.RAMUtil*100, len(n.Templates), strings.Join(groups, ","))
	}
	return w.Flush()
}

func nodeShow(ctx context.Context, args []string, out io.Writer) error {
	cl, _, pos, err := vmFlags("node show", "Show one node (JSON).\nUsage: corral node show ID", out, args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral node show ID")
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.NodeID == pos[0] || n.NodeName == pos[0] {
			return printJSON(out, n)
		}
	}
	return fmt.Errorf("no node %q", pos[0])
}

// nodeConfig applies one node/config change to the node named by the only
// positional argument.
func nodeConfig(ctx context.Context, verb, usage string, args []string, out io.Writer, change func(pos []string) (map[string]any, error)) error {
	cl, _, pos, err := vmFlags("node "+verb, usage, out, args, nil)
	if err != nil {
		return err
	}
	req, err := change(pos)
	if err != nil {
		return err
	}
	if req["node_id"], err = resolveNode(ctx, cl, req["node_id"].(string)); err != nil {
		return err
	}
	return cl.ConfigureNode(ctx, req)
}

func nodeDrain(ctx context.Context, args []string, out io.Writer) error {
	return nodeSetDrain(ctx, "drain", "Stop giving a node new instances (running ones finish).", true, args, out)
}

func nodeUndrain(ctx context.Context, args []string, out io.Writer) error {
	return nodeSetDrain(ctx, "undrain", "Give a drained node instances again.", false, args, out)
}

func nodeSetDrain(ctx context.Context, verb, summary string, drain bool, args []string, out io.Writer) error {
	usage := "usage: corral node " + verb + " NODE (id or name)"
	return nodeConfig(ctx, verb, summary+"\n"+usage, args, out, func(pos []string) (map[string]any, error) {
		if len(pos) != 1 {
			return nil, errors.New(usage)
		}
		return map[string]any{"node_id": pos[0], "drain_mode": drain}, nil
	})
}

func nodeSetCapacity(ctx context.Context, args []string, out io.Writer) error {
	return nodeConfig(ctx, "set-capacity", "Set a node's instance slots.\nUsage: corral node set-capacity ID N", args, out,
		func(pos []string) (map[string]any, error) {
			if len(pos) != 2 {
				return nil, errors.New("usage: corral node set-capacity ID N")
			}
			n, err := strconv.Atoi(pos[1])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("capacity %q: want a non-negative integer", pos[1])
			}
			return map[string]any{"node_id": pos[0], "capacity": n}, nil
		})
}

func nodeDisjoin(ctx context.Context, args []string, out io.Writer) error {
	cl, _, pos, err := vmFlags("node disjoin", "Remove a node from the cloud (its agent stops; its instances fail).\nUsage: corral node disjoin ID", out, args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral node disjoin NODE (id or name)")
	}
	id, err := resolveNode(ctx, cl, pos[0])
	if err != nil {
		return err
	}
	return cl.DisjoinNode(ctx, id)
}

// runGroup is `corral group list|create|delete|add|remove`.
func runGroup(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(out, "Usage: corral group <list | create NAME [--description D] [--fallback GROUP] | delete ID | add GROUP NODE... | remove GROUP NODE...> [--controller URL] [--output json]")
		if len(args) > 0 {
			return flag.ErrHelp
		}
		return errors.New("want a verb: list, create, delete, add or remove")
	}
	verb := args[0]
	var description, fallback string
	cl, c, pos, err := vmFlags("group "+verb, "Manage node groups.", out, args[1:], func(f *flags) {
		if verb == "create" {
			f.String(&description, "description", "", "group description")
			f.String(&fallback, "fallback", "", "group id instances fall back to when this one is full")
		}
	})
	if err != nil {
		return err
	}
	switch verb {
	case "list":
		gs, err := cl.Groups(ctx)
		if err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(out, gs)
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "GROUP\tNAME\tFALLBACK\tDESCRIPTION")
		for _, g := range gs {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", g.ID, g.Name, g.FallbackGroupID, g.Description)
		}
		return w.Flush()
	case "create":
		if len(pos) != 1 {
			return errors.New("usage: corral group create NAME [--description D] [--fallback GROUP]")
		}
		if fallback != "" {
			if fallback, err = resolveGroup(ctx, cl, fallback); err != nil {
				return fmt.Errorf("--fallback: %w", err)
			}
		}
		g, err := cl.CreateGroup(ctx, pos[0], description, fallback)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, g.ID)
		return nil
	case "delete":
		if len(pos) != 1 {
			return errors.New("usage: corral group delete GROUP (id or name)")
		}
		id, err := resolveGroup(ctx, cl, pos[0])
		if err != nil {
			return err
		}
		return cl.DeleteGroup(ctx, id)
	case "add", "remove":
		if len(pos) < 2 {
			return fmt.Errorf("usage: corral group %s GROUP NODE... (ids or names)", verb)
		}
		group, err := resolveGroup(ctx, cl, pos[0])
		if err != nil {
			return err
		}
		nodes, err := resolveNodes(ctx, cl, pos[1:])
		if err != nil {
			return err
		}
		if verb == "add" {
			return cl.AddNodesToGroup(ctx, group, nodes...)
		}
		return cl.RemoveNodesFromGroup(ctx, group, nodes...)
	}
	return fmt.Errorf("unknown verb %q: want list, create, delete, add or remove", verb)
}
