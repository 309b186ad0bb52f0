package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

type nodeSpec struct {
	id       string
	capacity int
	groups   []string
	alive    bool
	drain    bool
	arch     string
	holds    string // template tag held
	maxVRAM  int
}

func mkNode(n nodeSpec) store.NodeEntry {
	arch := n.arch
	if arch == "" {
		arch = apiv1.ArchARM64
	}
	rec := store.NodeRecord{Report: apiv1.NodeReport{NodeID: n.id, NodeName: n.id, Capacity: n.capacity, HostArch: arch},
		Groups: n.groups, Drain: n.drain}
	if n.holds != "" {
		rec.Report.Templates = []apiv1.NodeTemplate{{UUID: "tmpl", Tag: n.holds}}
	}
	rec.MaxVRAM = n.maxVRAM
	return store.NodeEntry{NodeRecord: rec, Alive: n.alive}
}

func mkInstance(id string, prio int, age time.Duration, mods ...func(*store.InstanceRecord)) store.InstanceEntry {
	r := store.InstanceRecord{Instance: apiv1.Instance{InstanceID: id, State: apiv1.StateScheduling, VMID: "tmpl",
		Tag: "v1", Priority: prio, CrTime: time.Unix(1e9, 0).Add(-age), Arch: apiv1.ArchARM64}}
	for _, m := range mods {
		m(&r)
	}
	return store.InstanceEntry{InstanceRecord: r}
}

func inGroup(g string) func(*store.InstanceRecord) {
	return func(r *store.InstanceRecord) { r.GroupID = g }
}

func running(node string) func(*store.InstanceRecord) {
	return func(r *store.InstanceRecord) { r.State, r.NodeID, r.SlotHeld = apiv1.StateStarted, node, true }
}

