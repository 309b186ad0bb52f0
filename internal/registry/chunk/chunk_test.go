package chunk

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	random := make([]byte, Size)
	rand.Read(random)
	text := bytes.Repeat([]byte("corral "), Size/7)
	for name, data := range map[string][]byte{"random": random, "compressible": text, "short": []byte("x")} {
		enc := Encode(nil, data)
		if name == "random" && enc[0] != formatRaw {
			t.Errorf("%s: incompressible data stored compressed", name)
		}
		if name == "compressible" && (enc[0] != formatZstd || len(enc) > len(data)/10) {
			t.Errorf("%s: %d bytes encoded from %d", name, len(enc), len(data))
		}
		got, err := Decode(nil, enc, Digest(data))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: round trip failed: %v", name, err)
		}
	}
}

func TestDecodeDetectsCorruption(t *testing.T) {
	data := bytes.Repeat([]byte("abc"), 1000)
	enc := Encode(nil, data)
	enc[len(enc)/2] ^= 0xff
	if _, err := Decode(nil, enc, Digest(data)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v", err)
	}
	if _, err := Decode(nil, []byte{7, 1, 2}, Digest(data)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown format: %v", err)
	}
}

func TestIsZeroAndDigest(t *testing.T) {
	z := make([]byte, Size)
	if !IsZero(z) {
		t.Fatal("zeros")
	}
	z[Size-1] = 1
	if IsZero(z) {
		t.Fatal("last byte set")
	}
	if !ValidDigest(Digest(z)) || ValidDigest("ABC") || ValidDigest("../../etc/passwd"+string(make([]byte, 48))) {
		t.Fatal("ValidDigest")
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 4096, Size, Size + 3} {
		data := make([]byte, n)
		if !IsZero(data) {
			t.Fatalf("%d zero bytes: not zero", n)
		}
		for _, at := range []int{0, n / 2, n - 1} {
			if n == 0 {
				continue
			}
			data[at] = 1
			if IsZero(data) {
				t.Fatalf("%d bytes with byte %d set: zero", n, at)
			}
			data[at] = 0
		}
	}
}
