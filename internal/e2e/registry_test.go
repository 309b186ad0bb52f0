package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/registry/chunk"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/retry"
	"github.com/corral-build/corral/internal/testenv"
)

// makeImage writes a sparse file of size with random data at the given MiB offsets.
func makeImage(t *testing.T, path string, size int64, dataAtMiB ...int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	writeRandomChunks(t, path, dataAtMiB...)
}

// damagePacks flips a data byte of the first chunk of every pack in a
// registry's store (its index stays readable, so the damage is found when
// the chunk is verified).
func damagePacks(t *testing.T, store string) {
	t.Helper()
	packs, _ := filepath.Glob(filepath.Join(store, "packs", "*.pack"))
	if len(packs) == 0 {
		t.Fatalf("no packs in %s", store)
	}
	for _, p := range packs {
		data, _ := os.ReadFile(p)
		data[1] ^= 0x55
		os.WriteFile(p, data, 0o644)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// newVMDir makes a template directory: config, an nvram that is not a chunk
// multiple, and a 64 MiB (+ a bit) sparse disk with data at the given MiB.
func newVMDir(t *testing.T, dataAtMiB ...int64) string {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"arch":"arm64","cpu":4}`), 0o644)
	nvram := make([]byte, 100_000)
	rand.Read(nvram)
	os.WriteFile(filepath.Join(dir, "nvram"), nvram, 0o644)
	makeImage(t, filepath.Join(dir, "disk.img"), 64*chunk.Size+12345, dataAtMiB...)
	return dir
}

func copyDir(t *testing.T, src string) string {
	dst := t.TempDir()
	for _, name := range []string{"config.json", "nvram", "disk.img"} {
		data, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, name), data, 0o644)
	}
	return dst
}

func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	for _, name := range []string{"config.json", "nvram", "disk.img"} {
		if fileSum(t, filepath.Join(a, name)) != fileSum(t, filepath.Join(b, name)) {
			t.Fatalf("%s differs after round trip", name)
		}
	}
}

func makeChanged(t *testing.T, path string, mibs ...int64) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for _, m := range mibs {
		rand.Read(buf)
		f.WriteAt(buf, m*chunk.Size+8192)
	}
}

func allMiB(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i)
	}
	return out
}

// eachStore runs test against a registry on a directory and one on S3.
func eachStore(t *testing.T, test func(t *testing.T, reg *regdaemon.Daemon)) {
	t.Run("filesystem", func(t *testing.T) { test(t, testenv.StartRegistry(t, t.TempDir())) })
	t.Run("s3", func(t *testing.T) { test(t, testenv.StartS3(t).StartRegistry(t, "registry")) })
}

func TestPushPullRoundTrip(t *testing.T) { eachStore(t, testPushPullRoundTrip) }

func testPushPullRoundTrip(t *testing.T, reg *regdaemon.Daemon) {
	rc, _ := client.NewRegistry(reg.URL)
	ctx := context.Background()

	sparse := newVMDir(t, 0, 7, 63)
	res, err := rc.Push(ctx, client.PushOptions{Source: sparse, Template: "sparse", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.SentChunks != res.UniqueChunks || res.ZeroChunks != 62 {
		t.Fatalf("push stats %+v", res)
	}
	dest := t.TempDir()
	pr, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, sparse, dest)
	var st syscallStat
	if used := allocated(t, filepath.Join(dest, "disk.img"), &st); used > 8*chunk.Size {
		t.Errorf("pulled image is not sparse: %d bytes allocated for 3 MiB of data", used)
	}
	if pr.DownloadedChunk != res.UniqueChunks {
		t.Errorf("pull downloaded %d chunks, want %d", pr.DownloadedChunk, res.UniqueChunks)
	}

	dense := newVMDir(t, allMiB(65)...)
	res, err = rc.Push(ctx, client.PushOptions{Source: dense, Template: "dense", Tag: "v1", Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.ZeroChunks != 0 {
		t.Fatalf("dense push %+v", res)
	}
	dest2 := t.TempDir()
	if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Dest: dest2}); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, dense, dest2)
	tmpl, _ := rc.Template(ctx, res.TemplateID)
	if tmpl.Arch != apiv1.ArchARM64 || tmpl.Versions[0].NVRAM != "nvram" || tmpl.Versions[0].ConfigFile != "config.json" ||
		len(tmpl.Versions[0].Images) != 1 {
		t.Fatalf("template %+v", tmpl)
	}

	// A changed copy sends only the changed chunks; pulling it beside v1
	// downloads only those too.
	makeChanged(t, filepath.Join(dense, "disk.img"), 10, 11, 40)
	res2, err := rc.Push(ctx, client.PushOptions{Source: dense, Template: "dense", Tag: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	if res2.SentChunks != 3 || res2.Number != 1 {
		t.Fatalf("second tag sent %d chunks (number %d), want 3", res2.SentChunks, res2.Number)
	}
	dest3 := filepath.Join(t.TempDir(), "v2")
	pr, err = rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Tag: "v2", Dest: dest3, Sources: []string{dest2}})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, dense, dest3)
	if pr.DownloadedChunk != 3 {
		t.Fatalf("pull of v2 beside v1 downloaded %d chunks, want 3", pr.DownloadedChunk)
	}
}

// TestPullResumes: a pull cut short by the network keeps what it wrote; the
// next one only fetches the rest.
func TestPullResumes(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	rc, _ := client.NewRegistry(reg.URL)
	src := newVMDir(t, allMiB(40)...)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "t", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	// A proxy whose link drops after 15 chunks have streamed through it.
	target, _ := url.Parse(reg.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var served atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/chunks/fetch") {
			proxy.ServeHTTP(w, r)
			return
		}
		resp, err := http.Post(reg.URL+r.URL.Path, "application/json", r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		for {
			d, enc, err := chunk.ReadFrame(resp.Body, nil)
			if err != nil || served.Add(1) > 15 {
				panic(http.ErrAbortHandler) // the link drops
			}
			hdr, _ := chunk.AppendFrameHeader(nil, d, len(enc))
			w.Write(append(hdr, enc...))
		}
	}))
	defer flaky.Close()
	cut, _ := client.NewRegistry(flaky.URL)
	cut.Retry = retry.Policy{Attempts: 1, PerAttempt: time.Minute}
	dest := t.TempDir()
	if _, err = cut.Pull(context.Background(), client.PullOptions{TemplateID: res.TemplateID, Dest: dest, Concurrency: 1}); err == nil {
		t.Fatal("interrupted pull reported success")
	}
	if _, err := os.Stat(filepath.Join(dest, client.PulledManifest)); err == nil {
		t.Fatal("interrupted pull marked complete")
	}
	pr, err := rc.Pull(context.Background(), client.PullOptions{TemplateID: res.TemplateID, Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, dest)
	if pr.LocalChunks != 15 || pr.DownloadedChunk+pr.LocalChunks != res.UniqueChunks {
		t.Fatalf("resume reused %d and downloaded %d of %d chunks, want 15 reused", pr.LocalChunks, pr.DownloadedChunk, res.UniqueChunks)
	}
}

// TestRegistryKilledMidPush: a real registry process is SIGKILLed in the
// middle of a pack upload, at a random byte of the body (seeded, logged),
// in several rounds. After each restart no half tag is listed, every tag
// committed before pulls whole, and re-running the push sends only what had
// not arrived.
func TestRegistryKilledMidPush(t *testing.T) {
	bin := corralBinary(t)
	store := t.TempDir()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	rc, _ := client.NewRegistry("http://" + addr)
	rc.Retry = retry.Policy{Attempts: 1, PerAttempt: time.Minute}
	var proc atomic.Pointer[exec.Cmd]
	start := func() {
		cmd := exec.Command(bin, "registry", "--listen", addr, "--data-dir", store)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		proc.Store(cmd)
		for deadline := time.Now().Add(10 * time.Second); ; {
			if _, err := rc.Status(context.Background()); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("registry did not start")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start()
	seed := time.Now().UnixNano()
	t.Logf("kill points from seed %d", seed)
	rnd := mrand.New(mrand.NewSource(seed))

	// The client talks through a proxy that SIGKILLs the registry when the
	// killPack-th pack upload has sent a random part of its body.
	target, _ := url.Parse("http://" + addr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var packs, killPack atomic.Int64
	var killPermille atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/packs") && packs.Add(1) == killPack.Load() {
			at := max(1, r.ContentLength*killPermille.Load()/1000)
			t.Logf("killing the registry after %d of %d bytes of pack upload %d", at, r.ContentLength, killPack.Load())
			r.Body = &killingBody{r: r.Body, left: at, kill: func() {
				_ = proc.Load().Process.Kill()
				_ = proc.Load().Wait()
			}}
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	viaProxy, _ := client.NewRegistry(front.URL)
	viaProxy.Retry = retry.Policy{Attempts: 1, PerAttempt: time.Minute}

	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"arch":"amd64"}`), 0o644)
	makeImage(t, filepath.Join(src, "disk.img"), 192*chunk.Size, allMiB(192)...)
	pushed := map[string]string{} // tag -> a copy of what it holds
	for round := range 3 {
		tag := fmt.Sprint("v", round)
		if round > 0 {
			makeChanged(t, filepath.Join(src, "disk.img"), 70, 100, 130) // new chunks in every window
		}
		// Round 0 sends config, disk windows 0, 1, 2: kill in window 1. Later
		// rounds send only the changed windows 1 and 2: kill in the first.
		packs.Store(0)
		killPack.Store(map[bool]int64{true: 3, false: 1}[round == 0])
		killPermille.Store(1 + rnd.Int63n(998))
		if _, err := viaProxy.Push(context.Background(), client.PushOptions{Source: src, Template: "big", Tag: tag, Concurrency: 1}); err == nil {
			t.Fatal("push survived its registry being killed")
		}
		start()
		if id, err := rc.FindTemplate(context.Background(), "big"); round == 0 && err == nil {
			t.Fatal("after a crash mid-push the registry lists the template")
		} else if round > 0 {
			d, err := rc.Template(context.Background(), id)
			if err != nil || len(d.Versions) != round {
				t.Fatalf("round %d: after a crash mid-push the template has %d tags (err %v), want %d", round, len(d.Versions), err, round)
			}
		}
		res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "big", Tag: tag})
		if err != nil {
			t.Fatal(err)
		}
		if res.SentChunks > res.UniqueChunks-64 && round == 0 {
			t.Fatalf("re-run sent %d of %d chunks; the first run had stored at least 64", res.SentChunks, res.UniqueChunks)
		}
		pushed[tag] = copyTree(t, src)
		for tag, want := range pushed {
			dest := t.TempDir()
			if _, err := rc.Pull(context.Background(), client.PullOptions{TemplateID: res.TemplateID, Tag: tag, Dest: dest}); err != nil {
				t.Fatalf("round %d: pull %s: %v", round, tag, err)
			}
			if fileSum(t, filepath.Join(dest, "disk.img")) != fileSum(t, filepath.Join(want, "disk.img")) {
				t.Fatalf("round %d: tag %s pulls different bytes", round, tag)
			}
		}
	}
}

