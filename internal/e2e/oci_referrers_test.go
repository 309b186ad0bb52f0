package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestOCIReferrers: an artifact pushed with a subject (a signature, an
// SBOM: what oras attach, regctl artifact put --subject and cosign in OCI
// 1.1 mode send) is answered with OCI-Subject and listed by the referrers
// API, filtered by artifactType on request; go-containerregistry's client
// (a real third-party one) lists it; deleting the artifact unlists it.
// Without the API those clients wrote sha256-<digest> fallback tags.
func TestOCIReferrers(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	host := strings.TrimPrefix(reg.URL, "http://")
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/vm/signed:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	subject, _ := img.Digest()
	subjectMF, _ := img.RawManifest()
	mt, _ := img.MediaType()

	do := func(method, path, contentType string, body []byte) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, reg.URL+path, bytes.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp, data
	}
	blob := func(data string) string {
		resp, _ := do("POST", "/v2/vm/signed/blobs/uploads/?digest="+sha256Hex([]byte(data)), "", []byte(data))
		if resp.StatusCode != 201 {
			t.Fatalf("blob upload: HTTP %d", resp.StatusCode)
		}
		return sha256Hex([]byte(data))
	}
	empty, sig, sbom := blob("{}"), blob("signature bytes"), blob("sbom bytes")
	artifact := func(artifactType, layer string, size int) string {
		return `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"` + artifactType + `",` +
			`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + empty + `","size":2},` +
			`"layers":[{"mediaType":"application/octet-stream","digest":"` + layer + `","size":` + strconv.Itoa(size) + `}],` +
			`"subject":{"mediaType":"` + string(mt) + `","digest":"` + subject.String() + `","size":` + strconv.Itoa(len(subjectMF)) + `},` +
			`"annotations":{"org.example.kind":"` + artifactType + `"}}`
	}
	put := func(m string) string {
		t.Helper()
		d := sha256Hex([]byte(m))
		resp, body := do("PUT", "/v2/vm/signed/manifests/"+d, "application/vnd.oci.image.manifest.v1+json", []byte(m))
		if resp.StatusCode != 201 || resp.Header.Get("OCI-Subject") != subject.String() {
			t.Fatalf("PUT artifact: HTTP %d OCI-Subject %q %s", resp.StatusCode, resp.Header.Get("OCI-Subject"), body)
		}
		return d
	}
	sigDigest := put(artifact("application/vnd.example.signature", sig, 15))
	put(artifact("application/spdx+json", sbom, 10))

	list := func(query string) ([]map[string]any, http.Header) {
		t.Helper()
		resp, body := do("GET", "/v2/vm/signed/referrers/"+subject.String()+query, "", nil)
		var idx struct {
			MediaType string           `json:"mediaType"`
			Manifests []map[string]any `json:"manifests"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(body, &idx) != nil || idx.MediaType != "application/vnd.oci.image.index.v1+json" {
			t.Fatalf("referrers%s: HTTP %d %s", query, resp.StatusCode, body)
		}
		return idx.Manifests, resp.Header
	}
	all, h := list("")
	if len(all) != 2 || h.Get("OCI-Filters-Applied") != "" {
		t.Fatalf("referrers: %v (filters %q), want both artifacts", all, h.Get("OCI-Filters-Applied"))
	}
	sigs, h := list("?artifactType=application/vnd.example.signature")
	if len(sigs) != 1 || sigs[0]["digest"] != sigDigest || sigs[0]["artifactType"] != "application/vnd.example.signature" ||
		h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("filtered referrers: %v (filters %q)", sigs, h.Get("OCI-Filters-Applied"))
	}
	if none, _ := list("?artifactType=x/none"); len(none) != 0 {
		t.Fatalf("referrers of another type: %v", none)
	}
	if resp, body := do("GET", "/v2/vm/signed/referrers/"+zeroDigest, "", nil); resp.StatusCode != 200 || !strings.Contains(string(body), `"manifests":[]`) {
		t.Fatalf("referrers of an unknown subject: HTTP %d %s, want an empty index", resp.StatusCode, body)
	}

	// A real client finds them through the API.
	d, err := name.NewDigest(host+"/vm/signed@"+subject.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Referrers(d)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 2 {
		t.Fatalf("go-containerregistry's referrers: %+v %v", im, err)
	}

	// Deleted, it is no longer listed; no fallback tag was ever written.
	if resp, _ := do("DELETE", "/v2/vm/signed/manifests/"+sigDigest, "", nil); resp.StatusCode != 202 {
		t.Fatalf("delete: HTTP %d", resp.StatusCode)
	}
	if left, _ := list(""); len(left) != 1 || left[0]["artifactType"] != "application/spdx+json" {
		t.Fatalf("referrers after deleting the signature: %v", left)
	}
	if _, body := do("GET", "/v2/vm/signed/tags/list", "", nil); strings.Contains(string(body), "sha256-") {
		t.Fatalf("tags %s: a fallback tag was written", body)
	}
}
