package faketart

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Tart's media types and annotations (drivers.md B12).
const (
	manifestType  = "application/vnd.oci.image.manifest.v1+json"
	configType    = "application/vnd.oci.image.config.v1+json"
	tartConfig    = "application/vnd.cirruslabs.tart.config.v1"
	tartDiskV1    = "application/vnd.cirruslabs.tart.disk.v1"
	tartDiskV2    = "application/vnd.cirruslabs.tart.disk.v2"
	tartNVRAM     = "application/vnd.cirruslabs.tart.nvram.v1"
	annUncompSize = "org.cirruslabs.tart.uncompressed-size"
	annUncompDig  = "org.cirruslabs.tart.uncompressed-content-digest"
	annDiskSize   = "org.cirruslabs.tart.uncompressed-disk-size"
	annUploadTime = "org.cirruslabs.tart.upload-time"
)

func jsonUnmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func jsonIndent(v any) []byte                { b, _ := json.MarshalIndent(v, "", "  "); return b }
func readRandom(b []byte)                    { rand.Read(b) }

// remoteRef is a parsed remote name: host[:port]/ns(/ns)*[:tag|@digest].
type remoteRef struct {
	host, ns, tag, digest string
}

func (r remoteRef) String() string {
	if r.digest != "" {
		return r.host + "/" + r.ns + "@" + r.digest
	}
	return r.host + "/" + r.ns + ":" + r.tag
}

var (
	hostPart = `[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)*(?::[0-9]+)?`
	nsPart   = `[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*`
	remoteRe = regexp.MustCompile(`^(` + hostPart + `)/(` + nsPart + `(?:/` + nsPart + `)*)(?::([A-Za-z0-9][A-Za-z0-9._-]*)|@(sha256:[a-f0-9]{64}))?$`)
)

// parseRemote reads a remote name; a name without a host is local.
func parseRemote(s string) (remoteRef, bool) {
	if strings.Contains(s, "..") || strings.Contains(s, "://") {
		return remoteRef{}, false
	}
	m := remoteRe.FindStringSubmatch(s)
	if m == nil {
		return remoteRef{}, false
	}
	r := remoteRef{host: m[1], ns: m[2], tag: m[3], digest: m[4]}
	if r.tag == "" && r.digest == "" {
		r.tag = "latest"
	}
	return r, true
}

func (c *cli) cacheRepo(r remoteRef) string {
	return filepath.Join(c.home, "cache", "OCIs", strings.ReplaceAll(r.host, ":", "%3A"), filepath.FromSlash(r.ns))
}

// cached returns the cache directory of a pulled image.
func (c *cli) cached(r remoteRef) (string, error) {
	name := r.tag
	if r.digest != "" {
		name = r.digest
	}
	dir := filepath.Join(c.cacheRepo(r), name)
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		return "", err
	}
	return dir, nil
}

// cachedNames lists the cache's tags as host/ns:tag and digests as host/ns@sha256:.
func (c *cli) cachedNames() []string {
	root := filepath.Join(c.home, "cache", "OCIs")
	var names []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if len(parts) < 3 {
			return nil
		}
		host := strings.ReplaceAll(parts[0], "%3A", ":")
		ns, last := strings.Join(parts[1:len(parts)-1], "/"), parts[len(parts)-1]
		if _, err := os.Stat(filepath.Join(p, "manifest.json")); err != nil {
			return nil
		}
		if d.Type()&os.ModeSymlink != 0 {
			names = append(names, host+"/"+ns+":"+last)
		} else if strings.HasPrefix(last, "sha256:") {
			names = append(names, host+"/"+ns+"@"+last)
			return filepath.SkipDir
		}
		return nil
	})
	slices.Sort(names)
	return names
}

func (c *cli) uncache(r remoteRef) error {
	dir, err := c.cached(r)
	if err != nil {
		return notExist(r.String())
	}
	if r.digest != "" {
		return os.RemoveAll(dir)
	}
	return os.Remove(dir) // the tag's link; the digest directory stays for GC
}

// registry is an OCI client with Tart's auth: on a 401, Basic or the
// Bearer token flow with TART_REGISTRY_USERNAME/PASSWORD.
type registry struct {
	base   string
	host   string
	ns     string
	client *http.Client
	auth   string
	// expires is when Tart drops its one token (its expires_in, 60 s when
	// the answer has none); it then sends nothing until the next 401.
	expires time.Time
}

