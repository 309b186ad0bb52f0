package registry

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

type templateRecord struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Arch    string    `json:"arch"`
	Created time.Time `json:"created"`
}

type tagRecord struct {
	Tag         string    `json:"tag"`
	Number      int       `json:"number"`
	Description string    `json:"description"`
	Manifest    string    `json:"manifest"`
	Size        int64     `json:"size"`
	Created     time.Time `json:"created"`
}

func (t tagRecord) version(m apiv1.Manifest) apiv1.TemplateVersion {
	v := apiv1.TemplateVersion{Tag: t.Tag, Number: t.Number, Size: t.Size, Description: t.Description,
		Images: []string{}, StateFiles: []string{}}
	for _, f := range m.Files {
		switch f.Role {
		case apiv1.RoleConfig:
			v.ConfigFile = f.Name
		case apiv1.RoleNVRAM:
			v.NVRAM = f.Name
		case apiv1.RoleState:
			v.StateFiles = append(v.StateFiles, f.Name)
		default:
			v.Images = append(v.Images, f.Name)
		}
	}
	if len(v.StateFiles) > 0 {
		v.StateFile = v.StateFiles[0]
	}
	v.LastPush, v.CreationDate = t.Created.Unix(), t.Created.Unix()
	return v
}

func (r *Registry) template(ctx context.Context, id string) (templateRecord, error) {
	var t templateRecord
	if !validName.MatchString(id) {
		return t, ErrNotFound
	}
	err := r.readJSON(ctx, templatePath(id), &t)
	if errors.Is(err, storage.ErrNotFound) {
		return t, ErrNotFound
	}
	return t, err
}

// tags returns a template's tags in number order.
func (r *Registry) tags(ctx context.Context, id string) ([]tagRecord, error) {
	paths, err := r.st.List(ctx, "templates/"+id+"/tags")
	if err != nil {
		return nil, err
	}
	var out []tagRecord
	for _, p := range paths {
		var t tagRecord
		if err := r.readJSON(ctx, p, &t); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				continue // deleted meanwhile
			}
			return nil, err
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b tagRecord) int { return a.Number - b.Number })
	return out, nil
}

