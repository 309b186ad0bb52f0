// Package scheduler places Scheduling instances on nodes. Plan is a pure
// function over a store snapshot; Run is the leader-elected loop that commits
// its decisions, re-checking each one inside the commit transaction.
package scheduler

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// Decision is the plan for one waiting instance: a node, or why it waits.
type Decision struct {
	Instance store.InstanceEntry
	NodeID   string // empty when the instance must wait
	Reason   string // human reason when waiting (or failing)
	// Fail: every eligible node already failed this instance.
	Fail bool
}

// Verdict is what the registry catalog says of a template and tag.
type Verdict int

const (
	// Known: the registry has it.
	Known Verdict = iota
	// Absent: the registry said it has not.
	Absent
	// Unconfirmed: not yet known either way (the catalog is asking).
	Unconfirmed
)

// TemplateKnown says whether the registry has template vmid at tag. It must
// not block: a pass does no I/O but etcd's (see controller.Catalog).
type TemplateKnown func(vmid, tag string) Verdict

// Plan decides, in priority order (lower first, then oldest), where each
// Scheduling instance goes. Lower-priority instances may fill capacity a
// higher-priority one cannot use (a different group, or a smaller size).
func Plan(snap store.Snapshot, known TemplateKnown) []Decision {
	used := snap.Usage()
	var pending []store.InstanceEntry
	for _, in := range snap.Instances {
		if in.State == apiv1.StateScheduling && in.NodeID == "" {
			pending = append(pending, in)
		}
	}
	slices.SortStableFunc(pending, func(a, b store.InstanceEntry) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), a.CrTime.Compare(b.CrTime),
			cmp.Compare(a.InstanceID, b.InstanceID))
	})
	groups := map[string]apiv1.Group{}
	for _, g := range snap.Groups {
		groups[g.ID] = g
	}
	// One registry lookup per template+tag and pass, not per waiting instance.
	knownMemo := map[[2]string]Verdict{}
	verdict := func(vmid, tag string) Verdict {
		key := [2]string{vmid, tag}
		ok, seen := knownMemo[key]
		if !seen {
			ok = known(vmid, tag)
			knownMemo[key] = ok
		}
		return ok
	}
	// Candidates are pointers into the snapshot (no copy per candidate),
	// and each instance's fallback chain of node sets is built once per
	// (node, group) asked for, not once per instance.
	ptrs := make([]*store.NodeEntry, len(snap.Nodes))
	for i := range snap.Nodes {
		ptrs[i] = &snap.Nodes[i]
	}
	tierMemo := map[[2]string][]tier{}
	exhausted := map[string]string{} // instance shape -> why none fits
	heaps := map[string]tierHeaps{}  // instance shape and template -> its candidates
	decisions := make([]Decision, 0, len(pending))
	for _, in := range pending {
		d := Decision{Instance: in}
		v := Known
		if known != nil {
			v = verdict(in.VMID, in.Tag)
		}
		switch v {
		case Absent:
			d.Reason = "template not in registry"
		case Unconfirmed:
			d.Reason = "waiting for the registry to confirm the template"
		default:
			key := [2]string{in.Spec.NodeID, in.GroupID}
			ts, ok := tierMemo[key]
			if !ok {
				ts = tiers(in.InstanceRecord, ptrs, groups)
				tierMemo[key] = ts
			}
			// Usage only grows during a pass: once an instance finds no
			// room, every later one of the same shape finds none either.
			class := fmt.Sprintf("%s|%s|%d|%d|%s", in.Spec.NodeID, in.GroupID, in.Spec.VCPU, in.Spec.VRAM, in.Arch)
			if reason, full := exhausted[class]; full && len(in.FailedNodes) == 0 {
				d.Reason = reason
				break
			}
			if len(in.FailedNodes) == 0 && useHeaps {
				// The usual case: the best node from a heap per shape and
				// tier, O(log nodes) instead of a scan of every node.
				hk := class + "|" + in.VMID + "|" + in.Tag
				hs, ok := heaps[hk]
				if !ok {
					hs = newTierHeaps(in.InstanceRecord, ts, used)
					heaps[hk] = hs
				}
				if id := hs.pick(in.Spec, used); id != "" {
					d.NodeID = id
					break
				}
			}
			d.NodeID, d.Reason, d.Fail = placeOne(in.InstanceRecord, ts, used)
			if d.NodeID == "" && !d.Fail && len(in.FailedNodes) == 0 {
				exhausted[class] = d.Reason
			}
		}
		if d.NodeID != "" {
			used[d.NodeID] = used[d.NodeID].Add(in.Spec)
		}
		decisions = append(decisions, d)
	}
	return decisions
}

// tier is a set of candidate nodes tried together, with a name for reasons.
type tier struct {
	label string
	nodes []*store.NodeEntry
}

// tiers lists candidate node sets in fallback order.
func tiers(in store.InstanceRecord, nodes []*store.NodeEntry, groups map[string]apiv1.Group) []tier {
	if in.Spec.NodeID != "" {
		for _, n := range nodes {
			if n.Report.NodeID == in.Spec.NodeID {
				return []tier{{"node " + n.Report.NodeName, []*store.NodeEntry{n}}}
			}
		}
		return []tier{{"node " + in.Spec.NodeID, nil}}
	}
	if in.GroupID == "" {
		return []tier{{"", nodes}}
	}
	var out []tier
	seen := map[string]bool{}
	for id := in.GroupID; id != "" && !seen[id]; id = groups[id].FallbackGroupID {
		seen[id] = true
		label := id
		if g, ok := groups[id]; ok {
			label = g.Name
		}
		t := tier{label: "group " + label}
		for _, n := range nodes {
			if n.InGroup(id) {
				t.nodes = append(t.nodes, n)
			}
		}
		out = append(out, t)
	}
	return out
}