func newRegistry(r remoteRef, insecure bool) *registry {
	scheme := "https"
	if insecure {
		scheme = "http"
	}
	return &registry{base: scheme + "://" + r.host + "/v2/", host: r.host, ns: r.ns,
		client: &http.Client{Timeout: 5 * time.Minute}}
}

func (g *registry) creds() (string, string, bool) {
	u, p := os.Getenv("TART_REGISTRY_USERNAME"), os.Getenv("TART_REGISTRY_PASSWORD")
	if h := os.Getenv("TART_REGISTRY_HOSTNAME"); h != "" && h != g.host {
		return "", "", false
	}
	return u, p, u != "" && p != ""
}

func (g *registry) do(method, rawURL string, header http.Header, body []byte) (*http.Response, error) {
	for attempt := 0; attempt < 2; attempt++ {
		req, err := http.NewRequestWithContext(context.Background(), method, rawURL, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		if strings.HasPrefix(g.auth, "Bearer ") && time.Now().After(g.expires) {
			g.auth = ""
		}
		if g.auth != "" {
			req.Header.Set("Authorization", g.auth)
		}
		resp, err := g.client.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusUnauthorized || attempt == 1 {
			return resp, nil
		}
		challenge := resp.Header.Get("WWW-Authenticate")
		resp.Body.Close()
		if err := g.authenticate(challenge); err != nil {
			return nil, err
		}
	}
	panic("unreachable")
}

func (g *registry) authenticate(challenge string) error {
	user, pass, ok := g.creds()
	scheme, params, _ := strings.Cut(challenge, " ")
	switch strings.ToLower(scheme) {
	case "basic":
		if !ok {
			return fmt.Errorf("the registry %s wants credentials (set TART_REGISTRY_USERNAME and TART_REGISTRY_PASSWORD)", g.host)
		}
		req, _ := http.NewRequest("GET", "http://x", nil)
		req.SetBasicAuth(user, pass)
		g.auth = req.Header.Get("Authorization")
		return nil
	case "bearer":
		p := map[string]string{}
		for _, kv := range regexp.MustCompile(`(\w+)="([^"]*)"`).FindAllStringSubmatch(params, -1) {
			p[kv[1]] = kv[2]
		}
		q := url.Values{}
		if s := p["service"]; s != "" {
			q.Set("service", s)
		}
		// Exactly the challenge's scope, as Tart asks (Registry.swift).
		if sc := p["scope"]; sc != "" {
			q.Set("scope", sc)
		}
		req, err := http.NewRequest("GET", p["realm"]+"?"+q.Encode(), nil)
		if err != nil {
			return err
		}
		if ok {
			req.SetBasicAuth(user, pass)
		}
		resp, err := g.client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			return fmt.Errorf("failed to fetch an authentication token: %s: %s", resp.Status, b)
		}
		var t struct {
			Token       string `json:"token"`
			AccessToken string `json:"access_token"`
			ExpiresIn   int    `json:"expires_in"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&t); err != nil {
			return err
		}
		g.auth = "Bearer " + t.Token
		if t.Token == "" {
			g.auth = "Bearer " + t.AccessToken
		}
		g.expires = time.Now().Add(time.Duration(cmp.Or(t.ExpiresIn, 60)) * time.Second)
		return nil
	}
	return fmt.Errorf("unsupported authentication challenge %q", challenge)
}

func readBody(resp *http.Response, want ...int) ([]byte, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(want, resp.StatusCode) {
		return nil, fmt.Errorf("%s %s: %s: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations"`
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func (c *cli) pull(args []string) error {
	p, err := parse(args, flag("--insecure"), option("--concurrency"))
	if err != nil {
		return err
	}
	if err := positional(p, "remote-name"); err != nil {
		return err
	}
	name := p.Args[0]
	if c.exists(name) {
		fmt.Fprintf(c.stdout, "%q is a local image, nothing to pull here!\n", name)
		return nil
	}
	ref, ok := parseRemote(name)
	if !ok {
		return runtimeErr(1, "failed to parse remote name: %s", name)
	}
	_, err = c.pullRef(ref, p.Has("--insecure"))
	return err
}

// pullRef fetches an image into the cache and returns its directory.
func (c *cli) pullRef(ref remoteRef, insecure bool) (string, error) {
	fmt.Fprintf(c.stdout, "pulling %s...\n", ref)
	g := newRegistry(ref, insecure)
	refPart := ref.tag
	if ref.digest != "" {
		refPart = ref.digest
	}
	fmt.Fprintln(c.stdout, "pulling manifest...")
	resp, err := g.do("GET", g.base+ref.ns+"/manifests/"+refPart, http.Header{"Accept": {manifestType}}, nil)
	if err != nil {
		return "", err
	}
	raw, err := readBody(resp, http.StatusOK)
	if err != nil {
		return "", err
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("manifest: %w", err)
	}
	if m.MediaType != "" && m.MediaType != manifestType {
		return "", fmt.Errorf("unsupported manifest media type %s", m.MediaType)
	}
	var cfgL, nvL []descriptor
	var disks []descriptor
	for _, l := range m.Layers {
		switch l.MediaType {
		case tartConfig:
			cfgL = append(cfgL, l)
		case tartNVRAM:
			nvL = append(nvL, l)
		case tartDiskV2:
			disks = append(disks, l)
		case tartDiskV1:
			return "", fmt.Errorf("the image uses the legacy disk format %s, which this version of Tart no longer pulls", tartDiskV1)
		}
	}
	switch {
	case len(cfgL) != 1:
		return "", fmt.Errorf("ShouldBeExactlyOneLayer: config")
	case len(nvL) != 1:
		return "", fmt.Errorf("ShouldBeExactlyOneLayer: nvram")
	case len(disks) == 0:
		return "", fmt.Errorf("ShouldBeAtLeastOneLayer: disk")
	}
	blob := func(d descriptor) ([]byte, error) {
		resp, err := g.do("GET", g.base+ref.ns+"/blobs/"+d.Digest, nil, nil)
		if err != nil {
			return nil, err
		}
		b, err := readBody(resp, http.StatusOK)
		if err != nil {
			return nil, err
		}
		if digestOf(b) != d.Digest {
			return nil, fmt.Errorf("blob %s: digest mismatch", d.Digest)
		}
		return b, nil
	}
	tmp := filepath.Join(c.home, "tmp", "pull-"+strconv.Itoa(os.Getpid()))
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cfgData, err := blob(cfgL[0])
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "config.json"), cfgData, 0o644); err != nil {
		return "", err
	}
	var total int64
	fmt.Fprintf(c.stdout, "pulling disk (%.1f GB compressed)...\n", float64(sumSizes(disks))/1e9)
	disk, err := os.Create(filepath.Join(tmp, "disk.img"))
	if err != nil {
		return "", err
	}
	for _, d := range disks {
		size, serr := strconv.ParseInt(d.Annotations[annUncompSize], 10, 64)
		dig := d.Annotations[annUncompDig]
		if serr != nil || dig == "" {
			disk.Close()
			return "", fmt.Errorf("disk layer %s lacks the %s or %s annotation", d.Digest, annUncompSize, annUncompDig)
		}
		b, err := blob(d)
		if err != nil {
			disk.Close()
			return "", err
		}
		// The fake's layers are stored uncompressed.
		if int64(len(b)) != size || digestOf(b) != dig {
			disk.Close()
			return "", fmt.Errorf("disk layer %s: uncompressed size or digest mismatch", d.Digest)
		}
		if _, err := disk.WriteAt(b, total); err != nil {
			disk.Close()
			return "", err
		}
		total += size
	}
	if err := disk.Truncate(total); err != nil {
		disk.Close()
		return "", err
	}
	disk.Close()
	fmt.Fprintln(c.stdout, "pulling NVRAM...")
	nv, err := blob(nvL[0])
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "nvram.bin"), nv, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), raw, 0o644); err != nil {
		return "", err
	}
	repoDir := c.cacheRepo(ref)
	if err := os.MkdirAll(repoDir, 0o755); err != nil {
		return "", err
	}
	digest := digestOf(raw)
	final := filepath.Join(repoDir, digest)
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	if ref.tag != "" {
		link := filepath.Join(repoDir, ref.tag)
		os.Remove(link)
		if err := os.Symlink(digest, link); err != nil {
			return "", err
		}
		return link, nil
	}
	return final, nil
}

