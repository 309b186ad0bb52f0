package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/corral-build/corral/internal/httpserve"
	"github.com/corral-build/corral/internal/registry"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/corral-build/corral/internal/regauth"
	"github.com/corral-build/corral/internal/retry"
)

// Auth is how the registry checks callers. With Enabled, every route but
// the health checks and the token endpoint needs a credential: the root
// token (HTTP Basic, user root), a client certificate the TLS layer verified
// (every action), or a registry token (Bearer) that grants the action on the
// repository. Other Basic credentials (an API key's session token, a node's
// credential) are exchanged for a token at the controller when
// ControllerURL is set. AnonymousPull lets callers without credentials read.
type Auth struct {
	Enabled   bool
	RootToken string
	// TokenSecret is the secret registry tokens are signed under; it must be
	// the controller's. Default: RootToken.
	TokenSecret   string
	AnonymousPull bool
	ControllerURL string
	ControllerTLS *tls.Config
}

type guard struct {
	cfg  Auth
	key  regauth.Key
	http *http.Client
	now  func() time.Time

	mu    sync.Mutex
	cache map[[32]byte]cachedToken // exchanged Basic credentials
}

type cachedToken struct {
	resp    regauth.TokenResponse
	expires time.Time
}

// exchangeCacheTTL bounds how long a credential the controller vouched for
// stays good here without asking again (a deleted key stops within it).
const exchangeCacheTTL = 10 * time.Second

func newGuard(cfg Auth) *guard {
	if cfg.TokenSecret == "" {
		cfg.TokenSecret = cfg.RootToken
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg.ControllerTLS
	return &guard{cfg: cfg, key: regauth.NewKey(cfg.TokenSecret), now: time.Now,
		http: &http.Client{Transport: tr, Timeout: 15 * time.Second}, cache: map[[32]byte]cachedToken{}}
}

// need is what a request needs: an action on a repository ("*" for the
// template API), or nothing (open routes), or any valid credential.
type need struct {
	open, anyCredential bool
	repo, action        string
	mountFrom           string // a cross-repository mount also reads this one
}

func needOf(r *http.Request) need {
	p := r.URL.Path
	write := r.Method != http.MethodGet && r.Method != http.MethodHead
	action := regauth.Pull
	if write {
		action = regauth.Push
		if r.Method == http.MethodDelete {
			action = regauth.Delete
		}
	}
	switch {
	case p == "/registry/status" || p == "/livez" || p == "/readyz" || p == "/v2/token":
		return need{open: true}
	case p == "/v2/" || p == "/v2":
		return need{anyCredential: true}
	case p == "/v2/_catalog":
		return need{repo: "*", action: regauth.Pull}
	case strings.HasPrefix(p, "/v2/"):
		n := need{repo: ociRepo(strings.TrimPrefix(p, "/v2/")), action: action}
		if strings.Contains(p, "/blobs/uploads") {
			n.action = regauth.Push // an upload's status and its cancelling are part of pushing
		}
		if r.Method == http.MethodPost && r.URL.Query().Get("mount") != "" {
			n.mountFrom = r.URL.Query().Get("from")
		}
		return n
	case p == "/registry/corral/v1/chunks/fetch":
		return need{repo: "*", action: regauth.Pull} // a POST that reads chunks
	case p == "/registry/corral/v1/chunks/signatures":
		return need{repo: "*", action: regauth.Push} // part of a delta push
	case strings.HasPrefix(p, "/registry/corral/v1/") && (r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodDelete):
		return need{repo: "*", action: regauth.Push} // pushing a template (a missing-chunks query is part of a push)
	}
	return need{repo: "*", action: action}
}

// ociRepo is the repository name of an OCI path.
func ociRepo(p string) string {
	for _, sep := range []string{"/tags/list", "/blobs/uploads", "/manifests/", "/blobs/", "/referrers/"} {
		if i := strings.LastIndex(p, sep); i > 0 {
			return p[:i]
		}
	}
	return p
}

func (g *guard) wrap(next http.Handler) http.Handler {
	if !g.cfg.Enabled {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := needOf(r)
		if n.open {
			next.ServeHTTP(w, r)
			return
		}
		claims, err := g.identify(r)
		if err == nil {
			httpserve.SetCaller(r.Context(), claims.Subject)
		}
		switch {
		case errors.Is(err, errNoCredential) && g.cfg.AnonymousPull && n.action == regauth.Pull && n.mountFrom == "":
			next.ServeHTTP(w, r)
			return
		case err != nil:
			g.deny(w, r, n, http.StatusUnauthorized, err)
			return
		}
		if n.anyCredential || (claims.Allows(n.repo, n.action) && (n.mountFrom == "" || claims.Allows(n.mountFrom, regauth.Pull))) {
			next.ServeHTTP(w, r)
			return
		}
		what := n.action + " on " + n.repo
		if n.mountFrom != "" && !claims.Allows(n.mountFrom, regauth.Pull) {
			what = "pull on " + n.mountFrom + " (the mount's source)"
		}
		g.deny(w, r, n, http.StatusForbidden, fmt.Errorf("%s may not %s", claims.Subject, what))
	})
}