// killingBody kills a process once left bytes have been read through it.
type killingBody struct {
	r    io.ReadCloser
	left int64
	kill func()
}

func (k *killingBody) Read(p []byte) (int, error) {
	if k.left <= 0 {
		k.kill()
		return 0, errors.New("registry killed")
	}
	n, err := k.r.Read(p[:min(int64(len(p)), k.left)])
	k.left -= int64(n)
	return n, err
}

func (k *killingBody) Close() error { return k.r.Close() }

// copyTree copies a directory's regular files.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, _ := os.ReadDir(src)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644)
	}
	return dst
}

// TestConcurrentPushesAndGC: two overlapping pushes at once, then a delete +
// GC while a third push runs: nothing is lost.
func TestConcurrentPushesAndGC(t *testing.T) { eachStore(t, testConcurrentPushesAndGC) }

func testConcurrentPushesAndGC(t *testing.T, reg *regdaemon.Daemon) {
	reg.Registry.Grace = 0
	rc, _ := client.NewRegistry(reg.URL)
	ctx := context.Background()
	a := newVMDir(t, allMiB(30)...)
	b := copyDir(t, a)
	makeChanged(t, filepath.Join(b, "disk.img"), 3, 4, 5)

	var wg sync.WaitGroup
	results := make([]client.PushResult, 2)
	for i, src := range []string{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "shared", Tag: fmt.Sprint("t", i)})
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		}()
	}
	wg.Wait()
	if results[0].TemplateID != results[1].TemplateID {
		t.Fatal("two templates created for one name")
	}

	// Push c (sharing chunks with t0) while t0 is deleted and GC runs.
	c := copyDir(t, a)
	makeChanged(t, filepath.Join(c, "disk.img"), 20)
	var gcErr error
	var once sync.Once
	res, err := rc.Push(ctx, client.PushOptions{Source: c, Template: "third", Tag: "v1", Concurrency: 1,
		Progress: func(p client.Progress) {
			if p.Phase == "uploading" {
				once.Do(func() {
					if err := rc.Delete(ctx, results[0].TemplateID, "t0"); err != nil {
						gcErr = err
						return
					}
					for range 3 {
						time.Sleep(5 * time.Millisecond)
						if _, err := reg.Registry.GC(ctx); err != nil {
							gcErr = err
						}
					}
				})
			}
		}})
	if err != nil || gcErr != nil {
		t.Fatalf("push during GC: %v, GC: %v", err, gcErr)
	}
	for _, pull := range []struct{ id, tag, want string }{{results[1].TemplateID, "t1", b}, {res.TemplateID, "v1", c}} {
		dest := t.TempDir()
		if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: pull.id, Tag: pull.tag, Dest: dest}); err != nil {
			t.Fatalf("pull %s after GC: %v", pull.tag, err)
		}
		sameFiles(t, pull.want, dest)
	}
}

