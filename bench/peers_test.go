package bench

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/testenv"
	"github.com/klauspost/compress/zstd"
)

// BenchmarkTransfers measures template push and pull against the CNCF
// registry with oras, and Corral's /v2/ with oras, on a mixed and a dense
// image, cold cache and durable (every operation ends with sync(2), inside
// its time), with the machine's limits measured in the same run.
//
// Peers: `registry` (distribution v3.1.2) and `oras` (v1.3.6) on PATH or in
// ~/.cache/corral-ci/peers (go install, see the README). Env:
// CORRAL_BENCH_SCALE (image sizes, default 1: 4 GiB mixed, 2 GiB dense),
// CORRAL_BENCH_REPS (default 3; medians are printed), CORRAL_BENCH_DIR.
func BenchmarkTransfers(b *testing.B) {
	scale := 1.0
	if v, err := strconv.ParseFloat(os.Getenv("CORRAL_BENCH_SCALE"), 64); err == nil && v > 0 {
		scale = v
	}
	reps := 3
	if v, err := strconv.Atoi(os.Getenv("CORRAL_BENCH_REPS")); err == nil && v > 0 {
		reps = v
	}
	dir := benchDir(b)
	bin := buildCorral(b, dir)
	distBin, orasBin := peerTool("registry"), peerTool("oras")
	if distBin == "" || orasBin == "" {
		fmt.Println("peers not found (registry, oras): only Corral's template transfers are measured")
	}
	for range b.N {
		printLimits(b, dir)
		for _, img := range []struct {
			name string
			make func(path string, size int64)
			size int64
		}{
			{"mixed", func(p string, n int64) { makeMixed(b, p, n) }, int64(scale * 4 * (1 << 30))},
			{"dense", func(p string, n int64) { makeDense(b, p, n) }, int64(scale * 2 * (1 << 30))},
		} {
			src := filepath.Join(dir, img.name)
			os.MkdirAll(src, 0o755)
			disk := filepath.Join(src, "disk.img")
			img.make(disk, img.size)
			layers := filepath.Join(dir, img.name+"-layers")
			splitLayers(b, disk, layers, 512<<20)
			dropCaches()
			cp := timeCp(b, disk, filepath.Join(dir, "cp.img"))
			os.Remove(filepath.Join(dir, "cp.img"))
			fmt.Printf("\n%s image: %s (cp durable, cold: %.2fs)\n", img.name, gib(img.size), cp.Seconds())
			fmt.Printf("  %-26s %-5s %8s %8s %9s %9s %10s\n", "system", "op", "wall s", "CPU s", "cli MiB", "srv MiB", "wire MiB")
			results := map[string]opResult{}
			systems := []transferSystem{corralTemplates("corral template", corralRegistry(bin), bin, src)}
			if distBin != "" && orasBin != "" {
				blob := firstLayer(b, layers) // the blob each registry's GET is timed on
				systems = append(systems, orasTo("oras -> distribution", distRegistry(distBin), orasBin, layers, blob),
					orasTo("oras -> corral /v2/", corralRegistry(bin), orasBin, layers, blob))
			}
			for _, sys := range systems {
				for op, m := range sys.medians(b, dir, reps) {
					results[sys.name+" "+op] = m
					fmt.Printf("  %-26s %-5s %8.2f %8.2f %9d %9d %10d\n", sys.name, op, m.wall.Seconds(), m.cpu.Seconds(), m.clientRSS>>20, m.serverRSS>>20, m.wire>>20)
				}
			}
			ratios(results, cp)
			os.RemoveAll(src)
			os.RemoveAll(layers)
		}
	}
}

type opResult struct {
	op                   string // push, pull, get (one blob)
	wall, cpu            time.Duration
	clientRSS, serverRSS int64 // bytes
	wire                 int64 // loopback bytes
}

// medians runs the system reps times and yields the median of each
// operation, in the order the system runs them.
func (sys transferSystem) medians(b *testing.B, dir string, reps int) iter.Seq2[string, opResult] {
	var order []string
	byOp := map[string][]opResult{}
	for range reps {
		for _, r := range sys.run(b, dir) {
			if byOp[r.op] == nil {
				order = append(order, r.op)
			}
			byOp[r.op] = append(byOp[r.op], r)
		}
	}
	return func(yield func(string, opResult) bool) {
		for _, op := range order {
			if !yield(op, medianResult(byOp[op])) {
				return
			}
		}
	}
}

func medianResult(rs []opResult) opResult {
	slices.SortFunc(rs, func(a, b opResult) int { return int(a.wall - b.wall) })
	return rs[len(rs)/2]
}

