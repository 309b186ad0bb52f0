package registry_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry"
)

func ociStatus(err error) int {
	var oe *registry.OCIError
	if errors.As(err, &oe) {
		return oe.Status
	}
	return 0
}

// TestOCIBlobsBelongToRepositories: a blob is reachable only through the
// repositories that link it (pushed there or mounted from one that does);
// deleting it unlinks it from that repository only.
func TestOCIBlobsBelongToRepositories(t *testing.T) {
	ctx := context.Background()
	r := newRegistry(t)
	d := ociBlob(t, r, "team/a", "shared layer")
	if n, err := r.OCIBlobSize(ctx, "team/a", d); err != nil || n != int64(len("shared layer")) {
		t.Fatalf("size: %d %v", n, err)
	}
	if _, err := r.OCIBlobSize(ctx, "team/b", d); ociStatus(err) != 404 {
		t.Fatalf("a blob read through a repository that never linked it: %v", err)
	}
	if ok, err := r.OCIMountBlob(ctx, "team/b", "team/c", d); err != nil || ok {
		t.Fatalf("a mount from a repository without the blob: %v %v", ok, err)
	}
	if ok, err := r.OCIMountBlob(ctx, "team/b", "team/a", d); err != nil || !ok {
		t.Fatalf("a mount: %v %v", ok, err)
	}
	if _, err := r.OCIBlobSize(ctx, "team/b", d); err != nil {
		t.Fatalf("the mounted blob: %v", err)
	}
	if err := r.OCIDeleteBlob(ctx, "team/a", d); err != nil {
		t.Fatal(err)
	}
	if _, err := r.OCIBlobSize(ctx, "team/a", d); ociStatus(err) != 404 {
		t.Fatalf("a deleted blob: %v", err)
	}
	if _, err := r.OCIBlobSize(ctx, "team/b", d); err != nil {
		t.Fatalf("the other repository's link after a delete: %v", err)
	}
	if err := r.OCIDeleteBlob(ctx, "team/a", d); ociStatus(err) != 404 {
		t.Fatalf("a second delete: %v", err)
	}
	if _, err := r.OCIBlobSize(ctx, "team/a", "sha256:nothex"); ociStatus(err) != 400 {
		t.Fatalf("a bad digest: %v", err)
	}
}