// TestCorruptChunkDetected: a chunk damaged on the registry's disk fails the
// pull with a clear error instead of writing bad data.
func TestCorruptChunkDetected(t *testing.T) {
	store := t.TempDir()
	reg := testenv.StartRegistry(t, store)
	rc, _ := client.NewRegistry(reg.URL)
	src := newVMDir(t, 5)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "t", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	damagePacks(t, store)
	_, err = rc.Pull(context.Background(), client.PullOptions{TemplateID: res.TemplateID, Dest: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "damaged") || !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("pull of corrupt chunk: %v", err)
	}
}

// TestRegistryBadRequests: bad input gets a clear 4xx/FAIL.
func TestRegistryBadRequests(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	base := reg.URL
	digest := chunk.Digest([]byte("x"))
	cases := []struct {
		method, path, body string
		code               int
		msg                string
	}{
		{"PUT", "/registry/corral/v1/chunks/nothex", "\x00abc", 400, `digest: "nothex" is not a sha256 hex digest`},
		{"PUT", "/registry/corral/v1/chunks/" + digest, "\x00y", 400, "chunk: chunk corrupt: content hashes to"},
		{"PUT", "/registry/corral/v1/chunks/" + digest, strings.Repeat("a", chunk.MaxEncoded+10), 400, "chunk: "},
		{"GET", "/registry/corral/v1/chunks/" + digest, "", 404, apiv1.MsgNotFound},
		{"POST", "/registry/corral/v1/chunks/missing", `{"digests":["../x"]}`, 400, `digests: "../x" is not a sha256 hex digest`},
		{"POST", "/registry/corral/v1/commit", `{"template":"../../etc","tag":"v1","arch":"amd64"}`, 400, `template: "../../etc"`},
		{"POST", "/registry/corral/v1/commit", `{"template":"ok","tag":"v1","arch":"amd64","manifest":{"chunk_size":1048576,"files":[{"name":"../evil","role":"image","size":0,"chunks":[]}]}}`, 400, `manifest.files[0].name: "../evil"`},
		{"POST", "/registry/corral/v1/commit", `{"template":`, 400, "body: "},
		{"GET", "/registry/corral/v1/manifest?id=nope", "", 200, apiv1.MsgNotFound},
		{"GET", "/registry/vm?id=nope", "", 200, apiv1.MsgNotFound},
		{"DELETE", "/registry/vm?id=nope", "", 200, apiv1.MsgNotFound},
		{"DELETE", "/registry/vm", "", 400, "id: required as ?id="},
		{"DELETE", "/registry/revert?id=nope", "", 200, apiv1.MsgNotFound},
		{"GET", "/registry/nothing", "", 200, apiv1.MsgNotFound},
	}
	for _, tc := range cases {
		code, env := call(t, tc.method, base+tc.path, "", tc.body)
		msg, _ := env["message"].(string)
		if code != tc.code || env["status"] != "FAIL" || !strings.HasPrefix(msg, tc.msg) {
			t.Errorf("%s %s: got HTTP %d %v, want %d FAIL %q...", tc.method, tc.path, code, env, tc.code, tc.msg)
		}
	}
	st := ok(t, "GET", base+"/registry/status", "").(map[string]any)
	if st["status"] != "Running" || st["version"] == "" {
		t.Errorf("status %v", st)
	}
	if disk := ok(t, "GET", base+"/registry/disk", "").(map[string]any); disk["total"].(float64) <= 0 {
		t.Errorf("disk %v", disk)
	}
}

