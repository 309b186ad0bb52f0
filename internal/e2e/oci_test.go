package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corral-build/corral/client"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestOCIDistribution: go-containerregistry (the library crane and ko are
// built on) pushes, lists, pulls and deletes images and indexes through the
// registry's /v2/ endpoint, on both stores.
func TestOCIDistribution(t *testing.T) { eachStore(t, testOCIDistribution) }

func testOCIDistribution(t *testing.T, reg *regdaemon.Daemon) {
	host := strings.TrimPrefix(reg.URL, "http://")
	ref := func(s string) name.Reference {
		r, err := name.ParseReference(host+"/"+s, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	img, err := random.Image(3<<20, 3) // three 3 MiB layers
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref("ci/base:v1"), img); err != nil {
		t.Fatalf("push: %v", err)
	}
	want, _ := img.Digest()
	got, err := remote.Image(ref("ci/base:v1"))
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled digest %s, pushed %s", d, want)
	}
	wantLayers, _ := img.Layers()
	gotLayers, _ := got.Layers()
	for i, l := range gotLayers {
		if !sameLayer(t, wantLayers[i], l) {
			t.Fatalf("layer %d differs", i)
		}
	}
	// A second tag of the same image uploads nothing new; an index too.
	if err := remote.Write(ref("ci/base:v2"), img); err != nil {
		t.Fatal(err)
	}
	idx, _ := random.Index(1<<20, 1, 2)
	if err := remote.WriteIndex(ref("ci/multi:latest"), idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	if gi, err := remote.Index(ref("ci/multi:latest")); err != nil {
		t.Fatalf("pull index: %v", err)
	} else if d, _ := gi.Digest(); d != mustDigest(t, idx) {
		t.Fatal("index digest differs")
	}
	tags, err := remote.List(ref("ci/base:v1").Context())
	if err != nil || strings.Join(tags, ",") != "v1,v2" {
		t.Fatalf("tags %v %v", tags, err)
	}
	repos, err := remote.Catalog(context.Background(), ref("ci/base:v1").Context().Registry)
	if err != nil || strings.Join(repos, ",") != "ci/base,ci/multi" {
		t.Fatalf("catalog %v %v", repos, err)
	}
	// Deleting by digest removes the manifest and both tags.
	if err := remote.Delete(ref("ci/base@" + want.String())); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(ref("ci/base:v1")); err == nil || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
		t.Fatalf("pull after delete: %v", err)
	}
}

func mustDigest(t *testing.T, d interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatalf("digest: %v", err)
	}
	return h
}