var errNoCredential = errors.New("no credentials")

// rootClaims are what the root token and verified client certificates get.
func rootClaims(subject string) regauth.Claims {
	return regauth.Claims{Subject: subject, Access: []regauth.Access{{Type: "repository", Name: "*", Actions: []string{"*"}}}}
}

// identify authenticates a request, or says why not.
func (g *guard) identify(r *http.Request) (regauth.Claims, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return rootClaims("cert:" + r.TLS.VerifiedChains[0][0].Subject.CommonName), nil
	}
	h := r.Header.Get("Authorization")
	switch {
	case h == "":
		return regauth.Claims{}, errNoCredential
	case strings.HasPrefix(h, "Bearer "):
		c, err := g.key.Verify(strings.TrimPrefix(h, "Bearer "), g.now())
		if err != nil || !strings.HasPrefix(c.Subject, "key:") || g.cfg.ControllerURL == "" {
			return c, err
		}
		// An API key's token holds only while the key and its
		// permissions do: the controller is asked again (at most every
		// 10 s per token), and the answer, never more than the token
		// asked for, is what the caller may do now.
		fresh, err := g.exchange(r.Context(), h, scopesOf(c.Access))
		if err != nil {
			return regauth.Claims{}, fmt.Errorf("the token's API key no longer holds: %w", err)
		}
		return fresh, nil
	case strings.HasPrefix(h, "Basic "):
		user, pass, ok := r.BasicAuth()
		if !ok {
			return regauth.Claims{}, errors.New("malformed Basic credentials")
		}
		if g.isRoot(user, pass) {
			return rootClaims("root"), nil
		}
		return g.exchange(r.Context(), h, []string{"repository:*:pull,push,delete"})
	}
	return regauth.Claims{}, errors.New("unsupported Authorization scheme (want Basic or Bearer)")
}

// scopesOf is access as the token spec's scopes.
func scopesOf(access []regauth.Access) []string {
	var out []string
	for _, a := range access {
		if len(a.Actions) > 0 {
			out = append(out, a.Type+":"+a.Name+":"+strings.Join(a.Actions, ","))
		}
	}
	return out
}

func (g *guard) isRoot(user, pass string) bool {
	return (user == "root" || user == "") && g.cfg.RootToken != "" &&
		subtle.ConstantTimeCompare([]byte(pass), []byte(g.cfg.RootToken)) == 1
}

// exchange asks the controller for a token for these Basic credentials,
// and remembers the answer briefly.
func (g *guard) exchange(ctx context.Context, header string, scopes []string) (regauth.Claims, error) {
	resp, err := g.exchangeToken(ctx, header, scopes)
	if err != nil {
		return regauth.Claims{}, err
	}
	return g.key.Verify(resp.Token, g.now())
}

func (g *guard) exchangeToken(ctx context.Context, header string, scopes []string) (regauth.TokenResponse, error) {
	if g.cfg.ControllerURL == "" {
		return regauth.TokenResponse{}, errors.New("unknown credentials (only the root token is checked here: the registry has no --controller-url)")
	}
	ck := sha256.Sum256([]byte(header + "\x00" + strings.Join(scopes, " ")))
	g.mu.Lock()
	if c, ok := g.cache[ck]; ok && g.now().Before(c.expires) {
		g.mu.Unlock()
		return c.resp, nil
	}
	g.mu.Unlock()
	q := url.Values{"service": {regauth.Service}, "scope": scopes}
	var out regauth.TokenResponse
	err := retry.Default.Do(ctx, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(g.cfg.ControllerURL, "/")+"/api/v1/registry/token?"+q.Encode(), nil)
		if err != nil {
			return retry.Permanent(err)
		}
		req.Header.Set("Authorization", header)
		resp, err := g.http.Do(req)
		if err != nil {
			return fmt.Errorf("ask the controller: %w", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		switch {
		case resp.StatusCode == http.StatusOK:
			var env struct {
				Body regauth.TokenResponse `json:"body"`
			}
			if err := json.Unmarshal(body, &env); err != nil || env.Body.Token == "" {
				return retry.Permanent(fmt.Errorf("the controller's token answer: %s", truncate(body)))
			}
			out = env.Body
			return nil
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("the controller answered %d", resp.StatusCode)
		}
		return retry.Permanent(fmt.Errorf("the controller refused the credentials: %s", truncate(body)))
	})
	if err != nil {
		return out, err
	}
	c, err := g.key.Verify(out.Token, g.now())
	if err != nil {
		return out, fmt.Errorf("the controller's token does not verify here (is the registry's token secret the controller's?): %w", err)
	}
	g.mu.Lock()
	if len(g.cache) > 10000 {
		clear(g.cache)
	}
	exp := g.now().Add(exchangeCacheTTL)
	if t := time.Unix(c.ExpiresAt, 0).Add(-time.Minute); t.Before(exp) {
		exp = t
	}
	g.cache[ck] = cachedToken{resp: out, expires: exp}
	g.mu.Unlock()
	return out, nil
}