// TestInstanceOfPushedTemplate: push, see it through the controller, start
// instances that pull through the node's cache.
func TestInstanceOfPushedTemplate(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 4}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1, 2, 3)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "ci-image", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	base := c.Controllers[0].URL + "/api/v1"
	listed := ok(t, "GET", base+"/registry/vm", "").([]any)
	if len(listed) != 1 || listed[0].(map[string]any)["id"] != res.TemplateID {
		t.Fatalf("controller lists %v", listed)
	}
	detail := ok(t, "GET", base+"/registry/vm?id="+res.TemplateID, "").(map[string]any)
	if v := detail["versions"].([]any); len(v) != 1 || v[0].(map[string]any)["tag"] != "v1" {
		t.Fatalf("versions %v", detail)
	}
	fail(t, "POST", base+"/vm", `{"vmid":"`+res.TemplateID+`","tag":"v9"}`, 200, "No such tag v9")
	fail(t, "POST", base+"/vm", `{"vmid":"not-there"}`, 200, apiv1.MsgNotInRegistry)

	ids := ok(t, "POST", base+"/vm", `{"vmid":"`+res.TemplateID+`","count":2}`).([]any)
	for _, id := range ids {
		in := c.WaitState(id.(string), apiv1.StateStarted, 20*time.Second)
		if in.Tag != "v1" || in.AnkaRegistry != c.Registry.URL {
			t.Errorf("instance %+v", in)
		}
	}
	var held []any
	for deadline := time.Now().Add(5 * time.Second); len(held) == 0 && time.Now().Before(deadline); {
		held = ok(t, "GET", base+"/node", "").([]any)[0].(map[string]any)["templates"].([]any)
		time.Sleep(100 * time.Millisecond)
	}
	if len(held) != 1 || held[0].(map[string]any)["uuid"] != res.TemplateID || held[0].(map[string]any)["name"] != "ci-image" {
		t.Fatalf("node templates %v", held)
	}
	ok(t, "DELETE", base+"/registry/vm?id="+res.TemplateID+"&tag=v1", "")
	fail(t, "DELETE", base+"/registry/revert?id="+res.TemplateID, "", 200, "No such tag ")
}

