package controller

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// AuthConfig turns on authentication (off by default on a single machine).
type AuthConfig struct {
	Enabled    bool
	RootToken  string        // HTTP Basic with user root (or empty) and this password
	APIKeys    bool          // allow API-key handshakes (/tap/v1/hand, /tap/v1/shake)
	SessionTTL time.Duration // how long a handshake's session lasts (1h)
	// DefaultPermissionGroup applies to identities no permission group
	// names; empty = they have every permission.
	DefaultPermissionGroup string
	// RegistryTokenSecret signs the registry tokens the controller issues
	// (to nodes, users and itself); the registry checks them with the same
	// secret. Default: RootToken.
	RegistryTokenSecret string
}

// ErrAuth means the request has no valid credentials.
var ErrAuth = errors.New("authentication required")

// Session is the data a shake returns; clients send it back as
// "Authorization: Bearer base64(json(data))".
type Session struct {
	UserName  string `json:"userName"`
	Token     string `json:"token"`
	SessionID string `json:"sessionId"`
	ExpiresAt int64  `json:"expiresAt"`
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Identity is who a request authenticated as.
type Identity struct {
	Root bool // the root token, or auth off: every permission
	// Subjects name the caller for permission groups: "key:<id>",
	// "cert:<common name>", "cert-group:<organization or unit>".
	Subjects []string
}

func (id Identity) String() string {
	if id.Root || len(id.Subjects) == 0 {
		return "root"
	}
	return id.Subjects[0]
}

// Authenticate checks a request's credentials when auth is on. cert is the
// client certificate the TLS layer verified against the client CA, or nil.
func (s *Service) Authenticate(ctx context.Context, header string, cert *x509.Certificate) (Identity, error) {
	a := s.cfg.Auth
	if !a.Enabled {
		return Identity{Root: true}, nil // and "Basic root:" or any header is tolerated
	}
	switch {
	case cert != nil:
		return certIdentity(cert), nil
	case strings.HasPrefix(header, "Basic "):
		raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(header, "Basic "))
		if err != nil {
			return Identity{}, ErrAuth
		}
		user, pass, _ := strings.Cut(string(raw), ":")
		if (user == "root" || user == "") && a.RootToken != "" &&
			subtle.ConstantTimeCompare([]byte(pass), []byte(a.RootToken)) == 1 {
			return Identity{Root: true}, nil
		}
	case strings.HasPrefix(header, "Bearer ") && a.APIKeys:
		sess, ok := decodeSession(strings.TrimPrefix(header, "Bearer "))
		if !ok {
			return Identity{}, ErrAuth
		}
		hash, err := s.st.KeySession(ctx, store.KeySessionRef(sess.UserName, sess.SessionID))
		if err == nil && subtle.ConstantTimeCompare([]byte(hash), []byte(secretHash(sess.Token))) == 1 {
			return Identity{Subjects: []string{"key:" + sess.UserName}}, nil
		}
	}
	return Identity{}, ErrAuth
}

// decodeSession reads an API key session token: base64(json(Session)).
func decodeSession(token string) (Session, bool) {
	var sess Session
	raw, err := base64.StdEncoding.DecodeString(token)
	if err != nil || json.Unmarshal(raw, &sess) != nil || !validSecretID(sess.SessionID) || !validSecretID(sess.UserName) {
		return Session{}, false
	}
	return sess, true
}

func certIdentity(cert *x509.Certificate) Identity {
	cn := cert.Subject.CommonName
	if cn == "" {
		cn = "client-certificate"
	}
	id := Identity{Subjects: []string{"cert:" + cn}}
	for _, g := range append(slices.Clone(cert.Subject.Organization), cert.Subject.OrganizationalUnit...) {
		id.Subjects = append(id.Subjects, "cert-group:"+g)
	}
	return id
}

// PermissionError is a request its caller's permission groups do not allow.
type PermissionError struct {
	Identity   string
	Permission string
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("%s: %s does not have the %s permission", apiv1.MsgPermissionDenied, e.Identity, e.Permission)
}