func sameLayer(t *testing.T, a, b v1.Layer) bool {
	t.Helper()
	read := func(l v1.Layer) []byte {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	return bytes.Equal(read(a), read(b))
}

// TestOCIChunkedUploadAndErrors drives the protocol by hand: chunked PATCHes
// with Content-Range, upload status, a wrong range, a wrong digest, ranged
// blob reads, and the spec's error codes.
func TestOCIChunkedUploadAndErrors(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	do := func(method, path string, hdr map[string]string, body []byte) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, reg.URL+path, bytes.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	expect := func(resp *http.Response, code int, inBody string) string {
		t.Helper()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != code || !strings.Contains(string(data), inBody) {
			t.Fatalf("%s %s: HTTP %d %s, want %d with %q", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, data, code, inBody)
		}
		return string(data)
	}
	blob := make([]byte, 2<<20+12345) // spans three chunks, the last partial
	rand.Read(blob[:1<<20])           // the second MiB stays zero
	copy(blob[2<<20:], "tail bytes")
	sum := sha256.Sum256(blob)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	expect(do("GET", "/v2/", nil, nil), 200, "{}")
	resp := do("POST", "/v2/vm/disk/blobs/uploads/", nil, nil)
	expect(resp, 202, "")
	loc := resp.Header.Get("Location")
	first := 1<<20 + 100 // not chunk-aligned: the tail carries over
	expect(do("PATCH", loc, map[string]string{"Content-Range": fmt.Sprintf("0-%d", first-1)}, blob[:first]), 202, "")
	status := do("GET", loc, nil, nil)
	if status.StatusCode != 204 || status.Header.Get("Range") != fmt.Sprintf("0-%d", first-1) {
		t.Fatalf("upload status %d Range %q", status.StatusCode, status.Header.Get("Range"))
	}
	expect(do("PATCH", loc, map[string]string{"Content-Range": "5-10"}, []byte("xxxxxx")), 416, "BLOB_UPLOAD_INVALID")
	expect(do("PATCH", loc, map[string]string{"Content-Range": fmt.Sprintf("%d-%d", first, len(blob)-11)}, blob[first:len(blob)-10]), 202, "")
	expect(do("PUT", loc+"?digest=sha256:"+strings.Repeat("0", 64), nil, blob[len(blob)-10:]), 400, "DIGEST_INVALID")
	expect(do("GET", loc, nil, nil), 404, "BLOB_UPLOAD_UNKNOWN") // a failed finish ends the upload

	// Again, finished with the last bytes in the PUT; a final chunk whose
	// Content-Range does not start where the upload ends is 416 (the OCI
	// conformance suite; it was appended as if in order).
	resp = do("POST", "/v2/vm/disk/blobs/uploads/", nil, nil)
	loc = resp.Header.Get("Location")
	do("PATCH", loc, nil, blob[:len(blob)-10])
	expect(do("PUT", loc+"?digest="+digest, map[string]string{"Content-Range": "5-14"}, blob[len(blob)-10:]), 416, "BLOB_UPLOAD_INVALID")
	resp = do("PUT", loc+"?digest="+digest, map[string]string{"Content-Range": fmt.Sprintf("%d-%d", len(blob)-10, len(blob)-1)}, blob[len(blob)-10:])
	expect(resp, 201, "")
	if resp.Header.Get("Docker-Content-Digest") != digest {
		t.Fatalf("digest header %q", resp.Header.Get("Docker-Content-Digest"))
	}
	if got := expect(do("GET", "/v2/vm/disk/blobs/"+digest, nil, nil), 200, ""); got != string(blob) {
		t.Fatal("blob read back differs")
	}
	part := do("GET", "/v2/vm/disk/blobs/"+digest, map[string]string{"Range": "bytes=1048000-2097200"}, nil)
	if got := expect(part, 206, ""); got != string(blob[1048000:2097201]) || part.Header.Get("Content-Range") != fmt.Sprintf("bytes 1048000-2097200/%d", len(blob)) {
		t.Fatalf("range read: %d bytes, Content-Range %q", len(got), part.Header.Get("Content-Range"))
	}
	// A suffix range: the last 500 bytes (it was answered 416).
	suffix := do("GET", "/v2/vm/disk/blobs/"+digest, map[string]string{"Range": "bytes=-500"}, nil)
	if got := expect(suffix, 206, ""); got != string(blob[len(blob)-500:]) ||
		suffix.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", len(blob)-500, len(blob)-1, len(blob)) {
		t.Fatalf("suffix range read: %d bytes, Content-Range %q", len(got), suffix.Header.Get("Content-Range"))
	}
	// Monolithic upload and cross-repository mount.
	small := []byte(`{"architecture":"arm64","os":"darwin"}`)
	ssum := sha256.Sum256(small)
	sdigest := "sha256:" + hex.EncodeToString(ssum[:])
	expect(do("POST", "/v2/vm/disk/blobs/uploads/?digest="+sdigest, nil, small), 201, "")
	expect(do("POST", "/v2/other/blobs/uploads/?mount="+digest+"&from=vm/disk", nil, nil), 201, "")

	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/octet-stream","digest":%q,"size":%d}]}`,
		sdigest, len(small), digest, len(blob))
	oci := map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
	expect(do("PUT", "/v2/vm/disk/manifests/v1", oci, []byte(manifest)), 201, "")
	got := do("GET", "/v2/vm/disk/manifests/v1", nil, nil)
	if body := expect(got, 200, ""); body != manifest || got.Header.Get("Content-Type") != oci["Content-Type"] {
		t.Fatalf("manifest read back: %s (%s)", body, got.Header.Get("Content-Type"))
	}

	missing := strings.Replace(manifest, digest, "sha256:"+strings.Repeat("a", 64), 1)
	for _, tc := range []struct {
		method, path string
		body         []byte
		code         int
		errCode      string
	}{
		{"PUT", "/v2/vm/disk/manifests/v2", []byte(missing), 400, "MANIFEST_BLOB_UNKNOWN"},
		{"PUT", "/v2/vm/disk/manifests/v2", []byte("not json"), 400, "MANIFEST_INVALID"},
		{"PUT", "/v2/vm/disk/manifests/sha256:" + strings.Repeat("b", 64), []byte(manifest), 400, "DIGEST_INVALID"},
		{"GET", "/v2/vm/disk/manifests/nope", nil, 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/vm/disk/blobs/sha256:" + strings.Repeat("c", 64), nil, 404, "BLOB_UNKNOWN"},
		{"GET", "/v2/vm/disk/blobs/md5:abc", nil, 400, "DIGEST_INVALID"},
		{"GET", "/v2/Bad_Name/tags/list", nil, 400, "NAME_INVALID"},
		{"GET", "/v2/no/such/repo/tags/list", nil, 404, "NAME_UNKNOWN"},
		{"GET", "/v2/vm/disk/blobs/uploads/nope", nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"GET", "/v2/a..b/tags/list", nil, 400, "NAME_INVALID"},
		// An invalid tag names no manifest (distribution: 404).
		{"GET", "/v2/vm/disk/manifests/-bad-", nil, 404, "MANIFEST_UNKNOWN"},
		// An endpoint this registry lacks is not "no such repository": a
		// client that probes it (oras) falls back instead of stopping.
		{"GET", "/v2/vm/disk/nothing-here", nil, 404, "UNSUPPORTED"},
	} {
		expect(do(tc.method, tc.path, oci, tc.body), tc.code, tc.errCode)
	}
}