// TestS3Replicas: two registries on one bucket act as one store: a push
// through either is pulled through the other, and concurrent pushes of one
// template through both get one template and distinct tag numbers.
func TestS3Replicas(t *testing.T) {
	srv := testenv.StartS3(t)
	regs := []*regdaemon.Daemon{srv.StartRegistry(t, "shared"), srv.StartRegistry(t, "shared")}
	ctx := context.Background()
	src := newVMDir(t, allMiB(8)...)
	var wg sync.WaitGroup
	results := make([]client.PushResult, 2)
	for i, reg := range regs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, _ := client.NewRegistry(reg.URL)
			var err error
			if results[i], err = rc.Push(ctx, client.PushOptions{Source: src, Template: "replicated", Tag: fmt.Sprint("r", i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if results[0].TemplateID != results[1].TemplateID || results[0].Number == results[1].Number {
		t.Fatalf("concurrent pushes through two replicas: %+v / %+v", results[0], results[1])
	}
	other, _ := client.NewRegistry(regs[1].URL)
	dest := t.TempDir()
	if _, err := other.Pull(ctx, client.PullOptions{TemplateID: results[0].TemplateID, Tag: "r0", Dest: dest}); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, dest)
	// Objects really live in the bucket, under the prefix.
	if _, err := os.Stat(filepath.Join(srv.Root, srv.Bucket, "shared", "packs")); err != nil {
		t.Fatalf("no packs under the bucket prefix: %v", err)
	}
}

// TestRevertToTag: DELETE /registry/revert with a tag or number (query or
// body) drops every tag after it, as the reference does; it only ever
// dropped the latest.
func TestRevertToTag(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true})
	rc, _ := client.NewRegistry(c.Registry.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	var id string
	for _, tag := range []string{"v1", "v2", "v3", "v4", "v5"} {
		res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "reverting", Tag: tag})
		if err != nil {
			t.Fatal(err)
		}
		id = res.TemplateID
	}
	tags := func() string {
		d, err := rc.Template(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range d.Versions {
			out = append(out, v.Tag)
		}
		return strings.Join(out, ",")
	}
	base := c.Controllers[0].URL + "/api/v1"
	ok(t, "DELETE", base+"/registry/revert?id="+id+"&tag=v4", "")
	if got := tags(); got != "v1,v2,v3,v4" {
		t.Fatalf("after revert to v4: %s", got)
	}
	ok(t, "DELETE", base+"/registry/revert?id="+id, `{"tag":"v2"}`)
	if got := tags(); got != "v1,v2" {
		t.Fatalf("after revert to v2 (body): %s", got)
	}
	fail(t, "DELETE", base+"/registry/revert?id="+id+"&tag=v9", "", 200, "No such tag v9")
	fail(t, "DELETE", base+"/registry/revert?id="+id+"&number=x", "", 200, "number: must be a non-negative integer, got \"x\"")
	if err := rc.RevertTo(ctx, id, "", 0); err != nil { // the first tag's number
		t.Fatal(err)
	}
	if got := tags(); got != "v1" {
		t.Fatalf("after revert to number 1: %s", got)
	}
	ok(t, "DELETE", base+"/registry/revert?id="+id, "")
	if got := tags(); got != "" {
		t.Fatalf("after a plain revert: %q", got)
	}
}