// ListTemplates returns every template with the size of its latest tag:
// those pushed through the Anka registry API and the OCI repositories.
func (r *Registry) ListTemplates(ctx context.Context) ([]apiv1.Template, error) {
	out, err := r.nativeTemplates(ctx)
	if err != nil {
		return nil, err
	}
	oci, err := r.ociTemplates(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range oci {
		out = append(out, d.Template)
	}
	slices.SortFunc(out, func(a, b apiv1.Template) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}

// nativeTemplates lists the templates pushed through the Anka registry API.
func (r *Registry) nativeTemplates(ctx context.Context) ([]apiv1.Template, error) {
	paths, err := r.st.List(ctx, "templates")
	if err != nil {
		return nil, err
	}
	out := []apiv1.Template{}
	for _, p := range paths {
		if path.Base(p) != "template.json" {
			continue
		}
		t, err := r.template(ctx, path.Base(path.Dir(p)))
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		tags, err := r.tags(ctx, t.ID)
		if err != nil {
			return nil, err
		}
		tmpl := apiv1.Template{ID: t.ID, Name: t.Name, Arch: t.Arch}
		if len(tags) > 0 {
			tmpl.LastPush = tags[len(tags)-1].Created.Unix()
		}
		for _, tag := range tags {
			tmpl.Size += tag.Size // the reference's size is its tags' sum
			tmpl.LastPull = max(tmpl.LastPull, r.lastPull(ctx, t.ID, tag.Number))
		}
		out = append(out, tmpl)
	}
	slices.SortFunc(out, func(a, b apiv1.Template) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// GetTemplate returns a template with all its versions.
func (r *Registry) GetTemplate(ctx context.Context, id string) (apiv1.TemplateDetail, error) {
	t, err := r.template(ctx, id)
	if errors.Is(err, ErrNotFound) && validName.MatchString(id) {
		repo, oerr := r.ociRepoByID(ctx, id)
		if oerr != nil {
			return apiv1.TemplateDetail{}, oerr
		}
		return r.ociTemplate(ctx, repo)
	}
	if err != nil {
		return apiv1.TemplateDetail{}, err
	}
	tags, err := r.tags(ctx, id)
	if err != nil {
		return apiv1.TemplateDetail{}, err
	}
	d := apiv1.TemplateDetail{Template: apiv1.Template{ID: t.ID, Name: t.Name, Arch: t.Arch}, Versions: []apiv1.TemplateVersion{}}
	for _, tag := range tags {
		var m apiv1.Manifest
		if err := r.readMeta(ctx, manifestPath(tag.Manifest), &m); err != nil {
			return d, fmt.Errorf("template %s tag %s: %w", id, tag.Tag, err)
		}
		v := tag.version(m)
		v.Arch, v.LastPull = t.Arch, r.lastPull(ctx, id, tag.Number)
		d.Versions = append(d.Versions, v)
		d.Size += tag.Size
		d.LastPush = v.LastPush
		d.LastPull = max(d.LastPull, v.LastPull)
	}
	return d, nil
}

// TagManifest returns a tag's manifest; tag "" means the latest.
func (r *Registry) TagManifest(ctx context.Context, id, tag string) (apiv1.TagManifest, error) {
	return r.tagManifest(ctx, id, tag, true)
}

// DeltaBase returns the latest tag's manifest for a push to send deltas
// against; it is not counted as a pull.
func (r *Registry) DeltaBase(ctx context.Context, id string) (apiv1.TagManifest, error) {
	return r.tagManifest(ctx, id, "", false)
}

// tagManifest is TagManifest; pull says whether it counts as a pull.
func (r *Registry) tagManifest(ctx context.Context, id, tag string, pull bool) (apiv1.TagManifest, error) {
	t, err := r.template(ctx, id)
	if errors.Is(err, ErrNotFound) && validName.MatchString(id) {
		if repo, oerr := r.ociRepoByID(ctx, id); oerr == nil {
			return apiv1.TagManifest{}, &InvalidError{Field: "id", Reason: fmt.Sprintf(
				"template %s is the OCI image %s: pull it through /v2/ (nodes with the tart driver do)", id, repo)}
		}
	}
	if err != nil {
		return apiv1.TagManifest{}, err
	}
	rec, err := r.findTag(ctx, id, tag)
	if err != nil {
		return apiv1.TagManifest{}, err
	}
	out := apiv1.TagManifest{TemplateID: id, TemplateName: t.Name, Arch: t.Arch, Tag: rec.Tag, Number: rec.Number}
	if err := r.readMeta(ctx, manifestPath(rec.Manifest), &out.Manifest); err != nil {
		return out, err
	}
	if pull {
		r.notePull(ctx, id, rec.Number)
	}
	return out, nil
}

func (r *Registry) findTag(ctx context.Context, id, tag string) (tagRecord, error) {
	tags, err := r.tags(ctx, id)
	if err != nil {
		return tagRecord{}, err
	}
	if len(tags) == 0 {
		return tagRecord{}, ErrTagNotFound
	}
	if tag == "" {
		return tags[len(tags)-1], nil
	}
	for _, t := range tags {
		if t.Tag == tag {
			return t, nil
		}
	}
	return tagRecord{}, ErrTagNotFound
}

// DeleteTag removes one tag; DeleteTemplate removes the template and all tags.
// Chunks are freed by the next GC run.
func (r *Registry) DeleteTag(ctx context.Context, id, tag string) error {
	if _, err := r.template(ctx, id); errors.Is(err, ErrNotFound) && validName.MatchString(id) {
		if tag == "" { // revert: the latest push
			d, err := r.GetTemplate(ctx, id)
			if err != nil {
				return err
			}
			latest, _ := d.Latest()
			tag = latest.Tag
		}
		return r.deleteOCITemplate(ctx, id, tag)
	} else if err != nil {
		return err
	}
	rec, err := r.findTag(ctx, id, tag)
	if err != nil {
		return err
	}
	return r.st.Delete(ctx, tagPath(id, rec.Number))
}

// Revert drops the template's latest tag.
func (r *Registry) Revert(ctx context.Context, id string) error { return r.DeleteTag(ctx, id, "") }

// RevertTo drops every tag after the one named (by tag, or by number when
// number >= 0), newest first, so a crash leaves the template reverted part
// of the way and a retry finishes. Neither given: drop the latest tag.
func (r *Registry) RevertTo(ctx context.Context, id, tag string, number int) error {
	if tag == "" && number < 0 {
		return r.Revert(ctx, id)
	}
	d, err := r.GetTemplate(ctx, id)
	if err != nil {
		return err
	}
	at := slices.IndexFunc(d.Versions, func(v apiv1.TemplateVersion) bool {
		return tag != "" && v.Tag == tag || tag == "" && v.Number == number
	})
	if at < 0 {
		return ErrTagNotFound
	}
	for i := len(d.Versions) - 1; i > at; i-- {
		if err := r.DeleteTag(ctx, id, d.Versions[i].Tag); err != nil && !errors.Is(err, ErrTagNotFound) {
			return err
		}
	}
	return nil
}

func (r *Registry) DeleteTemplate(ctx context.Context, id string) error {
	t, err := r.template(ctx, id)
	if errors.Is(err, ErrNotFound) && validName.MatchString(id) {
		return r.deleteOCITemplate(ctx, id, "")
	}
	if err != nil {
		return err
	}
	tags, err := r.tags(ctx, id)
	if err != nil {
		return err
	}
	for _, tag := range tags {
		if err := r.st.Delete(ctx, tagPath(id, tag.Number)); err != nil {
			return err
		}
	}
	pulls, err := r.st.List(ctx, "templates/"+id+"/pulls")
	if err != nil {
		return err
	}
	for _, p := range pulls {
		if err := r.st.Delete(ctx, p); err != nil {
			return err
		}
	}
	if err := r.st.Delete(ctx, templatePath(id)); err != nil {
		return err
	}
	return r.st.Delete(ctx, "names/"+t.Name)
}

// Commit publishes a tag once every chunk of its manifest is present. The tag
// record is the last write, so a crash at any point leaves no half tag.
func (r *Registry) Commit(ctx context.Context, req apiv1.CommitRequest) (apiv1.CommitResponse, error) {
	if err := validateCommit(req); err != nil {
		return apiv1.CommitResponse{}, err
	}
	r.TouchUpload(ctx, req.UploadID)
	var missing []string
	seen := map[string]bool{}
	lk := newLookups(true)
	var size int64
	for _, f := range req.Manifest.Files {
		size += f.Size
		for _, d := range f.Chunks {
			if d == "" || seen[d] {
				continue
			}
			seen[d] = true
			if err := ctx.Err(); err != nil {
				return apiv1.CommitResponse{}, err // the client went away: stop the work
			}
			ok, err := r.ensureChunk(ctx, d, lk)
			if err != nil {
				return apiv1.CommitResponse{}, err
			}
			if !ok {
				missing = append(missing, d)
			}
		}
	}
	if len(missing) > 0 {
		return apiv1.CommitResponse{}, &MissingChunksError{missing}
	}
	// Chunks land unsynced; make them all durable before anything points at them.
	if err := r.st.Sync(ctx); err != nil {
		return apiv1.CommitResponse{}, err
	}
	t, err := r.resolveTemplate(ctx, req)
	if err != nil {
		return apiv1.CommitResponse{}, err
	}
	manifest, err := json.Marshal(req.Manifest)
	if err != nil {
		return apiv1.CommitResponse{}, err
	}
	sum := sha256.Sum256(manifest)
	digest := hex.EncodeToString(sum[:])
	if err := r.st.Put(ctx, manifestPath(digest), strings.NewReader(string(manifest)), storage.Replace); err != nil {
		return apiv1.CommitResponse{}, err
	}
	for {
		tags, err := r.tags(ctx, t.ID)
		if err != nil {
			return apiv1.CommitResponse{}, err
		}
		next := 0 // the reference numbers a template's first tag 0; existing numbers stay
		for _, existing := range tags {
			if existing.Tag == req.Tag && existing.Manifest == digest && existing.Description == req.Description {
				// The same commit again: its answer was lost (a client retry,
				// a registry killed after the tag record landed). Idempotent.
				r.log.Info("tag already committed with this content", "template", t.Name, "id", t.ID, "tag", req.Tag, "number", existing.Number)
				return apiv1.CommitResponse{TemplateID: t.ID, Tag: req.Tag, Number: existing.Number, Manifest: digest}, nil
			}
			if existing.Tag == req.Tag {
				return apiv1.CommitResponse{}, fmt.Errorf("%w: template %s already has tag %s", ErrTagExists, t.Name, req.Tag)
			}
			next = max(next, existing.Number+1)
		}
		rec := tagRecord{Tag: req.Tag, Number: next, Description: req.Description, Manifest: digest,
			Size: size, Created: time.Now().UTC()}
		err = r.writeJSON(ctx, tagPath(t.ID, next), rec, storage.Exclusive)
		if errors.Is(err, storage.ErrExists) {
			continue // another push took this number; recount
		}
		if err != nil {
			return apiv1.CommitResponse{}, err
		}
		r.log.Info("tag committed", "template", t.Name, "id", t.ID, "tag", req.Tag, "number", next, "size", size)
		return apiv1.CommitResponse{TemplateID: t.ID, Tag: req.Tag, Number: next, Manifest: digest}, nil
	}
}

// resolveTemplate finds the commit's template, creating it on first push.
func (r *Registry) resolveTemplate(ctx context.Context, req apiv1.CommitRequest) (templateRecord, error) {
	if req.TemplateID != "" {
		return r.template(ctx, req.TemplateID)
	}
	var id string
	err := r.readJSON(ctx, "names/"+req.Template, &id)
	if errors.Is(err, storage.ErrNotFound) {
		id = apiv1.NewID()
		err = r.writeJSON(ctx, "names/"+req.Template, id, storage.Exclusive)
		if errors.Is(err, storage.ErrExists) { // created concurrently
			err = r.readJSON(ctx, "names/"+req.Template, &id)
		}
	}
	if err != nil {
		return templateRecord{}, err
	}
	t, err := r.template(ctx, id)
	if errors.Is(err, ErrNotFound) {
		t = templateRecord{ID: id, Name: req.Template, Arch: req.Arch, Created: time.Now().UTC()}
		err = r.writeJSON(ctx, templatePath(id), t, storage.Replace)
	}
	return t, err
}

// Bounds of one tag: its files and their total size (a manifest naming one
// chunk 1.2 million times, a "1.2 TB template", was accepted).
const (
	MaxTemplateFiles = 64
	MaxTemplateBytes = 1 << 40
)

func validateCommit(req apiv1.CommitRequest) error {
	switch {
	case req.TemplateID == "" && !validName.MatchString(req.Template):
		return &InvalidError{"template", fmt.Sprintf("%q: want 1-128 letters, digits, '.', '_', '-' (no slashes, no '..')", req.Template)}
	case req.TemplateID != "" && !validName.MatchString(req.TemplateID):
		return &InvalidError{"template_id", "invalid"}
	case !validName.MatchString(req.Tag):
		return &InvalidError{"tag", fmt.Sprintf("%q: want 1-128 letters, digits, '.', '_', '-' (no slashes, no '..')", req.Tag)}
	case req.Arch != apiv1.ArchAMD64 && req.Arch != apiv1.ArchARM64:
		return &InvalidError{"arch", fmt.Sprintf("%q: want amd64 or arm64", req.Arch)}
	case req.Manifest.ChunkSize != chunk.Size:
		return &InvalidError{"manifest.chunk_size", fmt.Sprintf("must be %d", chunk.Size)}
	case len(req.Manifest.Files) == 0:
		return &InvalidError{"manifest.files", "a tag needs at least one file"}
	case len(req.Manifest.Files) > MaxTemplateFiles:
		return &InvalidError{"manifest.files", fmt.Sprintf("at most %d files, got %d", MaxTemplateFiles, len(req.Manifest.Files))}
	}
	var total int64
	for _, f := range req.Manifest.Files {
		if f.Size > MaxTemplateBytes || total+f.Size > MaxTemplateBytes {
			return &InvalidError{"manifest.files", fmt.Sprintf("a template of at most %d bytes (1 TiB), got more", int64(MaxTemplateBytes))}
		}
		total += max(f.Size, 0)
	}
	names := map[string]bool{}
	for i, f := range req.Manifest.Files {
		field := fmt.Sprintf("manifest.files[%d]", i)
		switch {
		case !validName.MatchString(f.Name):
			return &InvalidError{field + ".name", fmt.Sprintf("%q: want a plain file name (no slashes)", f.Name)}
		case names[f.Name]:
			return &InvalidError{field + ".name", fmt.Sprintf("%q appears twice", f.Name)}
		case !slices.Contains([]string{apiv1.RoleConfig, apiv1.RoleImage, apiv1.RoleNVRAM, apiv1.RoleState}, f.Role):
			return &InvalidError{field + ".role", fmt.Sprintf("%q: want config, image, nvram or state", f.Role)}
		case f.Size < 0 || int64(len(f.Chunks)) != chunk.Count(f.Size):
			return &InvalidError{field + ".chunks", fmt.Sprintf("%d chunks for %d bytes, want %d", len(f.Chunks), f.Size, chunk.Count(f.Size))}
		}
		names[f.Name] = true
		for _, d := range f.Chunks {
			if d != "" && !chunk.ValidDigest(d) {
				return &InvalidError{field + ".chunks", fmt.Sprintf("%q is not a sha256 hex digest", d)}
			}
		}
	}
	return nil
}

// Last pulls are kept beside the tag records (templates/<id>/pulls/<n>), never
// in them: a pull racing a delete must not bring a tag back. A pull is noted
// when the last noted one is over an hour old, so pulls cost no write each.
func pullPath(id string, n int) string { return fmt.Sprintf("templates/%s/pulls/%d", id, n) }

func (r *Registry) lastPull(ctx context.Context, id string, n int) int64 {
	info, err := r.st.Stat(ctx, pullPath(id, n))
	if err != nil {
		return 0
	}
	return info.ModTime.Unix()
}

func (r *Registry) notePull(ctx context.Context, id string, n int) {
	if last := r.lastPull(ctx, id, n); last > 0 && time.Since(time.Unix(last, 0)) < time.Hour {
		return
	}
	if err := r.st.Put(ctx, pullPath(id, n), strings.NewReader(""), storage.Replace); err != nil {
		r.log.Warn("note template pull", "template", id, "tag_number", n, "err", err)
	}
}

// SetArch records a template's architecture (PUT /registry/vm/arch), which
// the scheduler matches against nodes. A template deleted meanwhile stays
// deleted: its name record is gone, so the write is undone.
func (r *Registry) SetArch(ctx context.Context, id, arch string) error {
	if arch != apiv1.ArchAMD64 && arch != apiv1.ArchARM64 {
		return &InvalidError{Field: "arch", Reason: fmt.Sprintf("want %s or %s, got %q", apiv1.ArchAMD64, apiv1.ArchARM64, arch)}
	}
	t, err := r.template(ctx, id)
	if err != nil {
		return err
	}
	t.Arch = arch
	if err := r.writeJSON(ctx, templatePath(id), t, storage.Replace); err != nil {
		return err
	}
	var owner string
	err = r.readJSON(ctx, "names/"+t.Name, &owner)
	switch {
	case err != nil && !errors.Is(err, storage.ErrNotFound):
		return fmt.Errorf("template %s: check its name after setting its arch: %w", id, err)
	case err != nil || owner != id:
		if err := r.st.Delete(ctx, templatePath(id)); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("template %s was deleted meanwhile; undo its arch: %w", id, err)
		}
		return ErrNotFound
	}
	return nil
}

// maxInfoConfig bounds the config file VMInfo reads (VM configs are small).
const maxInfoConfig = 1 << 20

// VMInfo is GET /registry/vm/info?id=[&tag=]: the VM configuration of a tag
// (the latest by default), from its config file, with its name and uuid.
// A config that is not a JSON object is answered as {"config": "<text>"}.
func (r *Registry) VMInfo(ctx context.Context, id, tag string) (map[string]any, error) {
	tm, err := r.tagManifest(ctx, id, tag, false)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	for _, f := range tm.Manifest.Files {
		if f.Role != apiv1.RoleConfig {
			continue
		}
		if f.Size > maxInfoConfig {
			return nil, &InvalidError{Field: "id", Reason: fmt.Sprintf("the config file %s is %d bytes, over %d", f.Name, f.Size, maxInfoConfig)}
		}
		data := make([]byte, 0, f.Size)
		for i, d := range f.Chunks {
			n := min(int64(chunk.Size), f.Size-int64(i)*chunk.Size)
			if d == "" {
				data = append(data, make([]byte, n)...)
				continue
			}
			enc, err := r.ReadChunk(ctx, d, nil)
			if err != nil {
				return nil, fmt.Errorf("config file %s: %w", f.Name, err)
			}
			plain, err := chunk.Decode(nil, enc, d)
			if err != nil {
				return nil, fmt.Errorf("config file %s: %w", f.Name, err)
			}
			data = append(data, plain...)
		}
		if json.Unmarshal(data, &out) != nil || out == nil {
			out = map[string]any{"config": string(data)}
		}
		break
	}
	out["name"], out["uuid"] = tm.TemplateName, tm.TemplateID
	if _, ok := out["version"]; !ok {
		out["version"] = tm.Number
	}
	return out, nil
}
