package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	"github.com/corral-build/corral/internal/registry/chunk"
)

// frames encodes chunks as a pack upload body.
func frames(t *testing.T, chunks map[string][]byte) *bytes.Buffer {
	t.Helper()
	var body bytes.Buffer
	for d, enc := range chunks {
		hdr, err := chunk.AppendFrameHeader(nil, d, len(enc))
		if err != nil {
			t.Fatal(err)
		}
		body.Write(hdr)
		body.Write(enc)
	}
	return &body
}

// TestPutChunksDeltas: a delta is rebuilt on its stored base, checked
// against its digest and stored whole; one whose base is gone or whose
// rebuild does not match is named for resending, and the rest still land.
func TestPutChunksDeltas(t *testing.T) {
	ctx := context.Background()
	r := newRegistry(t)
	base := make([]byte, chunk.Size)
	rand.Read(base)
	s, err := r.PutChunks(ctx, frames(t, map[string][]byte{chunk.Digest(base): chunk.Encode(nil, base)}))
	if err != nil || s.Stored != 1 {
		t.Fatalf("base: %+v %v", s, err)
	}
	changed := bytes.Clone(base)
	rand.Read(changed[5*chunk.BlockSize : 6*chunk.BlockSize])
	good, ok := chunk.EncodeDelta(nil, chunk.Digest(base), chunk.Signature(base), changed)
	if !ok {
		t.Fatal("no delta")
	}
	// A "collision": the delta leaves out a block that did change.
	lying := bytes.Clone(changed)
	rand.Read(lying[9*chunk.BlockSize : 10*chunk.BlockSize])
	orphanBase := make([]byte, chunk.Size)
	rand.Read(orphanBase)
	orphanData := bytes.Clone(orphanBase)
	rand.Read(orphanData[:chunk.BlockSize])
	orphan, _ := chunk.EncodeDelta(nil, chunk.Digest(orphanBase), chunk.Signature(orphanBase), orphanData)
	s, err = r.PutChunks(ctx, frames(t, map[string][]byte{
		chunk.Digest(changed):    good,
		chunk.Digest(lying):      good,   // rebuilds to changed, not lying
		chunk.Digest(orphanData): orphan, // base not stored
	}))
	if err != nil || s.Stored != 1 || len(s.Resend) != 2 {
		t.Fatalf("deltas: %+v %v, want 1 stored and 2 to resend", s, err)
	}
	enc, err := r.ReadChunk(ctx, chunk.Digest(changed), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := chunk.Decode(nil, enc, chunk.Digest(changed)); err != nil || !bytes.Equal(got, changed) {
		t.Fatalf("stored chunk is not the rebuilt one: %v", err)
	}
	if _, isDelta := chunk.IsDelta(enc); isDelta {
		t.Fatal("a delta was stored as such")
	}
}