// TestSetArch: PUT /registry/vm/arch sets a template's architecture, which
// placement matches against nodes (it answered Not found).
func TestSetArch(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	rc, _ := client.NewRegistry(reg.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"arch":"amd64"}`), 0o644)
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "archy", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	got := rawCall(t, "PUT", reg.URL+"/registry/vm/arch?id="+res.TemplateID, `{"arch":"arm64"}`)
	if d := shapeDiff("PUT arch", readRecorded(t, "docs-registry.PUT_registry_vm_arch.json"), got); len(d) > 0 {
		t.Fatalf("%v: %v", got, d)
	}
	if d, _ := rc.Template(ctx, res.TemplateID); d.Arch != "arm64" {
		t.Fatalf("arch %q", d.Arch)
	}
	if got := rawCall(t, "PUT", reg.URL+"/registry/vm/arch?id="+res.TemplateID+"&arch=sparc", ""); got.(map[string]any)["status"] != "FAIL" {
		t.Fatalf("bad arch: %v", got)
	}
	if got := rawCall(t, "PUT", reg.URL+"/registry/vm/arch?id=nope&arch=arm64", ""); got.(map[string]any)["status"] != "FAIL" {
		t.Fatalf("unknown template: %v", got)
	}
}

// TestVMInfo: GET /registry/vm/info?id= answers the tag's VM configuration
// (its config file) with name and uuid (it answered Not found).
func TestVMInfo(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	rc, _ := client.NewRegistry(reg.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"arch":"amd64","cpu":{"cores":2},"ram":"2G"}`), 0o644)
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "informed", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	got := rawCall(t, "GET", reg.URL+"/registry/vm/info?id="+res.TemplateID, "").(map[string]any)
	body := got["body"].(map[string]any)
	if got["status"] != "OK" || body["name"] != "informed" || body["uuid"] != res.TemplateID || body["ram"] != "2G" ||
		body["cpu"].(map[string]any)["cores"] != 2.0 {
		t.Fatalf("vm info %v", got)
	}
	if got := rawCall(t, "GET", reg.URL+"/registry/vm/info?id=nope", "").(map[string]any); got["status"] != "FAIL" {
		t.Fatalf("unknown: %v", got)
	}
}

