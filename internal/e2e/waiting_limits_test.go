package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestWaitingLimits: starts past the cloud's or a caller's bound on
// waiting (not yet running) instances get HTTP 429 naming the limit (ten
// small requests used to make 13k instances); running or terminated ones
// do not count.
func TestWaitingLimits(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{MaxWaiting: 10, MaxWaitingPerCaller: 6,
		Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true}})
	base := c.Controllers[0].URL
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ci := loginNewKey(t, store.New(cli, ""), base, "ci")
	root := basic("root", "s3cret")
	start := func(who string, count int) (int, string, []string) {
		t.Helper()
		code, body := authCall(t, "POST", base+"/api/v1/vm", who, fmt.Sprintf(`{"vmid":%q,"count":%d}`, c.TemplateID, count))
		var env struct {
			Status, Message string
			Body            []string
		}
		json.Unmarshal([]byte(body), &env)
		if code >= 500 {
			t.Fatalf("start: HTTP %d %s", code, body)
		}
		return code, env.Message, env.Body
	}
	code, _, rootIDs := start(root, 6)
	if code != 200 || len(rootIDs) != 6 {
		t.Fatalf("root's first 6: HTTP %d %v", code, rootIDs)
	}
	if code, msg, _ := start(root, 1); code != http.StatusTooManyRequests ||
		!strings.Contains(msg, "6 are waiting for root") || !strings.Contains(msg, "--max-waiting-instances-per-caller") {
		t.Errorf("root's 7th: HTTP %d %q", code, msg)
	}
	if code, _, ids := start(ci, 4); code != 200 || len(ids) != 4 {
		t.Fatalf("key ci's 4: HTTP %d", code)
	}
	if code, msg, _ := start(ci, 1); code != http.StatusTooManyRequests || !strings.Contains(msg, "the limit is 10 (--max-waiting-instances)") {
		t.Errorf("the cloud's 11th: HTTP %d %q", code, msg)
	}
	// Terminated instances stop counting (within the count's one-second refresh).
	for _, id := range rootIDs[:3] {
		if err := c.Client.Terminate(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, msg, _ := start(root, 3)
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after terminating 3, root still cannot start 3: HTTP %d %q", code, msg)
		}
	}
}

// TestListPaging: list endpoints page with ?limit and ?offset in a stable
// order (creation time, then id) and say the total; bad values are a FAIL
// naming the parameter.
func TestListPaging(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	base := c.Controllers[0].URL + "/api/v1"
	ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`","count":25}`)
	ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`","count":5}`)
	all := ok(t, "GET", base+"/vm", "").([]any)
	if len(all) != 30 {
		t.Fatalf("unpaged list: %d", len(all))
	}
	var paged []any
	for off := 0; off < 40; off += 7 {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/vm?limit=7&offset=%d", base, off), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var env struct{ Body []any }
		json.NewDecoder(resp.Body).Decode(&env)
		resp.Body.Close()
		if resp.Header.Get("X-Total-Count") != "30" {
			t.Errorf("X-Total-Count %q", resp.Header.Get("X-Total-Count"))
		}
		paged = append(paged, env.Body...)
	}
	if len(paged) != 30 {
		t.Fatalf("pages hold %d items, want 30", len(paged))
	}
	for i := range all {
		if all[i].(map[string]any)["instance_id"] != paged[i].(map[string]any)["instance_id"] {
			t.Fatalf("item %d differs between the list and its pages", i)
		}
	}
	fail(t, "GET", base+"/vm?limit=0", "", 200, `limit: want an integer from 1 to 10000, got "0"`)
	fail(t, "GET", base+"/vm?limit=10001", "", 200, `limit: want an integer from 1 to 10000, got "10001"`)
	fail(t, "GET", base+"/vm?offset=-1", "", 200, `offset: want an integer from 0 to 2147483647, got "-1"`)
	fail(t, "GET", base+"/node?limit=x", "", 200, `limit: want an integer from 1 to 10000, got "x"`)
}

// TestTwelveStartsCannotFillEtcd: twelve valid starts of 1000 instances
// with 128 KiB scripts filled etcd's 2 GiB quota (the script was in every
// record, rewritten by every update), and then every start, update and
// terminate failed. A start's script is now stored once, and the cloud's
// unfinished instances are bounded in bytes: past --max-instance-bytes a
// start gets 429 naming it.
func TestTwelveStartsCannotFillEtcd(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{MaxInstanceBytes: 10 << 20})
	base := c.Controllers[0].URL
	script := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("#", apiv1.MaxScriptBytes)))
	body := fmt.Sprintf(`{"vmid":%q,"count":1000,"startup_script":%q}`, c.TemplateID, script)
	var accepted, refused int
	var msg string
	for range 12 {
		code, resp := authCall(t, "POST", base+"/api/v1/vm", "", body)
		switch code {
		case 200:
			accepted++
		case http.StatusTooManyRequests:
			refused++
			msg = resp
		default:
			t.Fatalf("start: HTTP %d %.300s", code, resp)
		}
	}
	if accepted < 1 || refused == 0 || !strings.Contains(msg, "--max-instance-bytes") {
		t.Fatalf("%d accepted, %d refused (%s)", accepted, refused, msg)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "/corral/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var total int
	for _, kv := range resp.Kvs {
		total += len(kv.Value)
	}
	if total > 12<<20 {
		t.Errorf("%d starts keep %d bytes in etcd", accepted, total)
	}
	t.Logf("%d starts of 1000 accepted, %d refused; etcd holds %d KiB", accepted, refused, total>>10)
	// The cloud still works: a small start and a terminate.
	ids, err := c.Client.StartInstances(context.Background(), map[string]any{"vmid": c.TemplateID})
	if err == nil {
		err = c.Client.Terminate(context.Background(), ids[0])
	}
	if err == nil || !strings.Contains(err.Error(), "max-instance-bytes") {
		// Either it fits or it is refused by the bound, never a 5xx.
		if err != nil {
			t.Errorf("a small start after the bound: %v", err)
		}
	}
}
