package controller

import (
	"context"
	"errors"
	"slices"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// ListGroups returns every group, sorted by name.
func (s *Service) ListGroups(ctx context.Context) ([]apiv1.Group, error) {
	groups, err := s.st.ListGroups(ctx)
	slices.SortFunc(groups, func(a, b apiv1.Group) int { return strings.Compare(a.Name, b.Name) })
	return groups, err
}

// CreateGroup validates and stores a new group.
func (s *Service) CreateGroup(ctx context.Context, req apiv1.GroupRequest) (apiv1.Group, error) {
	g := apiv1.Group{ID: apiv1.NewID()}
	if err := s.applyGroup(ctx, &g, req); err != nil {
		return g, err
	}
	if g.Name == "" {
		return g, fieldErr("name", "required")
	}
	return g, s.st.CreateGroup(ctx, g)
}

// UpdateGroup changes a group's name, description or fallback.
func (s *Service) UpdateGroup(ctx context.Context, req apiv1.GroupRequest) (apiv1.Group, error) {
	if req.ID == "" {
		return apiv1.Group{}, fieldErr("id", "required")
	}
	var applyErr error
	g, err := s.st.UpdateGroup(ctx, req.ID, func(cur *apiv1.Group) error {
		applyErr = s.applyGroup(ctx, cur, req)
		return applyErr
	})
	if applyErr != nil {
		return g, applyErr
	}
	return g, notFound(err)
}

func (s *Service) applyGroup(ctx context.Context, g *apiv1.Group, req apiv1.GroupRequest) error {
	if req.Name != nil {
		name := strings.TrimSpace(*req.Name)
		if name == "" {
			return fieldErr("name", "must not be empty")
		}
		groups, err := s.st.ListGroups(ctx)
		if err != nil {
			return err
		}
		for _, other := range groups {
			if other.Name == name && other.ID != g.ID {
				return fieldErr("name", "a group named %q exists", name)
			}
		}
		g.Name = name
	}
	if req.Description != nil {
		g.Description = *req.Description
	}
	if req.FallbackGroupID != nil {
		fb := *req.FallbackGroupID
		if fb == g.ID && fb != "" {
			return fieldErr("fallback_group_id", "a group cannot fall back to itself")
		}
		if fb != "" {
			if _, err := s.st.GetGroup(ctx, fb); errors.Is(err, store.ErrNotFound) {
				return fieldErr("fallback_group_id", "no group with id %q", fb)
			}
		}
		g.FallbackGroupID = fb
	}
	return nil
}

// DeleteGroup removes a group, its node memberships and fallbacks to it.
func (s *Service) DeleteGroup(ctx context.Context, id string) error {
	if id == "" {
		return fieldErr("id", "required")
	}
	if err := s.st.DeleteGroup(ctx, id); err != nil {
		return notFound(err)
	}
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.InGroup(id) {
			_, err := s.st.UpdateNode(ctx, n.Report.NodeID, func(r *store.NodeRecord) error {
				r.Groups = slices.DeleteFunc(r.Groups, func(g string) bool { return g == id })
				return nil
			})
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	groups, err := s.st.ListGroups(ctx)
	if err != nil {
		return err
	}
	for _, g := range groups {
		if g.FallbackGroupID == id {
			if _, err := s.st.UpdateGroup(ctx, g.ID, func(cur *apiv1.Group) error {
				cur.FallbackGroupID = ""
				return nil
			}); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	return nil
}
