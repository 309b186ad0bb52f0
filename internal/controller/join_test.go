package controller_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
)

func joinReport(id string) apiv1.NodeReport {
	return apiv1.NodeReport{NodeID: id, NodeName: "mac-" + id, Capacity: 2, Driver: "synthetic", Templates: []apiv1.NodeTemplate{}}
}

// TestJoinTokenDoesNotTakeOverANode: the join token only creates nodes. A
// holder of it joined under a running node's id, got a credential for it,
// read its instances and forged their status, and the real node was
// refused for good. Now a registered node re-joins only with its own
// credential (or after a disjoin), and a refused join changes nothing.
func TestJoinTokenDoesNotTakeOverANode(t *testing.T) {
	ctx := context.Background()
	_, st, svc := newService(t, nil)
	first, err := svc.Join(ctx, apiv1.JoinRequest{Report: joinReport("victim")})
	if err != nil {
		t.Fatal(err)
	}
	before, err := st.GetNode(ctx, "victim")
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{
		"no credential":            "",
		"another node's":           "other." + strings.Repeat("a", 64),
		"a wrong secret":           "victim." + strings.Repeat("a", 64),
		"the credential, no id":    strings.TrimPrefix(first.NodeToken, "victim."),
		"the join token as secret": "victim.test-token",
	} {
		evil := joinReport("victim")
		evil.NodeName, evil.IPAddress = "attacker", "203.0.113.9"
		_, err := svc.Join(ctx, apiv1.JoinRequest{Report: evil, NodeToken: tok})
		var denied *controller.NodeIdentityError
		if !errors.As(err, &denied) {
			t.Errorf("%s: join under a registered node's id: %v, want a NodeIdentityError", name, err)
		}
	}
	after, err := st.GetNode(ctx, "victim")
	if err != nil {
		t.Fatal(err)
	}
	if after.CredentialHash != before.CredentialHash || after.LeaseID != before.LeaseID || after.Report.NodeName != "mac-victim" {
		t.Fatalf("a refused join changed the node: %+v", after)
	}
	if id, err := svc.AuthenticateNode(ctx, first.NodeToken); err != nil || id != "victim" {
		t.Fatalf("the real node's credential after refused joins: %q %v", id, err)
	}

	// The node itself re-joins with its credential; the old one is then void.
	second, err := svc.Join(ctx, apiv1.JoinRequest{Report: joinReport("victim"), NodeToken: first.NodeToken})
	if err != nil {
		t.Fatalf("re-join with the node's own credential: %v", err)
	}
	if _, err := svc.AuthenticateNode(ctx, first.NodeToken); !errors.Is(err, controller.ErrBadToken) {
		t.Errorf("the replaced credential: %v, want ErrBadToken", err)
	}
	if _, err := svc.AuthenticateNode(ctx, second.NodeToken); err != nil {
		t.Errorf("the new credential: %v", err)
	}

	// After an administrator's disjoin the id is free again; the
	// disjoined node's own credential hears "disjoined", a stranger 401.
	if err := svc.DisjoinNode(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AuthenticateNode(ctx, second.NodeToken); !errors.Is(err, controller.ErrDisjoined) {
		t.Errorf("the disjoined node's credential: %v, want ErrDisjoined", err)
	}
	for _, tok := range []string{"victim." + strings.Repeat("b", 64), "nobody.secret", "x.y"} {
		if _, err := svc.AuthenticateNode(ctx, tok); !errors.Is(err, controller.ErrBadToken) {
			t.Errorf("token %q: %v, want ErrBadToken (401), not disjoined", tok, err)
		}
	}
	if _, err := svc.Join(ctx, apiv1.JoinRequest{Report: joinReport("victim")}); err != nil {
		t.Errorf("join after a disjoin: %v", err)
	}
	if _, err := st.GetNode(ctx, "victim"); err != nil {
		t.Errorf("node after re-join: %v", err)
	}
}

// TestJoinValidatesTheReport: node ids like "a/b", "../x", a space or 5,000
// bytes, and a capacity of 99,999,999 were accepted and stored.
func TestJoinValidatesTheReport(t *testing.T) {
	ctx := context.Background()
	_, st, svc := newService(t, nil)
	for _, tc := range []struct {
		field string
		edit  func(*apiv1.NodeReport)
	}{
		{"report.node_id", func(r *apiv1.NodeReport) { r.NodeID = "" }},
		{"report.node_id", func(r *apiv1.NodeReport) { r.NodeID = "a/b" }},
		{"report.node_id", func(r *apiv1.NodeReport) { r.NodeID = "../x" }},
		{"report.node_id", func(r *apiv1.NodeReport) { r.NodeID = " " }},
		{"report.node_id", func(r *apiv1.NodeReport) { r.NodeID = "a..b" }},
		{"report.node_id", func(r *apiv1.NodeReport) { r.NodeID = strings.Repeat("a", 5000) }},
		{"report.node_id", func(r *apiv1.NodeReport) { r.NodeID = "-x" }},
		{"report.node_name", func(r *apiv1.NodeReport) { r.NodeName = " " }},
		{"report.node_name", func(r *apiv1.NodeReport) { r.NodeName = "a\nb" }},
		{"report.node_name", func(r *apiv1.NodeReport) { r.NodeName = strings.Repeat("n", 257) }},
		{"report.capacity", func(r *apiv1.NodeReport) { r.Capacity = 99999999 }},
		{"report.capacity", func(r *apiv1.NodeReport) { r.Capacity = -1 }},
		{"report.cpu_count", func(r *apiv1.NodeReport) { r.CPUCount = 1 << 20 }},
		{"report.ram_mb", func(r *apiv1.NodeReport) { r.RAMMB = -5 }},
		{"report.groups", func(r *apiv1.NodeReport) { r.Groups = make([]string, 65) }},
		{"report.groups", func(r *apiv1.NodeReport) { r.Groups = []string{"ok", "\x00"} }},
		{"report.ip_address", func(r *apiv1.NodeReport) { r.IPAddress = "1.2.3.4\r\nX: y" }},
		{"report.templates", func(r *apiv1.NodeReport) {
			r.Templates = []apiv1.NodeTemplate{{UUID: strings.Repeat("u", 300)}}
		}},
	} {
		r := joinReport("n1")
		tc.edit(&r)
		_, err := svc.Join(ctx, apiv1.JoinRequest{Report: r})
		var fe *apiv1.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("report %+v: %v, want a FAIL naming %s", r, err, tc.field)
		}
	}
	nodes, err := st.ListNodes(ctx)
	if err != nil || len(nodes) != 0 {
		t.Fatalf("refused joins stored %d nodes (%v)", len(nodes), err)
	}
	// The limits themselves are fine.
	r := joinReport("Mac-mini_07.lab")
	r.Capacity, r.NodeName = controller.MaxNodeCapacity, strings.Repeat("n", controller.MaxNodeNameLen)
	if _, err := svc.Join(ctx, apiv1.JoinRequest{Report: r}); err != nil {
		t.Errorf("a report at the limits: %v", err)
	}
	// A report after the join is held to the same bounds.
	r.Capacity = controller.MaxNodeCapacity + 1
	var fe *apiv1.FieldError
	if err := svc.UpdateReport(ctx, r); !errors.As(err, &fe) || fe.Field != "report.capacity" {
		t.Errorf("report over the capacity bound: %v", err)
	}
	if n, _ := st.GetNode(ctx, r.NodeID); n.Report.Capacity != controller.MaxNodeCapacity {
		t.Errorf("capacity stored %d", n.Report.Capacity)
	}
}

// TestRotatedJoinTokenStopsJoinsAtOnce: a rotated join token stops new
// joins at once, on every controller of the cloud (it is read from etcd
// at each join, never from a cache or the view).
func TestRotatedJoinTokenStopsJoinsAtOnce(t *testing.T) {
	ctx := context.Background()
	_, st, svc := newService(t, nil)
	other := controller.New(st, nil, controller.Config{}, nil)
	old, err := svc.RotateJoinToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.AuthorizeNode(ctx, old); err != nil {
		t.Fatalf("the join token on another controller: %v", err)
	}
	fresh, err := svc.RotateJoinToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*controller.Service{svc, other} {
		if err := s.AuthorizeNode(ctx, old); !errors.Is(err, controller.ErrBadToken) {
			t.Errorf("the rotated-out token: %v, want ErrBadToken", err)
		}
		if err := s.AuthorizeNode(ctx, fresh); err != nil {
			t.Errorf("the new token: %v", err)
		}
	}
}
