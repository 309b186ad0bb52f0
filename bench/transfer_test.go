package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/client"
)

// BenchmarkPushPullVsCp pushes then pulls an image (random + zero regions)
// over loopback and compares with cp of the same file on the same disk.
func BenchmarkPushPullVsCp(b *testing.B) {
	size := envGiB("CORRAL_BENCH_GIB", 4)
	dir := benchDir(b)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	makeImage(b, filepath.Join(src, "disk.img"), size)
	for range b.N {
		dropCaches()
		tCp := timeCp(b, filepath.Join(src, "disk.img"), filepath.Join(dir, "cp.img"))
		reg := startRegistry(b, filepath.Join(dir, fmt.Sprint("registry-", time.Now().UnixNano())))
		rc, _ := client.NewRegistry(reg.URL)
		dropCaches()
		start := time.Now()
		res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "bench", Tag: "v1"})
		if err != nil {
			b.Fatal(err)
		}
		tPush := time.Since(start)
		dropCaches()
		start = time.Now()
		if _, err := rc.Pull(context.Background(), client.PullOptions{TemplateID: res.TemplateID, Dest: filepath.Join(dir, "pulled")}); err != nil {
			b.Fatal(err)
		}
		tPull := time.Since(start)
		ratio := tCp.Seconds() / (tPush + tPull).Seconds()
		fmt.Printf("push+pull of %s (%s of data) vs cp on the same disk:\n", gib(size), gib(res.UniqueChunks<<20))
		fmt.Printf("  cp         %6.2fs  %s\n", tCp.Seconds(), mbps(size, tCp))
		fmt.Printf("  push       %6.2fs  %s   (%.2fx cp)\n", tPush.Seconds(), mbps(size, tPush), tCp.Seconds()/tPush.Seconds())
		fmt.Printf("  pull       %6.2fs  %s   (%.2fx cp)\n", tPull.Seconds(), mbps(size, tPull), tCp.Seconds()/tPull.Seconds())
		fmt.Printf("  push+pull  %6.2fs          %.2fx cp (target >= 0.9x)\n", (tPush + tPull).Seconds(), ratio)
		b.ReportMetric(ratio, "x_cp")
		os.RemoveAll(filepath.Join(dir, "pulled"))
		os.Remove(filepath.Join(dir, "cp.img"))
	}
}

// BenchmarkPushConcurrency measures push throughput by chunks in flight; it
// is how client.DefaultConcurrency was chosen.
func BenchmarkPushConcurrency(b *testing.B) {
	size := envGiB("CORRAL_BENCH_CONC_GIB", 1)
	dir := benchDir(b)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	makeImage(b, filepath.Join(src, "disk.img"), size)
	for range b.N {
		var base time.Duration
		fmt.Printf("push of %s by concurrency (loopback), relative to concurrency 1:\n", gib(size))
		for _, c := range []int{1, 2, 4, 8, 16} {
			reg := startRegistry(b, filepath.Join(dir, fmt.Sprint("reg-", c, "-", time.Now().UnixNano())))
			rc, _ := client.NewRegistry(reg.URL)
			start := time.Now()
			if _, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "c", Tag: "v1", Concurrency: c}); err != nil {
				b.Fatal(err)
			}
			d := time.Since(start)
			if c == 1 {
				base = d
			}
			fmt.Printf("  %2d: %6.2fs %s  %.2fx\n", c, d.Seconds(), mbps(size, d), base.Seconds()/d.Seconds())
		}
	}
}

// BenchmarkDeltaPush pushes a second tag differing in 5% of 4 KiB blocks and
// prints bytes on the wire / changed bytes, for Corral's 1 MiB chunks and for
// 512 MiB fixed chunks (the best-known peer format), by size of the extents
// the guest wrote.
func BenchmarkDeltaPush(b *testing.B) {
	size := envGiB("CORRAL_BENCH_DELTA_GIB", 2)
	dir := benchDir(b)
	for range b.N {
		fmt.Printf("second tag differing in 5%% of %s, wire bytes / changed bytes (target <= 1.1):\n", gib(size))
		fmt.Printf("  %-22s %12s %14s\n", "changes written as", "corral 1 MiB", "512 MiB chunks")
		for i, extent := range []int64{4 << 10, 64 << 10, 1 << 20, 8 << 20} {
			src := filepath.Join(dir, fmt.Sprint("v", i))
			os.MkdirAll(src, 0o755)
			img := filepath.Join(src, "disk.img")
			makeImage(b, img, size)
			reg := startRegistry(b, filepath.Join(dir, fmt.Sprint("reg", i)))
			rc, _ := client.NewRegistry(reg.URL)
			if _, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "d", Tag: "v1"}); err != nil {
				b.Fatal(err)
			}
			changes := changeBlocks(b, img, size, 0.05, extent, uint64(i+1))
			changed := touched(changes, 4096)
			res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "d", Tag: "v2"})
			if err != nil {
				b.Fatal(err)
			}
			ours := float64(res.SentBytes) / float64(changed)
			peer := float64(min(touched(changes, 512<<20), size)) / float64(changed)
			fmt.Printf("  %-22s %12.2f %14.2f\n", fmt.Sprintf("%d KiB extents", extent>>10), ours, peer)
			if extent == 8<<20 {
				b.ReportMetric(ours, "wire/changed")
			}
			os.RemoveAll(src)
		}
	}
}

// BenchmarkRegistryRSS pushes a large image to a registry process and reports
// the registry's peak resident memory (target < 256 MiB).
func BenchmarkRegistryRSS(b *testing.B) {
	size := envGiB("CORRAL_BENCH_RSS_GIB", 20)
	dir := benchDir(b)
	bin := filepath.Join(dir, "corral")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/corral-build/corral/cmd/corral").CombinedOutput(); err != nil {
		b.Fatalf("build: %v %s", err, out)
	}
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	makeImage(b, filepath.Join(src, "disk.img"), size)
	for range b.N {
		cmd := exec.Command(bin, "registry", "--listen", "127.0.0.1:18089", "--data-dir", filepath.Join(dir, "store"))
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		rc, _ := client.NewRegistry("http://127.0.0.1:18089")
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := rc.Status(context.Background()); err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("registry did not start")
			}
		}
		start := time.Now()
		res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "rss", Tag: "v1"})
		if err != nil {
			b.Fatal(err)
		}
		peak := procStatusKiB(b, cmd.Process.Pid, "VmHWM")
		cmd.Process.Kill()
		cmd.Wait()
		fmt.Printf("registry peak RSS during a %s push (%s of data, %s): %d MiB (target < 256 MiB)\n",
			gib(size), gib(res.SentBytes), time.Since(start).Round(time.Second), peak>>10)
		b.ReportMetric(float64(peak>>10), "peak_MiB")
		os.RemoveAll(filepath.Join(dir, "store"))
	}
}

func procStatusKiB(b *testing.B, pid int, field string) int64 {
	n, ok := procStatus(pid, field)
	if !ok {
		b.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	return n
}

// procStatus reads a KiB field of a live process's /proc status; false once
// it has exited.
func procStatus(pid int, field string) (int64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
