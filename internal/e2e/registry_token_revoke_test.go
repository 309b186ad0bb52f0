package e2e

import (
	"encoding/json"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
)

// TestRegistryTokensDieWithTheirKey: a registry token issued to an API key
// kept working for its whole 5 minutes after the key was deleted, and kept
// the actions its key's permission group lost. The registry now asks the
// controller again, at most every 10 s per token: deleting the key ends
// its tokens within 10 s, and a lost permission is lost there too.
func TestRegistryTokensDieWithTheirKey(t *testing.T) {
	c := authedCloud(t, false)
	base, reg := c.Controllers[0].URL, c.Registry.URL
	_, st := testenv.StoreAt(t, c.Etcd.ClientURL)
	root := basic("root", "s3cret")
	if code, body := authCall(t, "POST", base+"/api/v1/permission-group", root,
		`{"name":"builders","permissions":["view","manage_templates"],"members":["key:builder"]}`); code != 200 {
		t.Fatalf("permission group: %d %s", code, body)
	}
	session := loginNewKey(t, st, base, "builder")
	code, body := authCall(t, "GET", base+"/api/v1/registry/token?service=corral-registry&scope=repository:*:pull,push", session, "")
	var env struct {
		Body apiv1.RegistryToken `json:"body"`
	}
	if json.Unmarshal([]byte(body), &env); code != 200 || env.Body.Token == "" {
		t.Fatalf("token: %d %s", code, body)
	}
	bearer := "Bearer " + env.Body.Token
	if code, body := authCall(t, "GET", reg+"/registry/vm", bearer, ""); code != 200 {
		t.Fatalf("a fresh token: HTTP %d %s", code, body)
	}
	if code, body := authCall(t, "POST", reg+"/registry/corral/v1/uploads", bearer, "{}"); code != 200 {
		t.Fatalf("a fresh token pushes: HTTP %d %s", code, body)
	}

	// The group loses manage_templates: pushing stops, pulling goes on.
	if code, body := authCall(t, "PUT", base+"/api/v1/permission-group", root,
		`{"name":"builders","permissions":["view"],"members":["key:builder"]}`); code != 200 {
		t.Fatalf("permission group: %d %s", code, body)
	}
	waitCode(t, "a push after the permission was taken", 403, func() int {
		code, _ := authCall(t, "POST", reg+"/registry/corral/v1/uploads", bearer, "{}")
		return code
	})
	if code, _ := authCall(t, "GET", reg+"/registry/vm", bearer, ""); code != 200 {
		t.Errorf("a pull after push was taken: HTTP %d", code)
	}

	// The key is deleted: its token stops.
	if err := st.DeleteAPIKey(t.Context(), "builder"); err != nil {
		t.Fatal(err)
	}
	waitCode(t, "a pull after the key was deleted", 401, func() int {
		code, _ := authCall(t, "GET", reg+"/registry/vm", bearer, "")
		return code
	})
}

// waitCode polls call until it answers want, within the registry's 10 s
// bound on what it remembers of the controller's answers (plus slack for
// a busy machine).
func waitCode(t *testing.T, what string, want int, call func() int) {
	t.Helper()
	start := time.Now()
	for {
		got := call()
		if got == want {
			t.Logf("%s: HTTP %d after %v", what, got, time.Since(start).Round(100*time.Millisecond))
			return
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("%s: HTTP %d after %v, want %d", what, got, time.Since(start), want)
		}
		time.Sleep(250 * time.Millisecond) // polling the registry
	}
}
