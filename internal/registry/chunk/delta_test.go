package chunk

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func TestDeltaRoundTrip(t *testing.T) {
	base := make([]byte, Size)
	rand.Read(base)
	for name, c := range map[string]struct {
		blocks []int // blocks to change
		size   int   // size of the new chunk
		ok     bool
	}{
		"scattered":   {[]int{0, 7, 100, 255}, Size, true},
		"short chunk": {[]int{3}, 10*BlockSize + 17, true},
		"most blocks": {seq(200), Size, false},
		"unchanged":   {nil, Size, true},
	} {
		data := bytes.Clone(base[:c.size])
		for _, b := range c.blocks {
			rand.Read(data[b*BlockSize : min((b+1)*BlockSize, len(data))])
		}
		delta, ok := EncodeDelta(nil, Digest(base), Signature(base), data)
		if ok != c.ok {
			t.Fatalf("%s: delta ok=%v, want %v", name, ok, c.ok)
		}
		if !ok {
			continue
		}
		if want := deltaHeader + len(c.blocks)*BlockSize + c.size%BlockSize; len(delta) > want { // a partial last block differs from the base's whole one
			t.Errorf("%s: delta of %d bytes, want at most %d", name, len(delta), want)
		}
		if b, isDelta := IsDelta(delta); !isDelta || b != Digest(base) {
			t.Fatalf("%s: IsDelta = %q %v", name, b, isDelta)
		}
		got, err := ApplyDelta(nil, delta, base)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: rebuilt chunk differs (err %v)", name, err)
		}
	}
}

func TestDeltaRejectsMalformed(t *testing.T) {
	base := make([]byte, Size)
	rand.Read(base)
	data := bytes.Clone(base)
	rand.Read(data[:BlockSize])
	delta, _ := EncodeDelta(nil, Digest(base), Signature(base), data)
	for name, d := range map[string][]byte{
		"truncated":   delta[:len(delta)-1],
		"extra bytes": append(bytes.Clone(delta), 1),
		"not a delta": append([]byte{formatRaw}, data...),
	} {
		if _, err := ApplyDelta(nil, d, base); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	// A base shorter than the blocks the delta keeps.
	if _, err := ApplyDelta(nil, delta, base[:Size/2]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("short base: %v, want ErrCorrupt", err)
	}
	// Stored chunks never take the delta form.
	if _, err := Decode(nil, delta, Digest(data)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Decode of a delta: %v, want ErrCorrupt", err)
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