// TestOCISharesChunksWithTemplates: a disk pushed as a template and then as
// an OCI blob is stored once; GC after the OCI manifest is deleted keeps
// the template's chunks and frees nothing the template needs.
func TestOCISharesChunksWithTemplates(t *testing.T) {
	store := t.TempDir()
	reg := testenv.StartRegistry(t, store)
	reg.Registry.Grace = 0
	ctx := context.Background()
	src := newVMDir(t, allMiB(6)...)
	rc, _ := client.NewRegistry(reg.URL)
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "shared-disk", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	countChunks := func() int {
		n := 0
		filepath.WalkDir(filepath.Join(store, "packs"), func(_ string, d os.DirEntry, _ error) error {
			if d != nil && !d.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	before := countChunks()
	disk, _ := os.ReadFile(filepath.Join(src, "disk.img"))
	sum := sha256.Sum256(disk)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	resp, err := http.Post(reg.URL+"/v2/vm/shared/blobs/uploads/?digest="+digest, "application/octet-stream", bytes.NewReader(disk))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("upload: %v %v", resp, err)
	}
	resp.Body.Close()
	if after := countChunks(); after != before {
		t.Fatalf("the OCI blob stored %d new chunks; the template already had them all", after-before)
	}
	// Unreferenced by any manifest, the blob goes with GC; the template stays
	// whole. The first pass moves the blob record to the attic, the next
	// (a grace period later; Grace is 0 here) deletes it.
	for pass := range 2 {
		s, err := reg.Registry.GC(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pass == 0 && s.MetaCondemned != 1 || pass == 1 && s.ManifestsFreed != 1 {
			t.Fatalf("GC pass %d: %+v, want the blob record condemned then freed", pass, s)
		}
	}
	if r, _ := http.Get(reg.URL + "/v2/vm/shared/blobs/" + digest); r.StatusCode != 404 {
		t.Fatalf("unreferenced blob kept: HTTP %d", r.StatusCode)
	}
	dest := t.TempDir()
	if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Dest: dest}); err != nil {
		t.Fatalf("template pull after GC: %v", err)
	}
	sameFiles(t, src, dest)
}
