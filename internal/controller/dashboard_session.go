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
	rec := dashboardSession{Identity: id}
	if rootToken != "" {
		rec.RootTokenHash = secretHash(rootToken)
	} else if sess, ok := decodeSession(apiKeySession); ok {
		rec.KeySession = store.KeySessionRef(sess.UserName, sess.SessionID)
	}
	secret := randomHex(32)
	b, _ := json.Marshal(rec)
	if err := s.st.PutDashboardSession(ctx, secretHash(secret), string(b), DashboardSessionTTL); err != nil {
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
	v, err := s.st.DashboardSession(ctx, secretHash(secret))
	if errors.Is(err, store.ErrNotFound) {
		return Identity{}, ErrAuth
	}
	if err != nil {
		return Identity{}, err
	}
	var rec dashboardSession
	if err := json.Unmarshal([]byte(v), &rec); err != nil {
		return Identity{}, ErrAuth
	}
	// A session lives no longer than what it was opened with: the API
	// key's session (gone when the key is deleted or its TTL ends) or the
	// root token the controller has now.
	switch {
	case rec.KeySession != "":
		if _, err := s.st.KeySession(ctx, rec.KeySession); errors.Is(err, store.ErrNotFound) {
			_ = s.DashboardLogout(ctx, secret)
			return Identity{}, ErrAuth
		} else if err != nil {
			return Identity{}, err
		}
	case rec.RootTokenHash != "":
		if s.cfg.Auth.RootToken == "" || secretHash(s.cfg.Auth.RootToken) != rec.RootTokenHash {
			_ = s.DashboardLogout(ctx, secret)
			return Identity{}, ErrAuth
		}
	default:
		return Identity{}, ErrAuth // a record from before sessions said where they came from
	}
	return rec.Identity, nil
}

// dashboardSession is a dashboard session as etcd keeps it.
type dashboardSession struct {
	Identity
	// KeySession is the etcd key of the API key session it was opened
	// with; RootTokenHash the root token's hash.
	KeySession    string `json:"key_session,omitempty"`
	RootTokenHash string `json:"root_token_hash,omitempty"`
}

// DashboardLogout ends a dashboard session.
func (s *Service) DashboardLogout(ctx context.Context, secret string) error {
	err := s.st.DeleteDashboardSession(ctx, secretHash(secret))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