// TestReferrersLinksFollowTheirManifests: the referrers of a subject are the
// manifests pushed with it as subject, filtered by artifact type; a deleted
// referrer leaves the list at once; a link left behind (a delete cut off
// between its steps) is skipped, then dropped by GC.
func TestReferrersLinksFollowTheirManifests(t *testing.T) {
	ctx := context.Background()
	r, _, dir := newFaultyRegistryIn(t, 1)
	repo := "vm/signed"
	cfg := ociBlob(t, r, repo, "{}")
	subject := ociPush(t, r, repo, "v1", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":`+
		desc("application/vnd.oci.image.config.v1+json", cfg, 2)+`,"layers":[]}`)
	attach := func(artifactType string, n int) string {
		return ociPush(t, r, repo, fmt.Sprintf("sha256-x%d", n), `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"artifactType":"`+artifactType+`","config":`+desc("application/vnd.oci.empty.v1+json", cfg, 2)+`,"layers":[],`+
			`"subject":`+desc("application/vnd.oci.image.manifest.v1+json", subject, 10)+`,"annotations":{"n":"`+fmt.Sprint(n)+`"}}`)
	}
	sig, sbom := attach("application/vnd.example.sig", 1), attach("application/spdx+json", 2)
	list := func(artifactType string) []string {
		t.Helper()
		refs, filtered, err := r.OCIReferrers(ctx, repo, subject, artifactType)
		if err != nil || filtered != (artifactType != "") {
			t.Fatalf("referrers: %v filtered %v", err, filtered)
		}
		var out []string
		for _, d := range refs {
			out = append(out, d.Digest)
			if d.MediaType != "application/vnd.oci.image.manifest.v1+json" || d.Size <= 0 || d.ArtifactType == "" {
				t.Fatalf("descriptor %+v", d)
			}
		}
		slices.Sort(out)
		return out
	}
	both := []string{sig, sbom}
	slices.Sort(both)
	if got := list(""); !slices.Equal(got, both) {
		t.Fatalf("referrers %v, want %v", got, both)
	}
	if got := list("application/spdx+json"); !slices.Equal(got, []string{sbom}) {
		t.Fatalf("filtered %v", got)
	}
	// None: an empty list (JSON []), not null.
	if none, _, err := r.OCIReferrers(ctx, repo, "sha256:"+strings.Repeat("0", 64), ""); err != nil || none == nil || len(none) != 0 {
		t.Fatalf("referrers of an unknown subject: %#v %v", none, err)
	}
	if _, _, err := r.OCIReferrers(ctx, repo, "sha256:bad", ""); ociStatus(err) != 400 {
		t.Fatalf("a bad subject digest: %v", err)
	}
	if err := r.OCIDeleteManifest(ctx, repo, sig); err != nil {
		t.Fatal(err)
	}
	if got := list(""); !slices.Equal(got, []string{sbom}) {
		t.Fatalf("after deleting the signature %v", got)
	}
	// The sbom's manifest link goes, its referrer link stays (an
	// interrupted delete): not listed, and GC drops the link.
	if err := deleteRepoManifestLink(dir, repo, sbom); err != nil {
		t.Fatal(err)
	}
	if got := list(""); len(got) != 0 {
		t.Fatalf("a referrer whose manifest is gone is listed: %v", got)
	}
	if left := referrerLinks(t, dir, repo); left != 1 {
		t.Fatalf("%d referrer links before GC, want the one left behind", left)
	}
	r.Grace = time.Hour
	if _, err := r.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if left := referrerLinks(t, dir, repo); left != 0 {
		t.Fatalf("%d referrer links left after GC", left)
	}
}

// TestRevertTo: reverting to a tag (or a number) drops every later tag.
func TestRevertTo(t *testing.T) {
	ctx := context.Background()
	r := newRegistry(t)
	d := putRandom(t, r, 1)
	var id string
	for _, tag := range []string{"a", "b", "c", "d"} {
		res, err := r.Commit(ctx, commitReq("rev", tag, d...))
		if err != nil {
			t.Fatal(err)
		}
		id = res.TemplateID
	}
	tags := func() string {
		tm, err := r.GetTemplate(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range tm.Versions {
			out = append(out, v.Tag)
		}
		return strings.Join(out, ",")
	}
	if err := r.RevertTo(ctx, id, "c", -1); err != nil || tags() != "a,b,c" {
		t.Fatalf("revert to c: %v %s", err, tags())
	}
	if err := r.RevertTo(ctx, id, "", 0); err != nil || tags() != "a" {
		t.Fatalf("revert to number 0: %v %s", err, tags())
	}
	if err := r.RevertTo(ctx, id, "zz", -1); !errors.Is(err, registry.ErrTagNotFound) {
		t.Fatalf("revert to an unknown tag: %v", err)
	}
	if err := r.RevertTo(ctx, id, "", -1); err != nil {
		t.Fatal(err) // no tag, no number: the latest goes
	}
	if _, err := r.GetTemplate(ctx, id); err == nil && tags() != "" {
		t.Fatalf("after reverting the last tag: %s", tags())
	}
}

// deleteRepoManifestLink removes a repository's link to a manifest as an
// interrupted delete would leave it.
func deleteRepoManifestLink(dir, repo, digest string) error {
	return os.Remove(filepath.Join(dir, "oci", "repos", filepath.FromSlash(repo), "_manifests", strings.TrimPrefix(digest, "sha256:")))
}

// referrerLinks counts a repository's referrer links on disk.
func referrerLinks(t *testing.T, dir, repo string) int {
	n := 0
	filepath.WalkDir(filepath.Join(dir, "oci", "repos", filepath.FromSlash(repo), "_referrers"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}
