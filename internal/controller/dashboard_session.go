package controller

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/corral-build/corral/internal/store"
)

// DashboardSessionTTL is how long a dashboard login lasts.
const DashboardSessionTTL = 12 * time.Hour

// AuthEnabled reports whether callers must authenticate.
func (s *Service) AuthEnabled() bool { return s.cfg.Auth.Enabled }

// DashboardLogin checks a root token (or, when token is a session from an
// API-key login, that session) and opens a dashboard session for its
// caller. The answer is the session's secret for the cookie; etcd keeps
// only its hash, with the caller, and drops it after DashboardSessionTTL.
func (s *Service) DashboardLogin(ctx context.Context, rootToken, apiKeySession string) (string, error) {
	var header string
	switch {
	case rootToken != "":
		header = "Basic " + base64.StdEncoding.EncodeToString([]byte("root:"+rootToken))
	case apiKeySession != "":
		header = "Bearer " + apiKeySession
	default:
		return "", ErrAuth
	}
	id, err := s.Authenticate(ctx, header, nil)
	if err != nil {
		return "", err
	}
	secret := randomHex(32)
	rec, _ := json.Marshal(id)
	if err := s.st.PutExpiring(ctx, "auth/dashboard/"+secretHash(secret), string(rec), DashboardSessionTTL); err != nil {
		return "", fmt.Errorf("store dashboard session: %w", err)
	}
	return secret, nil
}

// DashboardSession is the caller of a dashboard session (ErrAuth when it
// is unknown or expired).
func (s *Service) DashboardSession(ctx context.Context, secret string) (Identity, error) {
	if !s.cfg.Auth.Enabled {
		return Identity{Root: true}, nil
	}
	if secret == "" || len(secret) > 128 {
		return Identity{}, ErrAuth
	}
	v, err := s.st.Value(ctx, "auth/dashboard/"+secretHash(secret))
	if errors.Is(err, store.ErrNotFound) {
		return Identity{}, ErrAuth
	}
	if err != nil {
		return Identity{}, err
	}
	var id Identity
	if err := json.Unmarshal([]byte(v), &id); err != nil {
		return Identity{}, ErrAuth
	}
	return id, nil
}

// DashboardLogout ends a dashboard session.
func (s *Service) DashboardLogout(ctx context.Context, secret string) error {
	_, err := s.st.TakeExpiring(ctx, "auth/dashboard/"+secretHash(secret))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