func truncate(b []byte) string {
	if len(b) > 300 {
		b = b[:300]
	}
	return strings.TrimSpace(string(b))
}

// deny answers 401/403 with the challenge the request's kind of client
// understands: the token flow on /v2/, Basic on the template API.
func (g *guard) deny(w http.ResponseWriter, r *http.Request, n need, code int, err error) {
	if strings.HasPrefix(r.URL.Path, "/v2") {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		ch := fmt.Sprintf(`Bearer realm="%s://%s/v2/token",service="%s"`, scheme, r.Host, regauth.Service)
		// Only a valid name goes into the header: a request's path is the
		// caller's to choose (control characters split headers).
		if n.repo == "*" || n.repo != "" && registry.CheckRepoName(n.repo) == nil {
			// A push reads too (HEAD before each blob): ask for both, as
			// distribution does. Clients such as Tart ask a token for the
			// challenge's scope exactly and keep that one token.
			actions := n.action
			if actions == regauth.Push {
				actions = regauth.Pull + "," + regauth.Push
			}
			ch += fmt.Sprintf(`,scope="repository:%s:%s"`, n.repo, actions)
		}
		if code == http.StatusForbidden {
			// A valid token without the action: 401 and the scope it needs
			// (the token-auth spec's insufficient_scope), so a client that
			// re-authenticates only on 401 can ask for it; a 403 ends a
			// Tart or Docker push for good.
			code = http.StatusUnauthorized
			ch += `,error="insufficient_scope"`
		}
		w.Header().Set("WWW-Authenticate", ch)
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		writeJSON(w, code, map[string][]map[string]string{"errors": {{"code": "UNAUTHORIZED", "message": err.Error()}}})
		return
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="corral-registry"`)
	msg := "Authentication required: " + err.Error()
	if code == http.StatusForbidden {
		msg = "Permission denied: " + err.Error()
	}
	writeJSON(w, code, envelope{Status: "FAIL", Message: msg, Code: code, ExceptionType: "Unauthorized"})
}

// token is the token endpoint (GET with Basic, or the OAuth2 password grant
// by POST): root gets what it asks; other credentials go to the controller.
func (g *guard) token(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, msg string) {
		writeJSON(w, code, map[string][]map[string]string{"errors": {{"code": "UNAUTHORIZED", "message": msg}}})
	}
	if !g.cfg.Enabled {
		fail(http.StatusNotFound, "authentication is off: no token is needed")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	var user, pass string
	var ok bool
	scopes := r.URL.Query()["scope"]
	switch r.Method {
	case http.MethodGet:
		user, pass, ok = r.BasicAuth()
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			fail(http.StatusBadRequest, "form: "+err.Error())
			return
		}
		if gt := r.PostForm.Get("grant_type"); gt != "password" {
			fail(http.StatusBadRequest, fmt.Sprintf("grant_type %q: only password is supported", gt))
			return
		}
		user, pass, ok = r.PostForm.Get("username"), r.PostForm.Get("password"), true
		scopes = append(scopes, r.PostForm["scope"]...)
	default:
		fail(http.StatusMethodNotAllowed, "GET or POST")
		return
	}
	asked, err := regauth.ParseScopes(scopes)
	if err != nil {
		fail(http.StatusBadRequest, err.Error())
		return
	}
	issue := func(subject string, allowed func(string) bool) {
		tok, c, err := g.key.Issue("corral-registry", subject, regauth.Grant(asked, allowed), regauth.DefaultTTL, g.now())
		if err != nil {
			fail(http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, regauth.Response(tok, c))
	}
	switch {
	case !ok && g.cfg.AnonymousPull:
		issue("anonymous", func(a string) bool { return a == regauth.Pull })
		return
	case !ok:
		w.Header().Set("WWW-Authenticate", `Basic realm="corral-registry"`)
		fail(http.StatusUnauthorized, "credentials required (HTTP Basic)")
		return
	case g.isRoot(user, pass):
		issue("root", func(string) bool { return true })
		return
	}
	// A registry token as the password (what tart and docker-style clients
	// can carry): a token for what it grants, expiring no later than it.
	if held, err := g.key.Verify(pass, g.now()); err == nil {
		var access []regauth.Access
		for _, a := range asked {
			access = append(access, regauth.Grant([]regauth.Access{a}, func(act string) bool { return held.Allows(a.Name, act) })...)
		}
		ttl := min(regauth.DefaultTTL, time.Unix(held.ExpiresAt, 0).Sub(g.now()))
		tok, c, err := g.key.Issue("corral-registry", held.Subject, access, ttl, g.now())
		if err != nil {
			fail(http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, regauth.Response(tok, c))
		return
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	resp, err := g.exchangeToken(r.Context(), basic, scopes)
	if err != nil {
		fail(http.StatusUnauthorized, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, resp)
}