// TestTagNumbersFromZero: a new template's first tag is number 0 and
// "version":0 starts it, as the reference numbers them (0 was refused);
// existing templates keep their numbers.
func TestTagNumbersFromZero(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	var id string
	for i, tag := range []string{"first", "second"} {
		res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "zero", Tag: tag})
		if err != nil || res.Number != i {
			t.Fatalf("push %s: number %d %v, want %d", tag, res.Number, err, i)
		}
		id = res.TemplateID
	}
	base := c.Controllers[0].URL + "/api/v1"
	in := ok(t, "POST", base+"/vm", `{"vmid":"`+id+`","version":0}`).([]any)[0].(string)
	if got := c.WaitState(in, apiv1.StateStarted, 10*time.Second); got.Tag != "first" || got.Version == nil || *got.Version != 0 {
		t.Fatalf("version 0 started %+v", got)
	}
	in = ok(t, "POST", base+"/vm", `{"vmid":"`+id+`"}`).([]any)[0].(string)
	if got := c.WaitState(in, apiv1.StateStarted, 10*time.Second); got.Tag != "second" || *got.Version != 1 {
		t.Fatalf("latest started %+v", got)
	}
	fail(t, "POST", base+"/vm", `{"vmid":"`+id+`","version":-1}`, 200, "version: must be an integer from 0 to 2147483648")
}

// TestPushResendsWhatCommitFindsMissing: chunks lost between upload and
// commit (a registry volume restored, an operator's cleanup) are sent
// again when the commit names them. The registry's 409 used to reach the
// push as the agent protocol's "node lease expired".
func TestPushResendsWhatCommitFindsMissing(t *testing.T) {
	store := t.TempDir()
	reg := testenv.StartRegistry(t, store)
	rc, _ := client.NewRegistry(reg.URL)
	src := newVMDir(t, 1, 2, 3)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "lost", Tag: "v1",
		BeforeCommit: func(context.Context) error {
			packs, _ := filepath.Glob(filepath.Join(store, "packs", "*.pack"))
			for _, p := range packs {
				if err := os.Remove(p); err != nil {
					return err
				}
			}
			return nil
		}})
	if err != nil {
		t.Fatalf("push whose chunks vanished before the commit: %v", err)
	}
	if res.SentChunks != 2*res.UniqueChunks {
		t.Fatalf("sent %d chunks for %d unique, want each sent twice", res.SentChunks, res.UniqueChunks)
	}
	dest := t.TempDir()
	if _, err := rc.Pull(context.Background(), client.PullOptions{TemplateID: res.TemplateID, Dest: dest}); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, dest)
}

// TestDeltaPush: a second tag whose guest wrote scattered 4 KiB blocks
// (5% of a disk, touching nearly every chunk) sends about the bytes that
// changed, not every 1 MiB chunk they touched; it pulls back whole.
func TestDeltaPush(t *testing.T) { eachStore(t, testDeltaPush) }

