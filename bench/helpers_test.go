package bench

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
)

func envGiB(name string, def float64) int64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		def = v
	}
	return int64(def * (1 << 30))
}

func benchDir(b *testing.B) string {
	dir, err := os.MkdirTemp(os.Getenv("CORRAL_BENCH_DIR"), "corral-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// makeImage writes a disk image of size bytes: alternating 64 MiB regions of
// random data and zeros (holes), like a freshly installed guest disk.
func makeImage(b *testing.B, path string, size int64) {
	writeRegions(b, path, size, func(off int64) string {
		if off/(64<<20)%2 == 0 {
			return "random"
		}
		return "hole"
	})
}

// changeBlocks rewrites frac of the image's 4 KiB blocks with random data, in
// extents of extent bytes at random block-aligned offsets, and returns the
// offsets and lengths written.
func changeBlocks(b *testing.B, path string, size int64, frac float64, extent int64, seed uint64) [][2]int64 {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := mrand.New(mrand.NewPCG(seed, seed))
	target := int64(float64(size) * frac)
	buf := make([]byte, extent)
	var written int64
	var out [][2]int64
	for written < target {
		off := rng.Int64N((size-extent)/4096) * 4096
		rand.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		out = append(out, [2]int64{off, extent})
		written += extent
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return out
}

// touched counts the bytes of fixed chunks of chunkSize that the changes hit:
// what a format with that chunk size must send.
func touched(changes [][2]int64, chunkSize int64) int64 {
	hit := map[int64]bool{}
	for _, c := range changes {
		for i := c[0] / chunkSize; i <= (c[0]+c[1]-1)/chunkSize; i++ {
			hit[i] = true
		}
	}
	return int64(len(hit)) * chunkSize
}

func startRegistry(b *testing.B, dir string) *regdaemon.Daemon {
	r, err := regdaemon.Start(regdaemon.Config{ListenAddr: "127.0.0.1:0", DataDir: dir,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Close)
	return r
}

// timeCp copies src to dst with cp (sparse-aware, as GNU cp is by default)
// and fsyncs the copy, as a pull does.
func timeCp(b *testing.B, src, dst string) time.Duration {
	start := time.Now()
	if out, err := exec.Command("cp", src, dst).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, out)
	}
	f, err := os.Open(dst)
	if err != nil {
		b.Fatal(err)
	}
	f.Sync()
	f.Close()
	return time.Since(start)
}

func gib(n int64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }

func mbps(n int64, d time.Duration) string {
	return fmt.Sprintf("%.0f MB/s", float64(n)/1e6/math.Max(d.Seconds(), 1e-9))
}

func dropCaches() {
	// Best effort: make cp and push read from disk alike when we may.
	exec.Command("sync").Run()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o644)
}