func sumSizes(ds []descriptor) int64 {
	var n int64
	for _, d := range ds {
		n += d.Size
	}
	return n
}

func (c *cli) push(args []string) error {
	p, err := parse(args, flag("--insecure"), option("--concurrency"), option("--chunk-size"),
		repeated("--label"), flag("--populate-cache"))
	if err != nil {
		return err
	}
	if len(p.Args) < 2 {
		return usageErr("Missing expected argument '<remote-names> ...'")
	}
	src := p.Args[0]
	if !c.exists(src) {
		return notExist(src)
	}
	if c.running(src) {
		return runtimeErr(1, "VM %q is running", src)
	}
	labels := map[string]string{"org.cirruslabs.tart.disk.format": "raw"}
	for _, l := range p.Opts["--label"] {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return usageErr("invalid label %q (want key=value)", l)
		}
		labels[k] = v
	}
	dir := c.vmPath(src)
	cfg, err := c.readConfig(dir)
	if err != nil {
		return err
	}
	ociConfig, _ := json.Marshal(map[string]any{"architecture": cfg.Arch, "os": cfg.OS, "config": map[string]any{"Labels": labels}})
	vmCfg, _ := json.Marshal(cfg)
	nvram, err := os.ReadFile(filepath.Join(dir, "nvram.bin"))
	if err != nil {
		return err
	}
	chunk := int64(512 << 20)
	if v := os.Getenv("FAKE_TART_CHUNK"); v != "" {
		chunk, _ = strconv.ParseInt(v, 10, 64)
	}
	disk, err := os.ReadFile(filepath.Join(dir, "disk.img"))
	if err != nil {
		return err
	}
	blobs := map[string][]byte{}
	add := func(mt string, b []byte, ann map[string]string) descriptor {
		d := descriptor{MediaType: mt, Digest: digestOf(b), Size: int64(len(b)), Annotations: ann}
		blobs[d.Digest] = b
		return d
	}
	layers := []descriptor{add(tartConfig, vmCfg, map[string]string{})}
	for off := int64(0); off < int64(len(disk)) || off == 0; off += chunk {
		part := disk[off:min(off+chunk, int64(len(disk)))]
		layers = append(layers, add(tartDiskV2, part, map[string]string{
			annUncompSize: strconv.Itoa(len(part)), annUncompDig: digestOf(part)}))
		if len(disk) == 0 {
			break
		}
	}
	layers = append(layers, add(tartNVRAM, nvram, map[string]string{}))
	cfgDesc := add(configType, ociConfig, nil)
	// Sorted keys, as Tart serialises (maps marshal sorted).
	m := map[string]any{"schemaVersion": 2, "mediaType": manifestType, "config": cfgDesc, "layers": layers,
		"annotations": map[string]string{annDiskSize: strconv.Itoa(len(disk)), annUploadTime: time.Now().UTC().Format(time.RFC3339)}}
	raw, _ := json.Marshal(m)
	for _, target := range p.Args[1:] {
		ref, ok := parseRemote(target)
		if !ok || ref.digest != "" {
			return runtimeErr(1, "failed to parse remote name: %s", target)
		}
		fmt.Fprintf(c.stdout, "pushing %s...\n", ref)
		g := newRegistry(ref, p.Has("--insecure"))
		for _, d := range append([]descriptor{cfgDesc}, layers...) {
			if err := g.upload(d.Digest, blobs[d.Digest]); err != nil {
				return err
			}
		}
		resp, err := g.do("PUT", g.base+ref.ns+"/manifests/"+ref.tag, http.Header{"Content-Type": {manifestType}}, raw)
		if err != nil {
			return err
		}
		if _, err := readBody(resp, http.StatusCreated); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "pushed %s\n", ref)
	}
	return nil
}

// upload sends a blob the registry lacks: HEAD, POST, monolithic PUT.
func (g *registry) upload(digest string, data []byte) error {
	resp, err := g.do("HEAD", g.base+g.ns+"/blobs/"+digest, nil, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	resp, err = g.do("POST", g.base+g.ns+"/blobs/uploads/", nil, nil)
	if err != nil {
		return err
	}
	if _, err := readBody(resp, http.StatusAccepted); err != nil {
		return err
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || resp.Header.Get("Location") == "" {
		return fmt.Errorf("upload: no Location")
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	resp, err = g.do("PUT", loc.String(), http.Header{"Content-Type": {"application/octet-stream"}}, data)
	if err != nil {
		return err
	}
	_, err = readBody(resp, http.StatusCreated)
	return err
}