func ratios(res map[string]opResult, cp time.Duration) {
	x := func(a, b string) string {
		ra, oka := res[a]
		rb, okb := res[b]
		if !oka || !okb {
			return "n/a"
		}
		return fmt.Sprintf("%.2fx", rb.wall.Seconds()/ra.wall.Seconds())
	}
	fmt.Println("  ratios (how many times faster; > 1 is better):")
	if c, ok := res["oras -> corral /v2/ get"]; ok {
		d := res["oras -> distribution get"]
		mbps := func(r opResult) float64 { return float64(r.wire) / 1e6 / r.wall.Seconds() }
		fmt.Printf("    blob GET (one 512 MiB layer, cold): corral /v2/ %.0f MB/s, distribution %.0f MB/s (target >= 555 MB/s and >= distribution)\n", mbps(c), mbps(d))
	}
	for _, op := range []string{"push", "pull"} {
		fmt.Printf("    template %s vs oras -> distribution: %s (target >= 2x)\n", op, x("corral template "+op, "oras -> distribution "+op))
		fmt.Printf("    corral /v2/ %s vs distribution (oras): %s (target >= 1x)\n", op, x("oras -> corral /v2/ "+op, "oras -> distribution "+op))
		if r, ok := res["corral template "+op]; ok {
			fmt.Printf("    template %s / cp: %.2f of cp's time (target <= 1.2)\n", op, r.wall.Seconds()/cp.Seconds())
		}
	}
}

// transferSystem is one registry with its client.
type transferSystem struct {
	name string
	run  func(b *testing.B, dir string) []opResult
}

// server is a registry process for one repetition.
type server struct {
	cmd *exec.Cmd
	url string
}

func (s server) cpu() time.Duration { return procCPU(s.cmd.Process.Pid) }

func (s server) stop(b *testing.B) int64 {
	peak := procStatusKiB(b, s.cmd.Process.Pid, "VmHWM") << 10
	s.cmd.Process.Kill()
	s.cmd.Wait()
	return peak
}

type serverKind func(b *testing.B, store string) server

// corralOnS3 is a registry process storing in a versitygw bucket (a fresh
// prefix per run).
func corralOnS3(bin string, s3 testenv.S3Server) serverKind {
	return func(b *testing.B, store string) server {
		addr := freeAddr(b)
		cmd := exec.Command(bin, "registry", "--listen", addr, "--backend", "s3", "--s3-bucket", s3.Bucket,
			"--s3-endpoint", s3.Endpoint, "--s3-path-style", "--s3-prefix", fmt.Sprint("run", time.Now().UnixNano()))
		return startServer(b, cmd, "http://"+addr, "/registry/status")
	}
}

// BenchmarkS3VsFilesystem pushes and pulls a dense image through a registry
// on a directory and one on S3 (versitygw on the same disk), cold cache and
// durable, and prints the ratios (target: S3 within 2x). Env:
// CORRAL_BENCH_S3_GIB (default 1), CORRAL_BENCH_REPS (3).
func BenchmarkS3VsFilesystem(b *testing.B) {
	size := envGiB("CORRAL_BENCH_S3_GIB", 1)
	reps := 3
	if v, err := strconv.Atoi(os.Getenv("CORRAL_BENCH_REPS")); err == nil && v > 0 {
		reps = v
	}
	dir := benchDir(b)
	bin := buildCorral(b, dir)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	makeDense(b, filepath.Join(src, "disk.img"), size)
	s3 := testenv.StartS3(b)
	for range b.N {
		fmt.Printf("dense %s through the registry: filesystem vs S3 (versitygw, same disk), medians of %d\n", gib(size), reps)
		fmt.Printf("  %-18s %-5s %8s %8s %9s\n", "store", "op", "wall s", "CPU s", "srv MiB")
		got := map[string]opResult{}
		for _, sys := range []transferSystem{corralTemplates("filesystem", corralRegistry(bin), bin, src), corralTemplates("s3", corralOnS3(bin, s3), bin, src)} {
			for op, m := range sys.medians(b, dir, reps) {
				got[sys.name+" "+op] = m
				fmt.Printf("  %-18s %-5s %8.2f %8.2f %9d\n", sys.name, op, m.wall.Seconds(), m.cpu.Seconds(), m.serverRSS>>20)
			}
		}
		for _, op := range []string{"push", "pull"} {
			fs, s := got["filesystem "+op], got["s3 "+op]
			fmt.Printf("  %s on S3: %.2fx the filesystem's time, %.2fx its registry RSS (target <= 2x; versitygw's own CPU not counted)\n",
				op, s.wall.Seconds()/fs.wall.Seconds(), float64(s.serverRSS)/float64(fs.serverRSS))
		}
	}
}

