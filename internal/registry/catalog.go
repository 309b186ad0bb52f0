package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/storage"
)

// One catalog for templates and OCI images.
//
// An OCI repository with at least one tag of a VM image (Tart's layers) is a
// template of the catalog (GET /api/v1/registry/vm): its id is
// apiv1.OCITemplateID(repository), its name the repository, its versions
// those tags, numbered 0..n-1 in the order they were last pushed, so the
// latest push is the latest version. Other tags (signatures, SBOMs,
// referrers' fallback tags, indexes, container images) stay in /v2/ only. A version's
// size is what a pull transfers (config and layers), its config_file the
// config blob, images the layers (nvram the Tart NVRAM layer). The template's
// arch is the image config's architecture. Nodes whose driver pulls OCI
// images (tart) start them like any template; deleting the template or a
// version deletes the repository's tags.
//
// The other way round, /v2/_catalog lists the names of templates pushed
// through the Anka registry API (where a name is a valid repository name),
// and their tags/list their tags; their manifests are not served as OCI.

// Tart's media types (../shared/spec/drivers.md B12).
const (
	tartConfigLayer = "application/vnd.cirruslabs.tart.config.v1"
	tartDiskLayer   = "application/vnd.cirruslabs.tart.disk.v2"
	tartNVRAMLayer  = "application/vnd.cirruslabs.tart.nvram.v1"
)

type ociVersion struct {
	apiv1.TemplateVersion
	pushed time.Time
}

// ociTemplate reads an OCI repository as a template; ErrNotFound when it has
// no tags.
func (r *Registry) ociTemplate(ctx context.Context, repo string) (apiv1.TemplateDetail, error) {
	tags, err := r.OCITags(ctx, repo)
	if err != nil {
		return apiv1.TemplateDetail{}, err
	}
	var versions []ociVersion
	for _, tag := range tags {
		v, err := r.ociVersion(ctx, repo, tag)
		if errors.Is(err, ErrNotFound) || errors.Is(err, errNotVM) {
			continue // deleted meanwhile, or not a VM image
		}
		if err != nil {
			return apiv1.TemplateDetail{}, err
		}
		versions = append(versions, v)
	}
	if len(versions) == 0 {
		return apiv1.TemplateDetail{}, ErrNotFound
	}
	slices.SortFunc(versions, func(a, b ociVersion) int {
		return cmp.Or(a.pushed.Compare(b.pushed), strings.Compare(a.Tag, b.Tag))
	})
	d := apiv1.TemplateDetail{Template: apiv1.Template{ID: apiv1.OCITemplateID(repo), Name: repo}, Versions: []apiv1.TemplateVersion{}}
	for i, v := range versions {
		v.Number = i // from 0, as the reference numbers tags
		v.LastPush, v.CreationDate = v.pushed.Unix(), v.pushed.Unix()
		d.Versions = append(d.Versions, v.TemplateVersion)
		d.Size += v.Size // the reference's size is its tags' sum
	}
	last := versions[len(versions)-1]
	d.Arch, d.LastPush = last.Arch, last.pushed.Unix()
	return d, nil
}

