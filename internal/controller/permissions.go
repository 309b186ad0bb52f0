package controller

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

var permissionGroupName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ListPermissionGroups returns every permission group, sorted by name.
func (s *Service) ListPermissionGroups(ctx context.Context) ([]apiv1.PermissionGroup, error) {
	groups, err := s.st.ListPermissionGroups(ctx)
	slices.SortFunc(groups, func(a, b apiv1.PermissionGroup) int { return strings.Compare(a.Name, b.Name) })
	return groups, err
}

// PutPermissionGroup validates and stores a permission group: create makes a
// new one (FAIL if the name exists), otherwise an existing one is replaced.
func (s *Service) PutPermissionGroup(ctx context.Context, g apiv1.PermissionGroup, create bool) (apiv1.PermissionGroup, error) {
	if !permissionGroupName.MatchString(g.Name) {
		return g, fieldErr("name", "want 1-64 letters, digits, '.', '_' or '-', got %q", g.Name)
	}
	for _, p := range g.Permissions {
		if !slices.Contains(apiv1.Permissions, p) {
			return g, fieldErr("permissions", "unknown permission %q (want %s)", p, strings.Join(apiv1.Permissions, ", "))
		}
	}
	for _, m := range g.Members {
		kind, name, _ := strings.Cut(m, ":")
		if (kind != "key" && kind != "cert" && kind != "cert-group") || name == "" {
			return g, fieldErr("members", "%q: want key:<api key id>, cert:<common name> or cert-group:<organization>", m)
		}
	}
	g.Permissions, g.Members = nonNil(g.Permissions), nonNil(g.Members)
	err := s.st.PutPermissionGroup(ctx, g, create)
	if errors.Is(err, store.ErrExists) {
		return g, fieldErr("name", "a permission group named %q exists", g.Name)
	}
	return g, notFound(err)
}

// DeletePermissionGroup removes a permission group.
func (s *Service) DeletePermissionGroup(ctx context.Context, name string) error {
	if name == "" {
		return fieldErr("name", "required")
	}
	return notFound(s.st.DeletePermissionGroup(ctx, name))
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