func placeOne(in store.InstanceRecord, ts []tier, used map[string]store.NodeUsage) (string, string, bool) {
	var reasons, failedOn []string
	untried := false
	for _, t := range ts {
		var active, free []*store.NodeEntry
		otherArch := 0
		for _, n := range t.nodes {
			if !n.Alive || n.Drain {
				continue
			}
			if in.Arch != "" && n.Report.HostArch != "" && n.Report.HostArch != in.Arch {
				otherArch++
				continue
			}
			if slices.Contains(in.FailedNodes, n.Report.NodeID) {
				failedOn = append(failedOn, n.Report.NodeName)
				continue
			}
			untried = true
			active = append(active, n)
			if fits(n.NodeRecord, used[n.Report.NodeID], in.Spec) {
				free = append(free, n)
			}
		}
		where := ""
		if t.label != "" {
			where = " in " + t.label
		}
		switch {
		case len(active) == 0 && otherArch > 0:
			reasons = append(reasons, fmt.Sprintf("no active %s node%s", in.Arch, where))
		case len(active) == 0:
			reasons = append(reasons, "no active node"+where)
		case len(free) == 0 && len(active) == 1:
			reasons = append(reasons, fmt.Sprintf("the only active node%s is at capacity", where))
		case len(free) == 0:
			reasons = append(reasons, fmt.Sprintf("all %d nodes%s at capacity", len(active), where))
		default:
			return best(free, in, used).Report.NodeID, "", false
		}
	}
	if !untried && len(failedOn) > 0 {
		return "", fmt.Sprintf("failed on every eligible node (%s): %s", strings.Join(failedOn, ", "),
			strings.TrimSuffix(in.Message, "; placing on another node")), true
	}
	return "", strings.Join(reasons, "; "), false
}

func fits(n store.NodeRecord, u store.NodeUsage, spec apiv1.StartSpec) bool {
	if u.Slots+1 > n.Capacity() {
		return false
	}
	if n.MaxVCPU > 0 && u.VCPU+spec.VCPU > n.MaxVCPU {
		return false
	}
	if n.MaxVRAM > 0 && u.VRAM+spec.VRAM > n.MaxVRAM {
		return false
	}
	return true
}

// best prefers nodes that already hold the template+tag (no pull), then the
// least loaded node, then the lowest id for a stable order.
func best(free []*store.NodeEntry, in store.InstanceRecord, used map[string]store.NodeUsage) *store.NodeEntry {
	holds := func(n *store.NodeEntry) int {
		for _, t := range n.Report.Templates {
			if t.UUID == in.VMID && t.Tag == in.Tag {
				return 0
			}
		}
		return 1
	}
	return slices.MinFunc(free, func(a, b *store.NodeEntry) int {
		return cmp.Or(cmp.Compare(holds(a), holds(b)),
			cmp.Compare(used[a.Report.NodeID].Slots, used[b.Report.NodeID].Slots),
			cmp.Compare(a.Report.NodeID, b.Report.NodeID))
	})
}

// useHeaps turns the heap path on (tests compare it with the scan).
var useHeaps = true

// candidate is a node in a tier's heap, keyed as best orders nodes: holds
// the template first, then the fewest slots used, then the lowest id.
type candidate struct {
	n     *store.NodeEntry
	holds int
	slots int
}

type candHeap []candidate

func (h candHeap) Len() int { return len(h) }
func (h candHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	return cmp.Or(cmp.Compare(a.holds, b.holds), cmp.Compare(a.slots, b.slots),
		cmp.Compare(a.n.Report.NodeID, b.n.Report.NodeID)) < 0
}
func (h candHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *candHeap) Push(x any)   { *h = append(*h, x.(candidate)) }
func (h *candHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// tierHeaps holds, per tier of one instance shape, its eligible nodes.
type tierHeaps []*candHeap

func newTierHeaps(in store.InstanceRecord, ts []tier, used map[string]store.NodeUsage) tierHeaps {
	out := make(tierHeaps, len(ts))
	for i, t := range ts {
		h := &candHeap{}
		for _, n := range t.nodes {
			if !n.Alive || n.Drain || (in.Arch != "" && n.Report.HostArch != "" && n.Report.HostArch != in.Arch) {
				continue
			}
			holds := 1
			for _, tp := range n.Report.Templates {
				if tp.UUID == in.VMID && tp.Tag == in.Tag {
					holds = 0
					break
				}
			}
			*h = append(*h, candidate{n, holds, used[n.Report.NodeID].Slots})
		}
		heap.Init(h)
		out[i] = h
	}
	return out
}

// pick answers the node best would choose: in the first tier with room,
// the least node by (holds, slots used, id). Usage only grows during a
// pass, so a stale key is only ever too small: it is refreshed when it
// comes to the top, and a node that cannot take this shape now never can
// again in this pass.
func (hs tierHeaps) pick(spec apiv1.StartSpec, used map[string]store.NodeUsage) string {
	for _, h := range hs {
		for h.Len() > 0 {
			top := &(*h)[0]
			u := used[top.n.Report.NodeID]
			if u.Slots != top.slots {
				top.slots = u.Slots
				heap.Fix(h, 0)
				continue
			}
			if fits(top.n.NodeRecord, u, spec) {
				return top.n.Report.NodeID
			}
			heap.Pop(h)
		}
	}
	return ""
}
