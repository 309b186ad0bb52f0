package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/corral-build/corral/client"
)

// BenchmarkPushInProcess is a small push for profiling (-cpuprofile).
func BenchmarkPushInProcess(b *testing.B) {
	dir := benchDir(b)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	makeImage(b, filepath.Join(src, "disk.img"), envGiB("CORRAL_BENCH_PROFILE_GIB", 0.5))
	b.ResetTimer()
	for i := range b.N {
		reg := startRegistry(b, filepath.Join(dir, "reg", string(rune('a'+i))))
		rc, _ := client.NewRegistry(reg.URL)
		if _, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "p", Tag: "v1", Concurrency: 4}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPullInProcess pulls a dense image for profiling (-cpuprofile).
func BenchmarkPullInProcess(b *testing.B) {
	dir := benchDir(b)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	makeDense(b, filepath.Join(src, "disk.img"), envGiB("CORRAL_BENCH_PROFILE_GIB", 0.5))
	reg := startRegistry(b, filepath.Join(dir, "reg"))
	rc, _ := client.NewRegistry(reg.URL)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "p", Tag: "v1"})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		dest := filepath.Join(dir, "pull", string(rune('a'+i)))
		if _, err := rc.Pull(context.Background(), client.PullOptions{TemplateID: res.TemplateID, Dest: dest}); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(dest)
	}
}
