package controller

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/corral-build/corral/internal/store"
	"slices"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/regauth"
)

// ErrRegistryTokensOff: the controller has no secret to sign registry
// tokens with.
var ErrRegistryTokensOff = errors.New("registry tokens are off: start the controller with --root-token or --registry-token-secret (the registry's --token-secret)")

// RegistryKey is the key registry tokens are signed with (the zero Key when
// neither a token secret nor a root token is set).
func (s *Service) RegistryKey() regauth.Key { return s.regKey }

// RegistryToken issues a registry token for whoever header (or cert)
// authenticates: users get pull with the view permission and push/delete
// with manage_templates; nodes get pull. scopes are the token spec's
// ("repository:<name>:pull,push"); what the caller may not do is left out
// of the grant, as the spec says, rather than refused.
func (s *Service) RegistryToken(ctx context.Context, header string, cert *x509.Certificate, scopes []string) (apiv1.RegistryToken, error) {
	if !s.regKey.Valid() {
		return apiv1.RegistryToken{}, ErrRegistryTokensOff
	}
	asked, err := regauth.ParseScopes(scopes)
	if err != nil {
		return apiv1.RegistryToken{}, fieldErr("scope", "%v", err)
	}
	subject, allowed, err := s.registryCaller(ctx, header, cert)
	if err != nil {
		return apiv1.RegistryToken{}, err
	}
	granted := regauth.Grant(asked, allowed)
	if node, ok := strings.CutPrefix(subject, "node:"); ok {
		if granted, err = s.narrowNodePush(ctx, node, granted); err != nil {
			return apiv1.RegistryToken{}, err
		}
	}
	tok, c, err := s.regKey.Issue("corral-controller", subject, granted, regauth.DefaultTTL, time.Now())
	if err != nil {
		return apiv1.RegistryToken{}, err
	}
	return regauth.Response(tok, c), nil
}

// tokenCaller renews a registry token an API key was issued (the registry
// asks, to learn whether the key still holds): the key must still exist,
// and it gets what its permissions allow now.
func (s *Service) tokenCaller(ctx context.Context, c regauth.Claims) (string, func(string) bool, error) {
	id, ok := strings.CutPrefix(c.Subject, "key:")
	if !ok {
		return "", nil, ErrAuth
	}
	if _, err := s.st.APIKey(ctx, id); errors.Is(err, store.ErrNotFound) {
		return "", nil, ErrAuth
	} else if err != nil {
		return "", nil, err
	}
	return s.identityGrants(ctx, Identity{Subjects: []string{c.Subject}})
}

// registryCaller authenticates a token request. Besides the API's own
// credentials it takes a node's credential (Bearer, or as a Basic password)
// and an API-key session token as a Basic password, which is how `docker
// login`-style clients carry it.
func (s *Service) registryCaller(ctx context.Context, header string, cert *x509.Certificate) (string, func(string) bool, error) {
	if !s.cfg.Auth.Enabled {
		return "anonymous", func(string) bool { return true }, nil
	}
	if tok, ok := strings.CutPrefix(header, "Bearer "); ok && strings.Count(tok, ".") == 2 {
		if c, err := s.regKey.Verify(tok, time.Now()); err == nil {
			return s.tokenCaller(ctx, c)
		}
	}
	user, pass, isBasic := basicAuth(header)
	rootBasic := isBasic && (user == "root" || user == "")
	candidate, _ := strings.CutPrefix(header, "Bearer ")
	if isBasic {
		candidate = pass
	}
	if strings.Contains(candidate, ".") && !rootBasic {
		if id, err := s.AuthenticateNode(ctx, candidate); err == nil {
			// A node pushes only while it has an instance to save
			// (POST /api/v1/image asked it); RegistryToken narrows the
			// push to the templates being saved.
			saves, err := s.st.Saves(ctx, id)
			if err != nil {
				return "", nil, err
			}
			return "node:" + id, func(a string) bool { return a == regauth.Pull || a == regauth.Push && len(saves) > 0 }, nil
		}
	}
	id, err := s.Authenticate(ctx, header, cert)
	if errors.Is(err, ErrAuth) && isBasic && !rootBasic {
		id, err = s.Authenticate(ctx, "Bearer "+pass, nil) // an API key's session token as the password
	}
	if err != nil {
		return "", nil, err
	}
	return s.identityGrants(ctx, id)
}

// identityGrants is what a user's registry token may hold: pull with the
// view permission, push and delete with manage_templates.
func (s *Service) identityGrants(ctx context.Context, id Identity) (string, func(string) bool, error) {
	perms := map[string]error{}
	allowed := func(action string) bool {
		perm := apiv1.PermView
		if action != regauth.Pull {
			perm = apiv1.PermManageTemplates
		}
		if _, ok := perms[perm]; !ok {
			perms[perm] = s.Authorize(ctx, id, perm)
		}
		return perms[perm] == nil
	}
	return id.String(), allowed, nil
}

func basicAuth(header string) (user, pass string, ok bool) {
	raw, found := strings.CutPrefix(header, "Basic ")
	if !found {
		return "", "", false
	}
	dec, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return "", "", false
	}
	user, pass, ok = strings.Cut(string(dec), ":")
	return user, pass, ok
}

// registryAuthHeader mints the controller's own registry credential: every
// action (it proxies template deletes and reverts for permitted users).
func registryAuthHeader(key regauth.Key) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		if !key.Valid() {
			return "", nil
		}
		tok, _, err := key.Issue("corral-controller", "controller",
			[]regauth.Access{{Type: "repository", Name: "*", Actions: []string{"*"}}}, time.Minute, time.Now())
		if err != nil {
			return "", fmt.Errorf("sign registry token: %w", err)
		}
		return "Bearer " + tok, nil
	}
}

// narrowNodePush keeps a node's push grants to the repositories of the
// templates it is saving ("*" is the template API, which has no
// per-repository names).
func (s *Service) narrowNodePush(ctx context.Context, node string, granted []regauth.Access) ([]regauth.Access, error) {
	saves, err := s.st.Saves(ctx, node)
	if err != nil {
		return nil, err
	}
	out := granted[:0]
	for _, a := range granted {
		if a.Name != "*" && !slices.ContainsFunc(saves, func(sv apiv1.ImageSave) bool { return sv.TemplateName == a.Name }) {
			a.Actions = slices.DeleteFunc(slices.Clone(a.Actions), func(x string) bool { return x == regauth.Push })
		}
		if len(a.Actions) > 0 {
			out = append(out, a)
		}
	}
	return out, nil
}
