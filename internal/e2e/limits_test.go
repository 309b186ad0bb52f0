package e2e

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

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
