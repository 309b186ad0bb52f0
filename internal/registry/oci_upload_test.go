package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/corral-build/corral/internal/registry"
)

// TestOCIConcurrentPatchesLoseNothing: PATCHes racing on one upload session
// either land whole, one after the other, or are refused with 416; the
// upload then holds exactly the accepted bytes. (Four concurrent PATCHes
// used to each get 202 while only one's bytes were kept.)
func TestOCIConcurrentPatchesLoseNothing(t *testing.T) {
	for round := range 5 {
		r := newRegistry(t)
		ctx := context.Background()
		id, err := r.OCIStartUpload(ctx, "vm/race")
		if err != nil {
			t.Fatal(err)
		}
		type landed struct {
			end  int64
			data []byte
		}
		var (
			mu       sync.Mutex
			accepted []landed
			wg       sync.WaitGroup
		)
		for i := range 4 {
			data := make([]byte, 1<<20+i*4099) // not chunk-aligned: tails race too
			rand.Read(data)
			wg.Add(1)
			go func() {
				defer wg.Done()
				end, err := r.OCIAppend(ctx, "vm/race", id, -1, bytes.NewReader(data))
				var oe *registry.OCIError
				switch {
				case err == nil:
					mu.Lock()
					accepted = append(accepted, landed{end, data})
					mu.Unlock()
				case errors.As(err, &oe) && oe.Status == http.StatusRequestedRangeNotSatisfiable:
				default:
					t.Errorf("round %d: PATCH %d: %v (want success or 416)", round, i, err)
				}
			}()
		}
		wg.Wait()
		if len(accepted) == 0 {
			t.Fatalf("round %d: no PATCH accepted", round)
		}
		slices.SortFunc(accepted, func(a, b landed) int { return int(a.end - b.end) })
		var want []byte
		for _, a := range accepted {
			want = append(want, a.data...)
			if a.end != int64(len(want)) {
				t.Fatalf("round %d: an accepted PATCH ended at %d, want %d: bytes were lost", round, a.end, len(want))
			}
		}
		size, err := r.OCIUploadSize(ctx, "vm/race", id)
		if err != nil || size != int64(len(want)) {
			t.Fatalf("round %d: upload holds %d bytes (%v), accepted %d", round, size, err, len(want))
		}
		sum := sha256.Sum256(want)
		digest := "sha256:" + hex.EncodeToString(sum[:])
		if err := r.OCIFinishUpload(ctx, "vm/race", id, digest, nil); err != nil {
			t.Fatalf("round %d: finish with the accepted bytes' digest: %v", round, err)
		}
		rc, err := r.OCIOpenBlob(ctx, "vm/race", digest, 0, int64(len(want)))
		if err != nil {
			t.Fatalf("round %d: open the finished blob: %v", round, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("round %d: the blob reads back %d bytes (%v), want the %d accepted", round, len(got), err, len(want))
		}
	}
}

// TestOCIPatchAtWrongOffset: a PATCH whose Content-Range does not start
// where the upload ends gets 416 and changes nothing.
func TestOCIPatchAtWrongOffset(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	id, _ := r.OCIStartUpload(ctx, "vm/off")
	if _, err := r.OCIAppend(ctx, "vm/off", id, 0, bytes.NewReader(make([]byte, 100))); err != nil {
		t.Fatal(err)
	}
	_, err := r.OCIAppend(ctx, "vm/off", id, 50, bytes.NewReader(make([]byte, 10)))
	var oe *registry.OCIError
	if !errors.As(err, &oe) || oe.Status != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("PATCH at 50 of 100: %v, want 416", err)
	}
	if size, _ := r.OCIUploadSize(ctx, "vm/off", id); size != 100 {
		t.Fatalf("size after a refused PATCH: %d", size)
	}
}
