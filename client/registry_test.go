package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/testenv"
)

// TestPushPullRoundTrip: a template pushed to a real registry pulls back
// byte for byte, sparse runs of zeros included; pushing the same files as
// a new tag sends no chunk again, and a one-chunk change sends that chunk;
// a pull beside an earlier pull copies what it has instead of fetching it.
func TestPushPullRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := testenv.StartRegistry(t, t.TempDir())
	rc, err := client.NewRegistry(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	disk := make([]byte, 5*chunk.Size+1234)
	rand.Read(disk[:2*chunk.Size])          // two chunks of data
	copy(disk[4*chunk.Size:], "tail bytes") // then zeros, then a tail
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(src, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("disk.img", disk)
	write("config.json", []byte(`{"arch":"arm64"}`))

	first, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "roundtrip", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if first.SentChunks == 0 || first.ZeroChunks == 0 {
		t.Fatalf("first push: %+v, want chunks sent and zero chunks skipped", first)
	}
	again, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "roundtrip", Tag: "v2"})
	if err != nil || again.SentChunks != 0 {
		t.Fatalf("the same files as a new tag: %+v %v, want nothing sent", again, err)
	}
	disk[4*chunk.Size+5] ^= 0xff
	write("disk.img", disk)
	changed, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "roundtrip", Tag: "v3"})
	if err != nil || changed.SentChunks != 1 {
		t.Fatalf("a one-chunk change: %+v %v, want 1 chunk sent", changed, err)
	}
	id, err := rc.FindTemplate(ctx, "roundtrip")
	if err != nil || id != first.TemplateID {
		t.Fatalf("find by name: %q %v", id, err)
	}

	dest := t.TempDir()
	if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: id, Tag: "v3", Dest: dest}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dest, "disk.img"))
	if err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("pulled disk differs (%v)", err)
	}
	if cfg, _ := os.ReadFile(filepath.Join(dest, "config.json")); string(cfg) != `{"arch":"arm64"}` {
		t.Fatalf("pulled config %q", cfg)
	}
	// v1 beside the v3 pull: only the changed chunk is fetched.
	dest1 := t.TempDir()
	res, err := rc.Pull(ctx, client.PullOptions{TemplateID: id, Tag: "v1", Dest: dest1, Sources: []string{dest}})
	if err != nil {
		t.Fatal(err)
	}
	disk[4*chunk.Size+5] ^= 0xff
	if got, _ := os.ReadFile(filepath.Join(dest1, "disk.img")); !bytes.Equal(got, disk) {
		t.Fatal("pulled v1 differs")
	}
	if res.DownloadedChunk != 1 || res.LocalChunks == 0 {
		t.Fatalf("a pull beside an earlier one downloaded %d chunks (%d local), want 1: %+v", res.DownloadedChunk, res.LocalChunks, res)
	}
}
