package registry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/registry"
)

// ociPush stores blobs and a manifest in repo under ref.
func ociPush(t *testing.T, r *registry.Registry, repo, ref, manifest string) string {
	t.Helper()
	d, err := r.OCIPutManifest(context.Background(), repo, ref, "", []byte(manifest))
	if err != nil {
		t.Fatalf("put %s:%s: %v", repo, ref, err)
	}
	return d
}

func ociBlob(t *testing.T, r *registry.Registry, repo, data string) string {
	t.Helper()
	ctx := context.Background()
	id, err := r.OCIStartUpload(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256Digest([]byte(data))
	if err := r.OCIFinishUpload(ctx, repo, id, d, strings.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return d
}

func desc(mediaType, digest string, size int) string {
	return fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d}`, mediaType, digest, size)
}

// TestOnlyVMImagesAreTemplates: of a repository's tags only VM images
// (Tart's layers) are template versions; a signature attached by the
// referrers fallback tag, an index, an artifact with a subject and a plain
// container image are not, and never become the latest version (a start
// without a tag used to fail on "unsupported manifest media type ...index").
// Deleting the template deletes them all; deleting a version its fallback
// tags.
func TestOnlyVMImagesAreTemplates(t *testing.T) {
	ctx := context.Background()
	r := newRegistry(t)
	repo := "macos/sonoma"
	cfg := ociBlob(t, r, repo, `{"architecture":"arm64","os":"darwin"}`)
	vmcfg := ociBlob(t, r, repo, `{"os":"darwin"}`)
	disk := ociBlob(t, r, repo, "disk")
	vm := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` +
		desc("application/vnd.oci.image.config.v1+json", cfg, 38) + `,"layers":[` +
		desc("application/vnd.cirruslabs.tart.config.v1", vmcfg, 15) + `,` + desc("application/vnd.cirruslabs.tart.disk.v2", disk, 4) + `]}`
	vmDigest := ociPush(t, r, repo, "v1", vm)
	hexd := strings.TrimPrefix(vmDigest, "sha256:")

	emptyCfg := ociBlob(t, r, repo, "{}")
	sig := ociBlob(t, r, repo, "signature")
	ociPush(t, r, repo, "sha256-"+hexd+".sig", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":`+
		desc("application/vnd.oci.image.config.v1+json", emptyCfg, 2)+`,"layers":[`+desc("application/vnd.dev.cosign.simplesigning.v1+json", sig, 9)+`]}`)
	ociPush(t, r, repo, "sha256-"+hexd, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	ociPush(t, r, repo, "sbom", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/spdx+json","config":`+
		desc("application/vnd.oci.empty.v1+json", emptyCfg, 2)+`,"layers":[`+desc("application/spdx+json", sig, 9)+`],"subject":`+
		desc("application/vnd.oci.image.manifest.v1+json", vmDigest, len(vm))+`}`)
	// A plain container image, in a repository of its own.
	appCfg := ociBlob(t, r, "app/web", `{"architecture":"amd64","os":"linux"}`)
	appLayer := ociBlob(t, r, "app/web", "tar bytes")
	ociPush(t, r, "app/web", "latest", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":`+
		desc("application/vnd.oci.image.config.v1+json", appCfg, 37)+`,"layers":[`+desc("application/vnd.oci.image.layer.v1.tar+gzip", appLayer, 9)+`]}`)

	list, err := r.ListTemplates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tm := range list {
		names = append(names, tm.Name)
	}
	if !slices.Equal(names, []string{repo}) {
		t.Fatalf("templates %v, want only the VM image's repository", names)
	}
	d, err := r.GetTemplate(ctx, list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Versions) != 1 || d.Versions[0].Tag != "v1" {
		t.Fatalf("versions %+v, want v1 only", d.Versions)
	}
	if v, ok := d.Latest(); !ok || v.Tag != "v1" {
		t.Fatalf("the latest version: %+v, want v1", v)
	}
	// An invalid tag is no manifest: 404, as distribution answers.
	var oe *registry.OCIError
	if _, _, _, err := r.OCIGetManifest(ctx, repo, "-bad-"); !errors.As(err, &oe) || oe.Status != 404 || oe.Code != "MANIFEST_UNKNOWN" {
		t.Fatalf("GET of an invalid tag: %v, want 404 MANIFEST_UNKNOWN", err)
	}

	// Deleting the version takes its fallback tags with it.
	if err := r.DeleteTag(ctx, list[0].ID, "v1"); err != nil {
		t.Fatal(err)
	}
	tags, err := r.OCITags(ctx, repo)
	if err != nil || !slices.Equal(tags, []string{"sbom"}) {
		t.Fatalf("tags after deleting v1: %v %v, want the subject-bound sbom only (its referrer link goes with GC)", tags, err)
	}
	ociPush(t, r, repo, "v2", vm)
	list, _ = r.ListTemplates(ctx)
	if err := r.DeleteTemplate(ctx, list[0].ID); err != nil {
		t.Fatal(err)
	}
	if tags, err := r.OCITags(ctx, repo); err == nil && len(tags) != 0 {
		t.Fatalf("tags after deleting the template: %v", tags)
	}
}