func TestPlan(t *testing.T) {
	groups := []apiv1.Group{
		{ID: "ga", Name: "fast"},
		{ID: "gb", Name: "slow", FallbackGroupID: "ga"},
		{ID: "loop1", Name: "loop1", FallbackGroupID: "loop2"},
		{ID: "loop2", Name: "loop2", FallbackGroupID: "loop1"},
	}
	tests := []struct {
		name      string
		nodes     []nodeSpec
		instances []store.InstanceEntry
		want      map[string]string // instance -> node, or "wait: reason"
	}{
		{
			name:      "no nodes",
			instances: []store.InstanceEntry{mkInstance("i1", 1000, 0)},
			want:      map[string]string{"i1": "wait: no active node"},
		},
		{
			name:      "priority beats age when one slot is free",
			nodes:     []nodeSpec{{id: "n1", capacity: 1, alive: true}},
			instances: []store.InstanceEntry{mkInstance("old-low", 5000, time.Hour), mkInstance("new-high", 1, 0)},
			want:      map[string]string{"new-high": "n1", "old-low": "wait: the only active node is at capacity"},
		},
		{
			name:      "age breaks priority ties",
			nodes:     []nodeSpec{{id: "n1", capacity: 1, alive: true}},
			instances: []store.InstanceEntry{mkInstance("young", 10, 0), mkInstance("old", 10, time.Minute)},
			want:      map[string]string{"old": "n1", "young": "wait: the only active node is at capacity"},
		},
		{
			name:  "running instances use capacity",
			nodes: []nodeSpec{{id: "n1", capacity: 2, alive: true}, {id: "n2", capacity: 1, alive: true}},
			instances: []store.InstanceEntry{
				mkInstance("r1", 1, 0, running("n1")), mkInstance("r2", 1, 0, running("n1")), mkInstance("r3", 1, 0, running("n2")),
				mkInstance("i1", 1000, 0),
			},
			want: map[string]string{"i1": "wait: all 2 nodes at capacity"},
		},
		{
			name:      "template locality wins over load",
			nodes:     []nodeSpec{{id: "n1", capacity: 5, alive: true}, {id: "n2", capacity: 5, alive: true, holds: "v1"}},
			instances: []store.InstanceEntry{mkInstance("r", 1, 0, running("n2")), mkInstance("i1", 1000, 0)},
			want:      map[string]string{"i1": "n2"},
		},
		{
			name:      "least loaded without locality",
			nodes:     []nodeSpec{{id: "n1", capacity: 5, alive: true}, {id: "n2", capacity: 5, alive: true}},
			instances: []store.InstanceEntry{mkInstance("r", 1, 0, running("n1")), mkInstance("i1", 1000, 0)},
			want:      map[string]string{"i1": "n2"},
		},
		{
			name: "group members only, then fallback",
			nodes: []nodeSpec{
				{id: "fast1", capacity: 1, groups: []string{"ga"}, alive: true},
				{id: "slow1", capacity: 1, groups: []string{"gb"}, alive: true},
				{id: "other", capacity: 9, alive: true},
			},
			instances: []store.InstanceEntry{
				mkInstance("s1", 1, time.Hour, inGroup("gb")), mkInstance("s2", 2, time.Hour, inGroup("gb")),
				mkInstance("s3", 3, time.Hour, inGroup("gb")),
			},
			want: map[string]string{"s1": "slow1", "s2": "fast1",
				"s3": "wait: the only active node in group slow is at capacity; the only active node in group fast is at capacity"},
		},
		{
			name:      "fallback cycles terminate",
			nodes:     []nodeSpec{{id: "n1", capacity: 1, alive: true}},
			instances: []store.InstanceEntry{mkInstance("i1", 1, 0, inGroup("loop1"))},
			want:      map[string]string{"i1": "wait: no active node in group loop1; no active node in group loop2"},
		},
		{
			name:      "offline and draining nodes take nothing",
			nodes:     []nodeSpec{{id: "off", capacity: 4, alive: false}, {id: "drain", capacity: 4, alive: true, drain: true}},
			instances: []store.InstanceEntry{mkInstance("i1", 1, 0)},
			want:      map[string]string{"i1": "wait: no active node"},
		},
		{
			name:      "arch must match",
			nodes:     []nodeSpec{{id: "intel", capacity: 4, alive: true, arch: apiv1.ArchAMD64}},
			instances: []store.InstanceEntry{mkInstance("i1", 1, 0)},
			want:      map[string]string{"i1": "wait: no active arm64 node"},
		},
		{
			name:  "pinned node",
			nodes: []nodeSpec{{id: "n1", capacity: 4, alive: true}, {id: "n2", capacity: 4, alive: true}},
			instances: []store.InstanceEntry{mkInstance("i1", 1, 0, func(r *store.InstanceRecord) { r.Spec.NodeID = "n2" }),
				mkInstance("i2", 1, 0, func(r *store.InstanceRecord) { r.Spec.NodeID = "gone" })},
			want: map[string]string{"i1": "n2", "i2": "wait: no active node in node gone"},
		},
		{
			name:  "vcpu limit",
			nodes: []nodeSpec{{id: "n1", capacity: 10, alive: true}},
			instances: []store.InstanceEntry{mkInstance("big", 1, 0, func(r *store.InstanceRecord) { r.Spec.VCPU = 8 }),
				mkInstance("small", 2, 0, func(r *store.InstanceRecord) { r.Spec.VCPU = 2 })},
			want: map[string]string{"big": "wait: the only active node is at capacity", "small": "n1"},
		},
		{
			// What runs counts: 8 of 16 used, so 12 more do not fit and 8 fit exactly.
			name:  "vram limit",
			nodes: []nodeSpec{{id: "n1", capacity: 10, alive: true, maxVRAM: 16}},
			instances: []store.InstanceEntry{
				mkInstance("r", 1, 0, running("n1"), func(r *store.InstanceRecord) { r.Spec.VRAM = 8 }),
				mkInstance("big", 1, 0, func(r *store.InstanceRecord) { r.Spec.VRAM = 12 }),
				mkInstance("exact", 2, 0, func(r *store.InstanceRecord) { r.Spec.VRAM = 8 })},
			want: map[string]string{"big": "wait: the only active node is at capacity", "exact": "n1"},
		},
		{
			// No max_vcpu or max_vram: only slots bound what a node takes.
			name:  "no resource limits",
			nodes: []nodeSpec{{id: "n1", capacity: 2, alive: true}},
			instances: []store.InstanceEntry{
				mkInstance("huge", 1, 0, func(r *store.InstanceRecord) { r.Spec.VRAM, r.Spec.VCPU = 1<<20, 512 })},
			want: map[string]string{"huge": "n1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := store.Snapshot{Groups: groups, Instances: tc.instances}
			for _, n := range tc.nodes {
				e := mkNode(n)
				if n.id == "n1" && tc.name == "vcpu limit" {
					e.MaxVCPU = 6
				}
				snap.Nodes = append(snap.Nodes, e)
			}
			got := map[string]string{}
			for _, d := range Plan(snap, nil) {
				if d.NodeID != "" {
					got[d.Instance.InstanceID] = d.NodeID
				} else {
					got[d.Instance.InstanceID] = "wait: " + d.Reason
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for id, want := range tc.want {
				if got[id] != want {
					t.Errorf("%s: got %q, want %q", id, got[id], want)
				}
			}
		})
	}
}

func TestPlanAvoidsNodesThatFailed(t *testing.T) {
	failedOn := func(ids ...string) func(*store.InstanceRecord) {
		return func(r *store.InstanceRecord) {
			r.FailedNodes, r.Message = ids, "pull failed on node n1: boom; placing on another node"
		}
	}
	nodes := []store.NodeEntry{mkNode(nodeSpec{id: "n1", capacity: 4, alive: true}), mkNode(nodeSpec{id: "n2", capacity: 4, alive: true})}
	d := Plan(store.Snapshot{Nodes: nodes, Instances: []store.InstanceEntry{mkInstance("i1", 1, 0, failedOn("n1"))}}, nil)
	if d[0].NodeID != "n2" {
		t.Fatalf("after failing on n1: %+v", d[0])
	}
	d = Plan(store.Snapshot{Nodes: nodes, Instances: []store.InstanceEntry{mkInstance("i1", 1, 0, failedOn("n1", "n2"))}}, nil)
	if !d[0].Fail || d[0].Reason != "failed on every eligible node (n1, n2): pull failed on node n1: boom" {
		t.Fatalf("after failing everywhere: %+v", d[0])
	}
}

func TestPlanUnknownTemplate(t *testing.T) {
	snap := store.Snapshot{Nodes: []store.NodeEntry{mkNode(nodeSpec{id: "n1", capacity: 1, alive: true})},
		Instances: []store.InstanceEntry{mkInstance("i1", 1, 0)}}
	d := Plan(snap, func(string, string) Verdict { return Absent })
	if d[0].NodeID != "" || d[0].Reason != "template not in registry" {
		t.Fatalf("got %+v", d[0])
	}
	d = Plan(snap, func(string, string) Verdict { return Unconfirmed })
	if d[0].NodeID != "" || d[0].Reason != "waiting for the registry to confirm the template" {
		t.Fatalf("unconfirmed: got %+v", d[0])
	}
}

// TestPlanAsksTheRegistryOncePerTemplate: a pass with many waiting instances
// of one template+tag makes one registry lookup, not one per instance.
func TestPlanAsksTheRegistryOncePerTemplate(t *testing.T) {
	snap := store.Snapshot{Nodes: []store.NodeEntry{mkNode(nodeSpec{id: "n1", capacity: 100, alive: true})}}
	for i := range 50 {
		snap.Instances = append(snap.Instances, mkInstance(fmt.Sprint("i", i), 1, 0))
	}
	calls := 0
	d := Plan(snap, func(string, string) Verdict { calls++; return Known })
	if calls != 1 || len(d) != 50 || d[49].NodeID != "n1" {
		t.Fatalf("%d lookups for 50 instances of one template (decisions %d)", calls, len(d))
	}
}

// TestPlanHeapsMatchTheScan: on random clouds (groups with fallbacks, drained
// and offline nodes, other arches, vCPU limits, held templates, failed
// nodes, running instances), the heap path places every instance exactly
// where the scan of every node does, with the same reasons.
func TestPlanHeapsMatchTheScan(t *testing.T) {
	for seed := range int64(300) {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		groups := []apiv1.Group{{ID: "g0", Name: "g0"}, {ID: "g1", Name: "g1", FallbackGroupID: "g0"}, {ID: "g2", Name: "g2", FallbackGroupID: "g1"}}
		snap := store.Snapshot{Groups: groups}
		nodes := 1 + rng.IntN(12)
		for i := range nodes {
			n := mkNode(nodeSpec{id: fmt.Sprintf("n%02d", i), capacity: rng.IntN(4), groups: []string{groups[rng.IntN(3)].ID},
				alive: rng.IntN(6) > 0, drain: rng.IntN(6) == 0, arch: []string{apiv1.ArchARM64, apiv1.ArchAMD64}[rng.IntN(4)/3],
				holds: []string{"", "v1", "v2"}[rng.IntN(3)]})
			if rng.IntN(4) == 0 {
				n.MaxVCPU = 4
			}
			snap.Nodes = append(snap.Nodes, n)
		}
		for i := range rng.IntN(8) {
			node := snap.Nodes[rng.IntN(nodes)].Report.NodeID
			snap.Instances = append(snap.Instances, mkInstance(fmt.Sprintf("run%d", i), 1000, 0, running(node)))
		}
		for i := range 1 + rng.IntN(30) {
			mods := []func(*store.InstanceRecord){func(r *store.InstanceRecord) {
				r.Tag = []string{"v1", "v2"}[rng.IntN(2)]
				r.Spec.VCPU = rng.IntN(3) * 2
				if rng.IntN(3) == 0 {
					r.GroupID = groups[rng.IntN(3)].ID
				}
				if rng.IntN(10) == 0 {
					r.FailedNodes = []string{snap.Nodes[rng.IntN(nodes)].Report.NodeID}
				}
				if rng.IntN(10) == 0 {
					r.Spec.NodeID = snap.Nodes[rng.IntN(nodes)].Report.NodeID
				}
			}}
			snap.Instances = append(snap.Instances, mkInstance(fmt.Sprintf("i%02d", i), 1+rng.IntN(3), time.Duration(rng.IntN(100))*time.Second, mods...))
		}
		useHeaps = false
		want := Plan(snap, nil)
		useHeaps = true
		got := Plan(snap, nil)
		for i := range want {
			w, g := want[i], got[i]
			if w.Instance.InstanceID != g.Instance.InstanceID || w.NodeID != g.NodeID || w.Reason != g.Reason || w.Fail != g.Fail {
				t.Fatalf("seed %d, instance %s: heaps gave (%q %q %v), the scan (%q %q %v)", seed, w.Instance.InstanceID,
					g.NodeID, g.Reason, g.Fail, w.NodeID, w.Reason, w.Fail)
			}
		}
	}
}

// BenchmarkPlan: 1000 nodes of 11 slots, 10,000 waiting instances.
func BenchmarkPlan(b *testing.B) {
	snap := store.Snapshot{}
	for i := range 1000 {
		snap.Nodes = append(snap.Nodes, mkNode(nodeSpec{id: fmt.Sprintf("n%04d", i), capacity: 11, alive: true, holds: "v1"}))
	}
	for i := range 10000 {
		snap.Instances = append(snap.Instances, mkInstance(fmt.Sprintf("i%05d", i), 1000, time.Duration(i)*time.Millisecond))
	}
	for _, heaps := range []bool{false, true} {
		b.Run(fmt.Sprint("heaps=", heaps), func(b *testing.B) {
			useHeaps = heaps
			defer func() { useHeaps = true }()
			for range b.N {
				placed := 0
				for _, d := range Plan(snap, nil) {
					if d.NodeID != "" {
						placed++
					}
				}
				if placed != 10000 {
					b.Fatalf("placed %d", placed)
				}
			}
		})
	}
}
