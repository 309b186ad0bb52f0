package registry_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/corral-build/corral/internal/registry"
)

// TestDotDotNamesAreRefusedAtTheEdge: names with ".." passed validation and
// then failed deep in storage (an internal error, HTTP 500). They are refused
// up front as bad input, naming the field.
func TestDotDotNamesAreRefusedAtTheEdge(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	digests := putRandom(t, r, 1)
	for _, req := range []struct{ name, tag, field string }{
		{"a..b", "v1", "template"}, {"ok", "v1..2", "tag"}, {"..", "v1", "template"},
	} {
		_, err := r.Commit(ctx, commitReq(req.name, req.tag, digests...))
		var inv *registry.InvalidError
		if !errors.As(err, &inv) || inv.Field != req.field {
			t.Errorf("commit %q:%q: %v, want an invalid %s", req.name, req.tag, err, req.field)
		}
	}
	_, err := r.OCIPutManifest(ctx, "vm/x", "v1..2", "application/vnd.oci.image.manifest.v1+json",
		[]byte(`{"schemaVersion":2,"config":{"digest":"sha256:`+digests[0]+`","size":1},"layers":[]}`))
	var oe *registry.OCIError
	if !errors.As(err, &oe) || oe.Status != http.StatusBadRequest || oe.Code != "TAG_INVALID" {
		t.Errorf("OCI manifest tag v1..2: %v, want 400", err)
	}
}