func testDeltaPush(t *testing.T, reg *regdaemon.Daemon) {
	ctx := context.Background()
	rc, _ := client.NewRegistry(reg.URL)
	src := newVMDir(t, allMiB(64)...)
	if _, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "delta", Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(src, "disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rnd := mrand.New(mrand.NewSource(1))
	blocks := map[int64]bool{}
	buf := make([]byte, chunk.BlockSize)
	for len(blocks) < 64*chunk.Blocks/20 {
		b := rnd.Int63n(64 * chunk.Blocks)
		rand.Read(buf)
		f.WriteAt(buf, b*chunk.BlockSize)
		blocks[b] = true
	}
	f.Close()
	changed := int64(len(blocks)) * chunk.BlockSize
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "delta", Tag: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("changed %d bytes in %d blocks; sent %d chunks, %d bytes (%.2fx)", changed, len(blocks), res.SentChunks, res.SentBytes, float64(res.SentBytes)/float64(changed))
	if res.SentChunks < 60 || res.SentBytes > 2*changed {
		t.Fatalf("second tag sent %d bytes in %d chunks for %d changed bytes, want at most 2x", res.SentBytes, res.SentChunks, changed)
	}
	// Reading v1 as the base of v2's deltas is not a pull of v1.
	if d, err := rc.Template(ctx, res.TemplateID); err != nil || d.LastPull != 0 {
		t.Fatalf("after two pushes and no pull, last pull is %d (err %v), want 0", d.LastPull, err)
	}
	dest := t.TempDir()
	if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Tag: "v2", Dest: dest}); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, dest)
}

// TestFewFilesPerGiB: a push stores its chunks in a few packs (one per
// 64 MiB window), not one file per MiB.
func TestFewFilesPerGiB(t *testing.T) {
	store := t.TempDir()
	reg := testenv.StartRegistry(t, store)
	rc, _ := client.NewRegistry(reg.URL)
	src := t.TempDir()
	makeImage(t, filepath.Join(src, "disk.img"), 256*chunk.Size, allMiB(256)...)
	if _, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "packed", Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	var files int
	filepath.WalkDir(store, func(_ string, d os.DirEntry, _ error) error {
		if d != nil && !d.IsDir() {
			files++
		}
		return nil
	})
	packs, _ := filepath.Glob(filepath.Join(store, "packs", "*.pack"))
	// 256 MiB: 4 packs (16 per GiB) plus the template's records.
	if len(packs) != 4 || files > 10 {
		t.Fatalf("256 MiB stored as %d packs and %d files in all, want 4 packs and at most 10 files", len(packs), files)
	}
}

// TestPushWhoseCommitAnswerIsLost: the registry commits the tag but its
// answer never reaches the client (a proxy or the network drops it, or the
// registry is killed right after the tag record lands). The client asks
// again and must learn that its push succeeded: the same commit again is
// the same tag, not "tag exists".
func TestPushWhoseCommitAnswerIsLost(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	target, _ := url.Parse(reg.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var dropped atomic.Bool
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/commit") && dropped.CompareAndSwap(false, true) {
			rec := httptest.NewRecorder()
			proxy.ServeHTTP(rec, r) // the registry commits...
			if !strings.Contains(rec.Body.String(), `"OK"`) {
				t.Errorf("first commit: %d %s", rec.Code, rec.Body)
			}
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close() // ...and its answer is lost
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	rc, _ := client.NewRegistry(front.URL)
	ctx := context.Background()
	src := newVMDir(t, allMiB(4)...)
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "lost", Tag: "v1"})
	if err != nil {
		t.Fatalf("push whose commit answer was lost: %v", err)
	}
	if !dropped.Load() {
		t.Fatal("no commit answer was dropped")
	}
	d, err := rc.Template(ctx, res.TemplateID)
	if err != nil || len(d.Versions) != 1 || d.Versions[0].Number != res.Number {
		t.Fatalf("template after the push: %+v, %v; want one tag numbered %d", d, err, res.Number)
	}
	dest := t.TempDir()
	if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Tag: "v1", Dest: dest}); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, dest)
}
