package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestOCIBlobsBelongToRepositories: a blob is reachable and deletable only
// through a repository that links it (pushed or mounted there, or named by
// one of its manifests). Any repository name used to read any blob, and a
// DELETE through any name removed a blob other repositories' manifests need.
func TestOCIBlobsBelongToRepositories(t *testing.T) {
	dir := t.TempDir()
	reg := testenv.StartRegistry(t, dir)
	host := strings.TrimPrefix(reg.URL, "http://")
	ref := func(s string) name.Reference { r, _ := name.ParseReference(host+"/"+s, name.Insecure); return r }
	img, _ := random.Image(4096, 2)
	if err := remote.Write(ref("team/a:v1"), img); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	layer := d.String()
	do := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, reg.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	expect := func(method, path string, want int) {
		t.Helper()
		if code, body := do(method, path); code != want {
			t.Errorf("%s %s: HTTP %d %.200s, want %d", method, path, code, body, want)
		}
	}
	expect("GET", "/v2/team/a/blobs/"+layer, 200)
	expect("GET", "/v2/team/b/blobs/"+layer, 404)
	expect("HEAD", "/v2/team/b/blobs/"+layer, 404)
	expect("DELETE", "/v2/team/b/blobs/"+layer, 404)
	if _, err := remote.Image(ref("team/a:v1")); err != nil {
		t.Fatal(err)
	}
	// A manifest cannot adopt blobs its repository has not got.
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	req, _ := http.NewRequest("PUT", reg.URL+"/v2/team/c/manifests/v1", strings.NewReader(string(raw)))
	req.Header.Set("Content-Type", string(mt))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "MANIFEST_BLOB_UNKNOWN") {
		t.Errorf("manifest naming another repository's blobs: HTTP %d %s", resp.StatusCode, body)
	}
	// A mount from a repository without the blob is an ordinary upload.
	expect("POST", "/v2/team/b/blobs/uploads/?mount="+layer+"&from=team/none", 202)
	expect("POST", "/v2/team/b/blobs/uploads/?mount="+layer+"&from=team/a", 201)
	expect("GET", "/v2/team/b/blobs/"+layer, 200)
	// Unlinking from b leaves a whole.
	expect("DELETE", "/v2/team/b/blobs/"+layer, 202)
	expect("GET", "/v2/team/b/blobs/"+layer, 404)
	expect("GET", "/v2/team/a/blobs/"+layer, 200)
	if _, err := remote.Image(ref("team/a:v1")); err != nil {
		t.Errorf("team/a after team/b deleted its link: %v", err)
	}
	// Repositories stored before links existed are linked from their
	// manifests on first use.
	if err := os.RemoveAll(filepath.Join(dir, "oci", "repos", "team", "a", "_layers")); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "oci", "repos", "team", "a", "_links"))
	if _, err := os.Stat(filepath.Join(dir, "oci", "repos", "team", "a", "_manifests")); err != nil {
		t.Fatalf("store layout changed: %v", err)
	}
	expect("GET", "/v2/team/a/blobs/"+layer, 200)
	if _, err := remote.Image(ref("team/a:v1")); err != nil {
		t.Errorf("team/a after migration: %v", err)
	}
}
