package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry/chunk"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
)

// TestStartSizeLimits: big but valid starts succeed (a 16 KiB script × 100
// and a 128 KiB script × 50 used to get HTTP 500 from etcd's request-size
// limit); what is over a documented limit gets a FAIL naming the field and
// the limit.
func TestStartSizeLimits(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	base := c.Controllers[0].URL + "/api/v1"
	script := func(n int) string { return base64.StdEncoding.EncodeToString([]byte(strings.Repeat("#", n))) }
	start := func(extra string) string { return `{"vmid":"` + c.TemplateID + `"` + extra + `}` }

	for _, tc := range []struct{ size, count int }{{16 << 10, 100}, {128 << 10, 50}} {
		ids := ok(t, "POST", base+"/vm", start(fmt.Sprintf(`,"startup_script":%q,"count":%d`, script(tc.size), tc.count))).([]any)
		if len(ids) != tc.count {
			t.Fatalf("%d-byte script × %d: %d ids", tc.size, tc.count, len(ids))
		}
	}
	deep := strings.Repeat(`{"a":`, 33) + "1" + strings.Repeat("}", 33)
	for _, tc := range []struct{ extra, msg string }{
		{fmt.Sprintf(`,"startup_script":%q`, script(128<<10+1)), "startup_script: at most 131072 bytes (decoded), got 131073"},
		{`,"metadata":` + deep, "metadata: nested at most 32 deep, got 33"},
		{`,"metadata":{"k":"` + strings.Repeat("x", 16<<10) + `"}`, "metadata: at most 16384 bytes of JSON, got 16392"},
		{`,"external_id":"` + strings.Repeat("j", 257) + `"`, "external_id: at most 256 bytes, got 257"},
	} {
		fail(t, "POST", base+"/vm", start(tc.extra), 200, tc.msg)
	}
}

// TestIdempotentStart: a start retried with the same Idempotency-Key (the
// answer was lost) returns the same ids and creates nothing more; the same
// key with another request is refused.
func TestIdempotentStart(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	base := c.Controllers[0].URL + "/api/v1"
	body := `{"vmid":"` + c.TemplateID + `","count":150}`
	post := func(body string) map[string]any {
		t.Helper()
		_, env := callH(t, "POST", base+"/vm", body, map[string]string{"Content-Type": "application/json", "Idempotency-Key": "job-42-attempt"})
		return env
	}
	first, again := post(body), post(body)
	if first["status"] != "OK" || fmt.Sprint(first["body"]) != fmt.Sprint(again["body"]) {
		t.Fatalf("retry with the same key: %v then %v", first["status"], again)
	}
	if n := len(ok(t, "GET", base+"/vm", "").([]any)); n != 150 {
		t.Fatalf("%d instances after a retried start of 150", n)
	}
	other := post(`{"vmid":"` + c.TemplateID + `","count":2}`)
	if other["status"] != "FAIL" || other["message"] != "Idempotency-Key: already used for a different start request" {
		t.Fatalf("same key, other request: %v", other)
	}
}

// TestStartIsAllOrNothing: a client that gives up in the middle of a large
// start leaves either every instance or none, never part of the batch.
func TestStartIsAllOrNothing(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	base := c.Controllers[0].URL + "/api/v1"
	body := fmt.Sprintf(`{"vmid":%q,"count":1000,"startup_script":%q}`, c.TemplateID,
		base64.StdEncoding.EncodeToString([]byte(strings.Repeat("#", 8<<10))))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/vm", strings.NewReader(body))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	// Whatever the client saw, the controller settles on all or none.
	var n int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		n = len(ok(t, "GET", base+"/vm", "").([]any))
		if n == 0 || n == 1000 {
			time.Sleep(500 * time.Millisecond) // a settled count stays settled (not synchronisation)
			if m := len(ok(t, "GET", base+"/vm", "").([]any)); m == n {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 1000 instances exist after the client gave up", n)
		}
	}
	t.Logf("client gave up; %d instances exist", n)
}

// TestLowSpaceFreesAbortedPushesSoon: on a store low on space, the chunks
// of a push that was aborted (its upload lease ended, nothing committed)
// are freed within seconds, not after the hour-long grace period.
func TestLowSpaceFreesAbortedPushesSoon(t *testing.T) {
	dir := t.TempDir()
	d, err := regdaemon.Start(regdaemon.Config{ListenAddr: "127.0.0.1:0", DataDir: dir, GCInterval: time.Hour, GCGrace: time.Hour,
		LowSpace: 1 << 62, LowSpaceGrace: time.Millisecond, LowSpaceCheck: 50 * time.Millisecond, Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	if _, err := d.Registry.StartUpload(ctx, "aborted-push"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		raw := make([]byte, chunk.Size)
		rand.Read(raw)
		raw[0] = byte(i + 1)
		if err := d.Registry.PutChunk(ctx, chunk.Digest(raw), chunk.Encode(nil, raw), nil); err != nil {
			t.Fatal(err)
		}
	}
	chunks := func() int {
		n := 0
		filepath.WalkDir(filepath.Join(dir, "packs"), func(_ string, e os.DirEntry, _ error) error {
			if e != nil && !e.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	// While the push's lease lives, low-space passes keep its chunks.
	if n := chunks(); n != 3 {
		t.Fatalf("%d chunks stored during the push, want 3", n)
	}
	if err := d.Registry.EndUpload(ctx, "aborted-push"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); chunks() > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d chunks of the aborted push still stored 15 s later on a store low on space", chunks())
		}
	}
}