func (r *Registry) ociVersion(ctx context.Context, repo, tag string) (ociVersion, error) {
	v := ociVersion{TemplateVersion: apiv1.TemplateVersion{Tag: tag, Images: []string{}, StateFiles: []string{}}}
	info, err := r.st.Stat(ctx, ociRepoPath(repo)+"/_tags/"+tag)
	if errors.Is(err, storage.ErrNotFound) {
		return v, ErrNotFound
	}
	if err != nil {
		return v, err
	}
	v.pushed = info.ModTime
	mt, data, _, err := r.OCIGetManifest(ctx, repo, tag)
	var oe *OCIError
	if errors.As(err, &oe) {
		return v, ErrNotFound
	}
	if err != nil {
		return v, err
	}
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	var m struct {
		Config       *desc             `json:"config"`
		Layers       []desc            `json:"layers"`
		Manifests    []desc            `json:"manifests"`
		Annotations  map[string]string `json:"annotations"`
		ArtifactType string            `json:"artifactType"`
		Subject      *desc             `json:"subject"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return v, fmt.Errorf("manifest %s:%s: %w", repo, tag, err)
	}
	types := make([]string, len(m.Layers))
	for i, l := range m.Layers {
		types[i] = l.MediaType
	}
	if !vmImage(types, m.Subject != nil || m.ArtifactType != "") {
		return v, errNotVM
	}
	v.Description = "OCI image (" + cmp.Or(m.Annotations["org.opencontainers.image.description"], mt) + ")"
	if m.Config != nil {
		v.ConfigFile, v.Size = m.Config.Digest, m.Config.Size
		v.Arch = r.ociArch(ctx, repo, m.Config.Digest, m.Config.Size)
	}
	for _, l := range m.Layers {
		v.Size += l.Size
		switch l.MediaType {
		case tartNVRAMLayer:
			v.NVRAM = l.Digest
		case tartConfigLayer:
		default:
			v.Images = append(v.Images, l.Digest)
		}
	}
	return v, nil
}

// errNotVM: a tag whose manifest is not a VM image (an index, a signature,
// an SBOM, a referrers fallback tag, a container image) is no version.
var errNotVM = errors.New("not a VM image")

// vmImage reports whether an image manifest's layers make a VM image (Tart's
// media types); an artifact (a subject or an artifactType) never is.
func vmImage(layerTypes []string, artifact bool) bool {
	return !artifact && (slices.Contains(layerTypes, tartConfigLayer) || slices.Contains(layerTypes, tartDiskLayer))
}

// ociArch reads the architecture of a (small) image config blob.
func (r *Registry) ociArch(ctx context.Context, repo, digest string, size int64) string {
	if size <= 0 || size > 1<<20 {
		return ""
	}
	rc, err := r.OCIOpenBlob(ctx, repo, digest, 0, size)
	if err != nil {
		return ""
	}
	defer rc.Close()
	var c struct {
		Architecture string `json:"architecture"`
	}
	if data, err := io.ReadAll(io.LimitReader(rc, size)); err == nil {
		_ = json.Unmarshal(data, &c)
	}
	return c.Architecture
}

// ociTemplates lists the OCI repositories as templates.
func (r *Registry) ociTemplates(ctx context.Context) ([]apiv1.TemplateDetail, error) {
	repos, err := r.OCIRepositories(ctx)
	if err != nil {
		return nil, err
	}
	var out []apiv1.TemplateDetail
	for _, repo := range repos {
		d, err := r.ociTemplate(ctx, repo)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// ociRepoByID finds the OCI repository whose template id is id.
func (r *Registry) ociRepoByID(ctx context.Context, id string) (string, error) {
	repos, err := r.OCIRepositories(ctx)
	if err != nil {
		return "", err
	}
	for _, repo := range repos {
		if apiv1.OCITemplateID(repo) == id {
			return repo, nil
		}
	}
	return "", ErrNotFound
}

// deleteOCITemplate removes tag (all tags when "") from an OCI repository.
func (r *Registry) deleteOCITemplate(ctx context.Context, id, tag string) error {
	repo, err := r.ociRepoByID(ctx, id)
	if err != nil {
		return err
	}
	if tag == "" {
		// The whole template: every tag of the repository, its
		// signatures' and attachments' too, so none is left dangling.
		tags, err := r.OCITags(ctx, repo)
		if err != nil {
			return err
		}
		for _, t := range tags {
			if err := r.OCIDeleteManifest(ctx, repo, t); err != nil && !errors.As(err, new(*OCIError)) {
				return err
			}
		}
		return nil
	}
	d, err := r.ociTemplate(ctx, repo)
	if err != nil {
		return err
	}
	for _, v := range d.Versions {
		if v.Tag != tag {
			continue
		}
		digest, err := r.resolveRef(ctx, repo, tag)
		if err != nil {
			return err
		}
		if err := r.OCIDeleteManifest(ctx, repo, tag); err != nil {
			return err
		}
		// Referrers' fallback tags of that manifest (sha256-<hex>, cosign's
		// sha256-<hex>.sig and .att) go with it.
		tags, err := r.OCITags(ctx, repo)
		if err != nil {
			return err
		}
		for _, t := range tags {
			if t == "sha256-"+digest || strings.HasPrefix(t, "sha256-"+digest+".") {
				if err := r.OCIDeleteManifest(ctx, repo, t); err != nil && !errors.As(err, new(*OCIError)) {
					return err
				}
			}
		}
		return nil
	}
	return ErrTagNotFound
}

// OCICatalog lists the OCI repositories and the names of templates pushed
// through the Anka registry API that are valid repository names.
func (r *Registry) OCICatalog(ctx context.Context) ([]string, error) {
	repos, err := r.OCIRepositories(ctx)
	if err != nil {
		return nil, err
	}
	native, err := r.nativeTemplates(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range native {
		if CheckRepoName(t.Name) == nil && !slices.Contains(repos, t.Name) {
			repos = append(repos, t.Name)
		}
	}
	slices.Sort(repos)
	return repos, nil
}

// NativeTags returns the tags of the template pushed through the Anka
// registry API under name, for /v2/<name>/tags/list; ErrNotFound if none.
func (r *Registry) NativeTags(ctx context.Context, name string) ([]string, error) {
	native, err := r.nativeTemplates(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range native {
		if t.Name == name {
			tags, err := r.tags(ctx, t.ID)
			if err != nil {
				return nil, err
			}
			out := []string{}
			for _, tag := range tags {
				out = append(out, tag.Tag)
			}
			slices.Sort(out)
			return out, nil
		}
	}
	return nil, ErrNotFound
}
