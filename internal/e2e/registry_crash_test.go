package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/retry"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// crashRegistry is a real registry process over one store.
type crashRegistry struct {
	cmd  *exec.Cmd
	exit chan struct{}
	url  string
	log  string
}

func startCrashRegistry(t *testing.T, bin, addr string, st crashStore, store string, env ...string) *crashRegistry {
	t.Helper()
	// GC every 200 ms; a 2 s grace lets it condemn and delete during a round
	// while what a push has just written stays protected. A GC lock not
	// renewed for 1 s (a killed run's) is taken over.
	args := append([]string{"registry", "--listen", addr, "--gc-interval", "200ms", "--gc-grace", "2s"}, st.flags(store)...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), append([]string{"CORRAL_FAILPOINT_GC_LOCK_TTL=1s"}, env...)...)
	logPath := filepath.Join(st.work, "registry.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &crashRegistry{cmd: cmd, exit: make(chan struct{}), url: "http://" + addr, log: logPath}
	go func() { _ = cmd.Wait(); logf.Close(); close(r.exit) }()
	t.Cleanup(r.kill)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err := http.Get(r.url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		if r.dead() {
			t.Fatalf("registry exited at start (log: %s)", logPath)
		}
		if time.Now().After(deadline) {
			t.Fatal("registry did not become ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// crashStore is where the crash test's registries keep their stores: a
// directory or a prefix of an S3 bucket, one per round, copied from a base.
type crashStore struct {
	work  string
	flags func(store string) []string
	copy  func(t *testing.T, from, to string)
}

func cpTree(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("copy the base store: %v: %s", err, out)
	}
}

func (r *crashRegistry) dead() bool {
	select {
	case <-r.exit:
		return true
	default:
		return false
	}
}

func (r *crashRegistry) kill() {
	_ = r.cmd.Process.Kill()
	<-r.exit
}

// gcRuns reads corral_registry_gc_runs_total.
func (r *crashRegistry) gcRuns() (int, error) {
	resp, err := http.Get(r.url + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "corral_registry_gc_runs_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, errors.New("no corral_registry_gc_runs_total in /metrics")
}

// waitGC waits for two more finished GC passes of any of the replicas
// (whichever holds the lock): the second started after the call.
func waitGC(t *testing.T, replicas ...*crashRegistry) error {
	t.Helper()
	runs := func() (int, error) {
		total := 0
		for _, r := range replicas {
			n, err := r.gcRuns()
			if err != nil {
				return 0, err
			}
			total += n
		}
		return total, nil
	}
	start, err := runs()
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		n, err := runs()
		if err != nil {
			return err
		}
		if n >= start+2 {
			return nil
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(replicas[0].log)
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			t.Fatalf("no GC pass finished in 30 s (%d -> %d); the registries' log ends:\n%s", start, n, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRegistryKilledAtEveryKindOfWrite: the registry process SIGKILLs itself
// (a failpoints build) before, in the middle of, or right after a random one
// of its writes to the store while it takes a template push whose chunks
// travel as deltas and whole, an OCI push, a tag deletion and GC passes that
// condemn, rewrite and delete packs. After each kill it restarts: every
// acknowledged tag pulls whole and verified, an acknowledged deletion stays
// deleted, nothing half-written is listed, and the same work then completes
// (GC included: the dead run's lock is taken over once its TTL has passed).
// A second replica on the same store, never killed, meanwhile commits a tag
// of another template made of v1's chunks while v1 is deleted. On a
// directory and on S3 (versitygw).
func TestRegistryKilledAtEveryKindOfWrite(t *testing.T) {
	t.Run("filesystem", func(t *testing.T) {
		work := t.TempDir()
		testRegistryKilled(t, 10, crashStore{
			work:  work,
			flags: func(store string) []string { return []string{"--data-dir", filepath.Join(work, store)} },
			copy:  func(t *testing.T, from, to string) { cpTree(t, filepath.Join(work, from), filepath.Join(work, to)) },
		})
	})
	t.Run("s3", func(t *testing.T) {
		s3 := testenv.StartS3(t)
		work := t.TempDir()
		testRegistryKilled(t, 4, crashStore{
			work: work,
			flags: func(store string) []string {
				return []string{"--backend", "s3", "--s3-endpoint", s3.Endpoint, "--s3-bucket", s3.Bucket, "--s3-prefix", store,
					"--data-dir", filepath.Join(work, "unused")}
			},
			// versitygw keeps an object as a file under the bucket's directory
			// (its metadata in extended attributes, which cp -a keeps).
			copy: func(t *testing.T, from, to string) {
				cpTree(t, filepath.Join(s3.Root, s3.Bucket, from), filepath.Join(s3.Root, s3.Bucket, to))
			},
		})
	})
}

func testRegistryKilled(t *testing.T, rounds int, st crashStore) {
	bin := failpointBinary(t)
	if v, err := strconv.Atoi(os.Getenv("CORRAL_CRASH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	seed := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("CORRAL_CRASH_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("kill points from seed %d (CORRAL_CRASH_SEED replays them)", seed)
	rnd := mrand.New(mrand.NewSource(seed))
	ctx := context.Background()

	// Template tags v0..v3: each changes the last in a few 4 KiB blocks
	// (sent as deltas) and adds whole new chunks.
	srcs := map[string]string{}
	cur := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(cur, 0o755)
	os.WriteFile(filepath.Join(cur, "config.json"), []byte(`{"arch":"amd64"}`), 0o644)
	makeImage(t, filepath.Join(cur, "disk.img"), 32*chunk.Size, allMiB(20)...)
	for i := range 4 {
		tag := fmt.Sprint("v", i)
		if i > 0 {
			makeChanged(t, filepath.Join(cur, "disk.img"), int64(i), int64(i+5), int64(i+10))
			writeRandomChunks(t, filepath.Join(cur, "disk.img"), int64(19+i*3), int64(20+i*3))
		}
		srcs[tag] = copyTree(t, cur)
	}
	images := map[string]v1.Image{}
	for _, tag := range []string{"0", "1", "2"} {
		img, err := random.Image(1<<20+12345, 3)
		if err != nil {
			t.Fatal(err)
		}
		images[tag] = img
	}

	freeAddr := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}
	addr, addrB := freeAddr(), freeAddr()
	rc, _ := client.NewRegistry("http://" + addr)
	rc.Retry = retry.Policy{Attempts: 1, PerAttempt: time.Minute}
	// A second replica on the same store, never killed, takes a push of
	// another template holding v1's chunks while the first deletes v1 and
	// both collect garbage: the chunks its commit relies on must survive.
	rcB, _ := client.NewRegistry("http://" + addrB)
	rcB.Retry = retry.Policy{Attempts: 1, PerAttempt: time.Minute}
	replicaPush := func(round int) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := rcB.Push(ctx, client.PushOptions{Source: srcs["v1"], Template: "other", Tag: fmt.Sprint("r", round)})
			done <- err
		}()
		return done
	}
	verifyOther := func(when string, round int) {
		t.Helper()
		id, err := rc.FindTemplate(ctx, "other")
		if err != nil {
			t.Fatalf("%s: the other replica's template: %v", when, err)
		}
		dest := filepath.Join(t.TempDir(), "pull")
		if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: id, Tag: fmt.Sprint("r", round), Dest: dest}); err != nil {
			t.Fatalf("%s: pull the other replica's tag: %v", when, err)
		}
		if fileSum(t, filepath.Join(dest, "disk.img")) != fileSum(t, filepath.Join(srcs["v1"], "disk.img")) {
			t.Fatalf("%s: the other replica's tag pulls different bytes", when)
		}
	}
	ref := func(tag string) name.Reference {
		r, err := name.ParseReference(addr+"/ci/app:"+tag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	push := func(tag string) error {
		_, err := rc.Push(ctx, client.PushOptions{Source: srcs[tag], Template: "img", Tag: tag, Concurrency: 2})
		return err
	}
	ociPush := func(tag string) error { return remote.Write(ref(tag), images[tag]) }
	deleteTag := func(tag string) error {
		id, err := rc.FindTemplate(ctx, "img")
		if err != nil {
			return err
		}
		return rc.Delete(ctx, id, tag)
	}

	// The base store: v0..v2 and app:0, app:1; v0 and app:0 deleted and
	// condemned by GC (their deletion from the attic falls in the rounds).
	reg := startCrashRegistry(t, bin, addr, st, "base")
	for _, step := range []func() error{
		func() error { return push("v0") }, func() error { return push("v1") }, func() error { return push("v2") },
		func() error { return ociPush("0") }, func() error { return ociPush("1") },
		func() error { return deleteTag("v0") },
		func() error {
			d, err := images["0"].Digest()
			if err != nil {
				return err
			}
			r, _ := name.NewDigest(addr+"/ci/app@"+d.String(), name.Insecure)
			return remote.Delete(r)
		},
	} {
		if err := step(); err != nil {
			t.Fatalf("base store: %v", err)
		}
	}
	if err := waitGC(t, reg); err != nil {
		t.Fatal(err)
	}
	reg.kill()

	// verify checks what the registry lists against what was acknowledged:
	// every listed tag pulls whole and verified; must tags are listed,
	// gone tags are not.
	verify := func(when string, must, gone []string, ociMust []string) {
		t.Helper()
		id, err := rc.FindTemplate(ctx, "img")
		if err != nil {
			t.Fatalf("%s: find template: %v", when, err)
		}
		d, err := rc.Template(ctx, id)
		if err != nil {
			t.Fatalf("%s: template: %v", when, err)
		}
		listed := map[string]bool{}
		for _, v := range d.Versions {
			listed[v.Tag] = true
			want, ok := srcs[v.Tag]
			if !ok {
				t.Fatalf("%s: unknown tag %q listed", when, v.Tag)
			}
			dest := filepath.Join(t.TempDir(), "pull")
			if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: id, Tag: v.Tag, Dest: dest}); err != nil {
				t.Fatalf("%s: pull %s: %v", when, v.Tag, err)
			}
			if fileSum(t, filepath.Join(dest, "disk.img")) != fileSum(t, filepath.Join(want, "disk.img")) {
				t.Fatalf("%s: tag %s pulls different bytes", when, v.Tag)
			}
		}
		for _, tag := range must {
			if !listed[tag] {
				t.Fatalf("%s: acknowledged tag %s is not listed (listed: %v)", when, tag, listed)
			}
		}
		for _, tag := range gone {
			if listed[tag] {
				t.Fatalf("%s: tag %s was deleted and is listed again", when, tag)
			}
		}
		for _, tag := range ociMust {
			got, err := remote.Image(ref(tag))
			if err != nil {
				t.Fatalf("%s: OCI pull app:%s: %v", when, tag, err)
			}
			if mustDigest(t, got) != mustDigest(t, images[tag]) {
				t.Fatalf("%s: app:%s pulls another manifest", when, tag)
			}
			wantLayers, _ := images[tag].Layers()
			gotLayers, err := got.Layers()
			if err != nil {
				t.Fatal(err)
			}
			for i, l := range gotLayers {
				if !sameLayer(t, wantLayers[i], l) {
					t.Fatalf("%s: app:%s layer %d differs", when, tag, i)
				}
			}
		}
	}

	// One round's work, in order; done records what was acknowledged.
	type step struct {
		name string
		run  func() error
	}
	steps := []step{
		{"push v3", func() error { return push("v3") }},
		{"OCI push app:2", func() error { return ociPush("2") }},
		{"delete v1", func() error { return deleteTag("v1") }},
	}
	roundStore := func(i int) string {
		store := fmt.Sprint("round", i)
		st.copy(t, "base", store)
		return store
	}

	// A dry round counts the writes a round makes (gc/lock's are not
	// counted: its lease is what a takeover tests, below).
	dry := roundStore(0)
	logPath := filepath.Join(st.work, "writes.log")
	reg = startCrashRegistry(t, bin, addr, st, dry, "CORRAL_FAILPOINT_LOG="+logPath, "CORRAL_FAILPOINT_SKIP=gc/lock")
	regB := startCrashRegistry(t, bin, addrB, st, dry)
	pushedB := replicaPush(0)
	for _, s := range steps {
		if err := s.run(); err != nil {
			t.Fatalf("dry round: %s: %v", s.name, err)
		}
	}
	if err := <-pushedB; err != nil {
		t.Fatalf("dry round: the other replica's push: %v", err)
	}
	if err := waitGC(t, reg, regB); err != nil {
		t.Fatal(err)
	}
	verifyOther("dry round", 0)
	reg.kill()
	regB.kill()
	writes := countLines(t, logPath)
	t.Logf("a round makes %d writes to the store", writes)

	kinds := map[string]int{}
	for round := 1; round <= rounds; round++ {
		store := roundStore(round)
		n := 1 + rnd.Intn(writes)
		point := strconv.Itoa(n) + []string{"", "~", "+"}[rnd.Intn(3)]
		killLog := filepath.Join(st.work, store+".writes.log")
		reg = startCrashRegistry(t, bin, addr, st, store, "CORRAL_FAILPOINT_KILL="+point, "CORRAL_FAILPOINT_SKIP=gc/lock", "CORRAL_FAILPOINT_LOG="+killLog)
		regB := startCrashRegistry(t, bin, addrB, st, store)
		pushedB := replicaPush(round)
		var acked []string
		for _, s := range steps {
			if err := s.run(); err != nil {
				if !reg.dead() {
					select {
					case <-reg.exit:
					case <-time.After(5 * time.Second):
						t.Fatalf("round %d: %s failed with the registry alive: %v", round, s.name, err)
					}
				}
				break
			}
			acked = append(acked, s.name)
		}
		if !reg.dead() {
			_ = waitGC(t, reg, regB) // the kill may fall in a GC pass after the steps
			select {
			case <-reg.exit:
			case <-time.After(2 * time.Second):
			}
		}
		died := reg.dead()
		reg.kill()
		if err := <-pushedB; err != nil {
			t.Fatalf("round %d: the other replica's push, beside the killed one: %v", round, err)
		}
		at := lastLine(t, killLog)
		if died {
			kind := strings.Fields(at + " ? ?")[1] // "N op path"
			if kind == "Delete" || strings.Contains(at, "attic/") || strings.Contains(at, "trash/") {
				kind += " (gc)" // GC's writes: condemning, rewriting, deleting
			}
			kinds[kind]++
		}
		t.Logf("round %d: kill point %s: died=%v at %q after %v", round, point, died, at, acked)

		// A run killed mid-GC left its lock: the restarted registry takes it
		// over once its TTL (1 s here) has passed.
		reg = startCrashRegistry(t, bin, addr, st, store)
		must, gone, ociMust := []string{"v2"}, []string{"v0"}, []string{"1"}
		for _, a := range acked {
			switch a {
			case "push v3":
				must = append(must, "v3")
			case "OCI push app:2":
				ociMust = append(ociMust, "2")
			case "delete v1":
				gone = append(gone, "v1")
			}
		}
		if !slices.Contains(acked, "delete v1") {
			must = append(must, "v1")
		}
		verify(fmt.Sprintf("round %d after the kill", round), must, gone, ociMust)
		verifyOther(fmt.Sprintf("round %d after the kill", round), round)
		// The same work completes, and GC runs again.
		for _, s := range steps {
			if slices.Contains(acked, s.name) {
				continue
			}
			if err := s.run(); err != nil {
				t.Fatalf("round %d: after restart %s: %v", round, s.name, err)
			}
		}
		if err := waitGC(t, reg, regB); err != nil {
			t.Fatal(err)
		}
		verify(fmt.Sprintf("round %d after restart, work and GC", round), []string{"v2", "v3"}, []string{"v0", "v1"}, []string{"1", "2"})
		verifyOther(fmt.Sprintf("round %d after restart, work and GC", round), round)
		reg.kill()
		regB.kill()
	}
	t.Logf("kills by write: %v", kinds)
}

// writeRandomChunks fills whole chunks at the given MiB offsets of an
// existing file with new random data (makeImage's data, a tag's new chunks).
func writeRandomChunks(t *testing.T, path string, mibs ...int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, chunk.Size)
	for _, m := range mibs {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, m*chunk.Size); err != nil {
			t.Fatal(err)
		}
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

func lastLine(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return lines[len(lines)-1]
}

// TestClientsKilledMidTransfer: a real `corral template push` and a real
// `corral template pull` are SIGKILLed in the middle of their transfers (a
// proxy kills them when the Nth pack upload or chunk fetch arrives). The
// killed push publishes nothing and its re-run sends only what had not
// arrived; the killed pull leaves nothing that looks complete and its
// re-run reuses what it wrote, ending byte for byte equal.
func TestClientsKilledMidTransfer(t *testing.T) {
	bin := corralBinary(t)
	reg := testenv.StartRegistry(t, t.TempDir())
	rc, _ := client.NewRegistry(reg.URL)
	ctx := context.Background()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"arch":"amd64"}`), 0o644)
	makeImage(t, filepath.Join(src, "disk.img"), 256*chunk.Size, allMiB(256)...)

	// killAt serves the client through a proxy that SIGKILLs it when the
	// nth request to a path ending in suffix arrives.
	killAt := func(suffix string, nth int64, args ...string) {
		t.Helper()
		target, _ := url.Parse(reg.URL)
		proxy := httputil.NewSingleHostReverseProxy(target)
		var seen atomic.Int64
		var cmd *exec.Cmd
		started := make(chan struct{})
		front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, suffix) && seen.Add(1) == nth {
				<-started
				_ = cmd.Process.Kill()
				panic(http.ErrAbortHandler)
			}
			proxy.ServeHTTP(w, r)
		}))
		defer front.Close()
		cmd = exec.Command(bin, append(args, "--registry", front.URL)...)
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		close(started)
		err := cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ProcessState.Sys().(interface{ Signaled() bool }).Signaled() == false {
			t.Fatalf("%v: want it killed by the proxy, got %v: %s", args, err, out)
		}
	}

	killAt("/packs", 4, "template", "push", src, "--name", "killed", "--tag", "v1", "--concurrency", "1")
	if _, err := rc.FindTemplate(ctx, "killed"); err == nil {
		t.Fatal("a push killed mid-upload published its template")
	}
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "killed", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.SentChunks > res.UniqueChunks-2*client.Window { // the config and two windows arrived before the kill
		t.Fatalf("re-run of a killed push sent %d of %d chunks; two windows had arrived", res.SentChunks, res.UniqueChunks)
	}

	dest := filepath.Join(t.TempDir(), "pulled")
	killAt("/chunks/fetch", 3, "template", "pull", "killed", "--tag", "v1", "--dest", dest, "--concurrency", "1")
	if _, err := os.Stat(filepath.Join(dest, client.PulledManifest)); err == nil {
		t.Fatal("a pull killed mid-transfer is marked complete")
	}
	if _, err := os.Stat(filepath.Join(dest, "disk.img")); err == nil {
		t.Fatal("a pull killed mid-transfer left disk.img under its final name")
	}
	pr, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Tag: "v1", Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-runs: the push sent %d of %d chunks, the pull reused %d and fetched %d", res.SentChunks, res.UniqueChunks, pr.LocalChunks, pr.DownloadedChunk)
	if pr.LocalChunks < 2*client.Window {
		t.Fatalf("re-run of a killed pull reused %d chunks; two requests' worth had been written", pr.LocalChunks)
	}
	if fileSum(t, filepath.Join(dest, "disk.img")) != fileSum(t, filepath.Join(src, "disk.img")) {
		t.Fatal("the resumed pull differs from what was pushed")
	}
}