func corralRegistry(bin string) serverKind {
	return func(b *testing.B, store string) server {
		addr := freeAddr(b)
		cmd := exec.Command(bin, "registry", "--listen", addr, "--data-dir", store)
		return startServer(b, cmd, "http://"+addr, "/registry/status")
	}
}

func distRegistry(bin string) serverKind {
	return func(b *testing.B, store string) server {
		addr := freeAddr(b)
		cfg := filepath.Join(filepath.Dir(store), filepath.Base(store)+".yml")
		os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", store, addr)), 0o644)
		cmd := exec.Command(bin, "serve", cfg)
		return startServer(b, cmd, "http://"+addr, "/v2/")
	}
}

func startServer(b *testing.B, cmd *exec.Cmd, url, probe string) server {
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(url + probe); err == nil {
			resp.Body.Close()
			return server{cmd, url}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not start", cmd.Path)
		}
	}
}

func corralTemplates(name string, kind serverKind, bin, src string) transferSystem {
	return transferSystem{name, func(b *testing.B, dir string) []opResult {
		store := filepath.Join(dir, "store")
		srv := kind(b, store)
		defer os.RemoveAll(store)
		push := timeOp(b, srv, exec.Command(bin, "template", "push", src, "--name", "img", "--tag", "v1", "--registry", srv.url))
		dest := filepath.Join(dir, "pulled")
		pull := timeOp(b, srv, exec.Command(bin, "template", "pull", "img", "--tag", "v1", "--dest", dest, "--registry", srv.url))
		os.RemoveAll(dest)
		push.serverRSS = srv.stop(b)
		pull.serverRSS = push.serverRSS
		push.op, pull.op = "push", "pull"
		return []opResult{push, pull}
	}}
}

func orasTo(name string, kind serverKind, oras, layers string, blob layerBlob) transferSystem {
	return transferSystem{name, func(b *testing.B, dir string) []opResult {
		store := filepath.Join(dir, "store")
		srv := kind(b, store)
		defer os.RemoveAll(store)
		ref := strings.TrimPrefix(srv.url, "http://") + "/vm/img:v1"
		entries, _ := os.ReadDir(layers)
		args := []string{"push", "--plain-http", "--disable-path-validation", ref}
		for _, e := range entries {
			args = append(args, e.Name()+":application/vnd.oci.image.layer.v1.tar")
		}
		cmd := exec.Command(oras, args...)
		cmd.Dir = layers
		push := timeOp(b, srv, cmd)
		dest := filepath.Join(dir, "pulled")
		pull := timeOp(b, srv, exec.Command(oras, "pull", "--plain-http", "-o", dest, ref))
		os.RemoveAll(dest)
		// One layer's blob GET alone, cold, read and discarded.
		get := timeGet(b, srv, srv.url+"/v2/vm/img/blobs/sha256:"+blob.digest, blob.size)
		push.serverRSS = srv.stop(b)
		pull.serverRSS, get.serverRSS = push.serverRSS, push.serverRSS
		push.op, pull.op, get.op = "push", "pull", "get"
		return []opResult{push, pull, get}
	}}
}

// layerBlob names a pushed layer's blob.
type layerBlob struct {
	digest string // sha256, hex
	size   int64
}

// firstLayer is the blob of the first layer file oras pushes from dir.
func firstLayer(b *testing.B, dir string) layerBlob {
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		b.Fatalf("layers in %s: %v", dir, err)
	}
	f, err := os.Open(filepath.Join(dir, entries[0].Name()))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		b.Fatal(err)
	}
	return layerBlob{hex.EncodeToString(h.Sum(nil)), n}
}

// timeGet reads one blob on a cold cache and discards it: wall, server
// CPU, the body's bytes (as wire).
func timeGet(b *testing.B, srv server, url string, size int64) opResult {
	dropCaches()
	cpu0 := srv.cpu()
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || n != size {
		b.Fatalf("GET %s: HTTP %d, %d of %d bytes: %v", url, resp.StatusCode, n, size, err)
	}
	return opResult{wall: time.Since(start), cpu: srv.cpu() - cpu0, wire: n}
}

// timeOp runs a client on a cold cache and syncs after it: wall, client +
// server CPU, client peak RSS, loopback bytes.
func timeOp(b *testing.B, srv server, cmd *exec.Cmd) opResult {
	dropCaches()
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cpu0, wire0 := srv.cpu(), loopbackBytes()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	// The client's peak RSS is its VmHWM, sampled until it exits: rusage's
	// maxrss of a child Go started (vfork, then exec) counts this
	// benchmark's own RSS at the exec.
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if kib, ok := procStatus(cmd.Process.Pid, "VmHWM"); ok {
				peak.Store(kib << 10)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	close(stop)
	<-sampled
	if err != nil {
		b.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out.String())
	}
	syscall.Sync()
	r := opResult{wall: time.Since(start), wire: loopbackBytes() - wire0, clientRSS: peak.Load()}
	ps := cmd.ProcessState
	r.cpu = ps.UserTime() + ps.SystemTime() + srv.cpu() - cpu0
	return r
}