// Authorize checks that id may use perm. Identities no permission group
// names get AuthConfig.DefaultPermissionGroup, or every permission when that
// is unset (as before permission groups were configured).
func (s *Service) Authorize(ctx context.Context, id Identity, perm string) error {
	if id.Root {
		return nil
	}
	groups, err := s.st.ListPermissionGroups(ctx)
	if err != nil {
		return fmt.Errorf("authorize %s: %w", id, err)
	}
	var bound []apiv1.PermissionGroup
	for _, g := range groups {
		if slices.ContainsFunc(g.Members, func(m string) bool { return slices.Contains(id.Subjects, m) }) {
			bound = append(bound, g)
		}
	}
	if len(bound) == 0 {
		def := s.cfg.Auth.DefaultPermissionGroup
		if def == "" {
			return nil
		}
		for _, g := range groups {
			if g.Name == def {
				bound = append(bound, g) // a missing default group grants nothing
			}
		}
	}
	for _, g := range bound {
		if slices.Contains(g.Permissions, perm) || slices.Contains(g.Permissions, apiv1.PermAdmin) {
			return nil
		}
	}
	return &PermissionError{Identity: id.String(), Permission: perm}
}

// Hand starts an API-key handshake: a single-use secret, encrypted to the
// key's public key (RSA-OAEP, SHA-256), returned base64-encoded.
func (s *Service) Hand(ctx context.Context, id string) (string, error) {
	if !s.cfg.Auth.APIKeys || !validSecretID(id) {
		return "", ErrAuth
	}
	pemKey, err := s.st.APIKey(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", ErrAuth
	}
	if err != nil {
		return "", err
	}
	pub, err := parsePublicKey(pemKey)
	if err != nil {
		return "", fmt.Errorf("api key %s: %w", id, err)
	}
	secret := randomHex(24)
	// One key per pending handshake: a flood of hands for this key id
	// cannot replace the one a real client is completing.
	if err := s.st.PutHandshake(ctx, id, secretHash(secret), time.Minute); err != nil {
		return "", err
	}
	enc, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, []byte(secret), nil)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(enc), nil
}

// Shake completes a handshake: the decrypted secret proves the caller holds
// the private key, and a session is issued.
func (s *Service) Shake(ctx context.Context, id, secret string) (Session, error) {
	if !s.cfg.Auth.APIKeys {
		return Session{}, ErrAuth
	}
	if !validSecretID(id) {
		return Session{}, ErrAuth
	}
	if secret == "" || len(secret) > 128 {
		return Session{}, ErrAuth
	}
	if err := s.st.TakeHandshake(ctx, id, secretHash(secret)); errors.Is(err, store.ErrNotFound) {
		return Session{}, ErrAuth
	} else if err != nil {
		return Session{}, err
	}
	ttl := s.cfg.Auth.SessionTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	sess := Session{UserName: id, Token: randomHex(24), SessionID: randomHex(16), ExpiresAt: time.Now().Add(ttl).Unix()}
	if err := s.st.PutKeySession(ctx, id, sess.SessionID, secretHash(sess.Token), ttl); err != nil {
		return Session{}, err
	}
	return sess, nil
}

func parsePublicKey(p string) (*rsa.PublicKey, error) {
	block, _ := pem.Decode([]byte(p))
	if block == nil {
		return nil, errors.New("not PEM")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := key.(*rsa.PublicKey)
	if !ok {
		return nil, errors.New("not an RSA key")
	}
	return pub, nil
}

// NewAPIKey creates an RSA key pair for id, stores the public half and
// returns the private key PEM for the caller to keep.
func NewAPIKey(ctx context.Context, st *store.Store, id string) ([]byte, error) {
	if !validKeyID(id) {
		return nil, fieldErr("id", "want 1-64 letters, digits, '.', '_' or '-'")
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := st.PutAPIKey(ctx, id, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))); err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), nil
}

func validKeyID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// secretHash is how session tokens and handshake secrets are stored: they
// are random (96+ bits), so a plain SHA-256 suffices.
// SecretHash is how secrets are kept in etcd: SHA-256, hex.
func SecretHash(secret string) string { return secretHash(secret) }

func secretHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// validSecretID admits API key and session ids that are safe in a key path.
func validSecretID(id string) bool {
	return id != "" && len(id) <= 128 && !strings.ContainsAny(id, "/\\") && !strings.Contains(id, "..")
}
