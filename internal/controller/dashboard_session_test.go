package controller_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
)

func authService(t *testing.T, cfg controller.AuthConfig) (*store.Store, *controller.Service) {
	t.Helper()
	_, st := testenv.StoreAt(t, "")
	return st, controller.New(st, nil, controller.Config{Auth: cfg}, testenv.Logger(t))
}

// keySession runs the TAP handshake for API key id as a client does and
// returns the session token (what a client sends as Bearer).
func keySession(t *testing.T, st *store.Store, svc *controller.Service, id string) string {
	t.Helper()
	ctx := context.Background()
	key := testenv.NewAPIKey(t, st, id)
	enc, err := svc.Hand(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(enc)
	secret, err := rsa.DecryptOAEP(sha256.New(), rand.Reader, key, raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := svc.Shake(ctx, id, string(secret))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sess)
	return base64.StdEncoding.EncodeToString(b)
}

// TestDashboardSessionsDieWithTheirKey: a dashboard cookie outlived the API
// key it was opened with (deleted, or past its session TTL) and still read
// and changed things. It now lives exactly as long as the key's session.
func TestDashboardSessionsDieWithTheirKey(t *testing.T) {
	ctx := context.Background()
	st, svc := authService(t, controller.AuthConfig{Enabled: true, APIKeys: true, RootToken: "root-secret", SessionTTL: time.Hour})
	cookie, err := svc.DashboardLogin(ctx, "", keySession(t, st, svc, "jenkins"))
	if err != nil {
		t.Fatal(err)
	}
	if id, err := svc.DashboardSession(ctx, cookie); err != nil || id.String() != "key:jenkins" {
		t.Fatalf("fresh session: %v %v", id, err)
	}
	if err := st.DeleteAPIKey(ctx, "jenkins"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.DashboardSession(ctx, cookie); !errors.Is(err, controller.ErrAuth) {
		t.Fatalf("session after its key was deleted: %v, want ErrAuth", err)
	}

	// Past the key session's TTL (etcd drops it with its lease).
	short, ssvc := authService(t, controller.AuthConfig{Enabled: true, APIKeys: true, SessionTTL: 2 * time.Second})
	cookie, err = ssvc.DashboardLogin(ctx, "", keySession(t, short, ssvc, "ci"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := ssvc.DashboardSession(ctx, cookie)
		if errors.Is(err, controller.ErrAuth) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session 30 s after its key session's 2 s TTL: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // waiting out a lease, not ordering events
	}
}

// TestDashboardSessionsDieWithTheRootToken: a root login ends when the
// controller's root token changes.
func TestDashboardSessionsDieWithTheRootToken(t *testing.T) {
	ctx := context.Background()
	st, svc := authService(t, controller.AuthConfig{Enabled: true, RootToken: "old-token"})
	cookie, err := svc.DashboardLogin(ctx, "old-token", "")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := svc.DashboardSession(ctx, cookie); err != nil || !id.Root {
		t.Fatalf("root session: %+v %v", id, err)
	}
	rotated := controller.New(st, nil, controller.Config{Auth: controller.AuthConfig{Enabled: true, RootToken: "new-token"}}, testenv.Logger(t))
	if _, err := rotated.DashboardSession(ctx, cookie); !errors.Is(err, controller.ErrAuth) {
		t.Fatalf("root session after the root token changed: %v, want ErrAuth", err)
	}
}