// printLimits measures what bounds a transfer on this machine.
func printLimits(b *testing.B, dir string) {
	buf := make([]byte, 64<<20)
	rand.Read(buf)
	const total = 1 << 30
	hash := func(workers int) float64 {
		start := time.Now()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for off := w * (total / workers); off < (w+1)*(total/workers); off += 1 << 20 {
					sha256.Sum256(buf[off%len(buf) : off%len(buf)+1<<20])
				}
			}()
		}
		wg.Wait()
		return total / 1e9 / time.Since(start).Seconds()
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	text := []byte(strings.Repeat("corral build cloud template chunk ", 1<<15))[:1<<20]
	start := time.Now()
	var dst []byte
	for range 512 {
		dst = enc.EncodeAll(text, dst[:0])
	}
	zstdRate := 512 * (1 << 20) / 1e9 / time.Since(start).Seconds()
	fmt.Printf("limits: sha256 %.2f GB/s (1 goroutine), %.2f GB/s (2); zstd fastest %.2f GB/s (text); loopback TCP %.1f Gbit/s; fresh memory %.2f s per GiB first touched\n",
		hash(1), hash(2), zstdRate, loopbackGbit(b), freshMemory())
}

// freshMemory times touching memory the process never used: the page
// faults every transfer's buffers (and the page cache) pay first. On VMs
// that hand freed memory back to their host it costs far more than the
// copies themselves (2.9 s per GiB on this project's VM, 2026-12-07).
func freshMemory() float64 {
	const n = 256 << 20
	start := time.Now()
	m := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		m[i] = 1
	}
	runtime.KeepAlive(m)
	return time.Since(start).Seconds() * (1 << 30) / n
}

func loopbackGbit(b *testing.B) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	const total = 4 << 30
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	for sent := 0; sent < total; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	return total * 8 / 1e9 / time.Since(start).Seconds()
}

// makeMixed writes half random data, a quarter written zeros, a quarter holes.
func makeMixed(b *testing.B, path string, size int64) {
	writeRegions(b, path, size, func(off int64) string {
		switch q := off * 4 / size; q {
		case 0, 1:
			return "random"
		case 2:
			return "zeros"
		}
		return "hole"
	})
}

func makeDense(b *testing.B, path string, size int64) {
	writeRegions(b, path, size, func(int64) string { return "random" })
}

func writeRegions(b *testing.B, path string, size int64, kind func(off int64) string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	buf, zero := make([]byte, 8<<20), make([]byte, 8<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		switch kind(off) {
		case "random":
			rand.Read(buf)
			_, err = f.WriteAt(buf[:n], off)
		case "zeros":
			_, err = f.WriteAt(zero[:n], off)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// splitLayers cuts an image into layer files of size bytes (sparse where
// the image is zero), as Tart pushes a disk.
func splitLayers(b *testing.B, src, dir string, size int64) {
	os.MkdirAll(dir, 0o755)
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	st, _ := in.Stat()
	buf := make([]byte, 1<<20)
	for i, off := 0, int64(0); off < st.Size(); i, off = i+1, off+size {
		out, err := os.Create(filepath.Join(dir, fmt.Sprintf("disk.%03d", i)))
		if err != nil {
			b.Fatal(err)
		}
		n := min(size, st.Size()-off)
		out.Truncate(n)
		for o := int64(0); o < n; o += int64(len(buf)) {
			k, _ := in.ReadAt(buf[:min(int64(len(buf)), n-o)], off+o)
			if !isZero(buf[:k]) {
				out.WriteAt(buf[:k], o)
			}
		}
		out.Sync()
		out.Close()
	}
}

func isZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

func peerTool(name string) string {
	if p, err := exec.LookPath(name); err == nil && name != "registry" {
		return p
	}
	home, _ := os.UserHomeDir()
	gopath := cmp.Or(os.Getenv("GOPATH"), filepath.Join(home, "go"))
	// "registry" is too common a name to take from PATH: where go install
	// puts it, or the CI cache.
	for _, p := range []string{filepath.Join(gopath, "bin", name), filepath.Join(home, ".cache", "corral-ci", "peers", name)} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func freeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func loopbackBytes() int64 {
	data, _ := os.ReadFile("/sys/class/net/lo/statistics/tx_bytes")
	n, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return n
}

// procCPU is a process's user + system time so far.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}
