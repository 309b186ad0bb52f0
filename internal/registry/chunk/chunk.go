// Package chunk is the registry's content unit, shared by server and client.
//
// Files are cut into fixed 1 MiB chunks aligned to the file's start. Disk
// images change in filesystem-block-aligned extents, so aligned chunks of a
// new tag match the old tag's chunks wherever the guest did not write; unlike
// content-defined chunking this needs no rolling hash and lets a pull write
// every chunk at a known offset (sparse files, parallel WriteAt). 1 MiB keeps
// the metadata small (a 100 GiB disk is 102,400 digests, ~7 MB of manifest)
// and a request short, while 512x finer than the 512 MiB layers peers use.
//
// A chunk is named by the sha256 of its raw bytes. All-zero chunks are never
// stored or sent: a manifest lists them as "". On the wire and on disk a chunk
// is one format byte then the data: 0 = raw, 1 = zstd.
package chunk

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Size is the chunk size in bytes.
const Size = 1 << 20

// MaxEncoded bounds an encoded chunk (format byte + worst-case zstd expansion).
const MaxEncoded = Size + Size/64 + 1024

const (
	formatRaw  = 0
	formatZstd = 1
)

// Digest returns the hex sha256 naming data.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// ValidDigest reports whether d looks like a chunk digest.
func ValidDigest(d string) bool {
	if len(d) != 64 {
		return false
	}
	_, err := hex.DecodeString(d)
	return err == nil && d == string(bytes.ToLower([]byte(d)))
}

// zeros is compared against: bytes.Equal is the runtime's vectorized
// memequal, many times faster than a byte loop over a zero chunk.
var zeros [Size]byte

// IsZero reports whether data is all zero bytes.
func IsZero(data []byte) bool {
	for len(data) > 0 {
		n := min(len(data), Size)
		if !bytes.Equal(data[:n], zeros[:n]) {
			return false
		}
		data = data[n:]
	}
	return true
}

var (
	encoders = sync.Pool{New: func() any {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		return e
	}}
	decoders = sync.Pool{New: func() any {
		d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(Size*2))
		return d
	}}
)

// probeSize is the sample compressed first to decide whether a chunk pays.
const probeSize = 64 << 10

// Encode returns the wire/storage form of data, compressed only when that
// saves at least an eighth (incompressible data is not worth the CPU on
// pull).
func Encode(dst, data []byte) []byte {
	if out, ok := Compress(dst, data); ok {
		return out
	}
	return append(append(dst[:0], formatRaw), data...)
}

// Compress returns the compressed form of data (format byte included) when
// it saves at least an eighth; otherwise ok is false and the raw form (a 0
// byte, then data) is what to send. A 64 KiB probe decides first, so
// incompressible chunks, most of a disk image's bytes, cost 1/16 of a full
// compression attempt.
func Compress(dst, data []byte) (out []byte, ok bool) {
	enc := encoders.Get().(*zstd.Encoder)
	defer encoders.Put(enc)
	if len(data) > 2*probeSize {
		probe := enc.EncodeAll(data[:probeSize], dst[:0])
		if len(probe) > probeSize-probeSize/8 {
			return probe[:0], false
		}
		dst = probe
	}
	out = enc.EncodeAll(data, append(dst[:0], formatZstd))
	if len(out)-1 <= len(data)-len(data)/8 {
		return out, true
	}
	return out[:0], false
}

// ErrCorrupt means a chunk's bytes do not match its digest.
var ErrCorrupt = errors.New("chunk corrupt")

// Decode returns the raw bytes of an encoded chunk, appended to dst[:0], and
// checks them against digest.
func Decode(dst, encoded []byte, digest string) ([]byte, error) {
	if len(encoded) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrCorrupt)
	}
	var raw []byte
	switch encoded[0] {
	case formatRaw:
		raw = append(dst[:0], encoded[1:]...)
	case formatZstd:
		dec := decoders.Get().(*zstd.Decoder)
		var err error
		raw, err = dec.DecodeAll(encoded[1:], dst[:0])
		decoders.Put(dec)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	default:
		return nil, fmt.Errorf("%w: unknown format %d", ErrCorrupt, encoded[0])
	}
	if len(raw) > Size {
		return nil, fmt.Errorf("%w: %d bytes, more than the chunk size", ErrCorrupt, len(raw))
	}
	if got := Digest(raw); got != digest {
		return nil, fmt.Errorf("%w: content hashes to %s, not %s", ErrCorrupt, got[:12], digest[:min(12, len(digest))])
	}
	return raw, nil
}

// Verify checks an encoded chunk against digest and returns its raw bytes:
// a raw chunk is hashed where it lies (no copy), a compressed one is
// decoded into scratch.
func Verify(encoded []byte, digest string, scratch []byte) ([]byte, error) {
	if len(encoded) > 0 && encoded[0] == formatRaw {
		raw := encoded[1:]
		if len(raw) > Size {
			return nil, fmt.Errorf("%w: %d bytes, more than the chunk size", ErrCorrupt, len(raw))
		}
		if got := Digest(raw); got != digest {
			return nil, fmt.Errorf("%w: content hashes to %s, not %s", ErrCorrupt, got[:12], digest[:min(12, len(digest))])
		}
		return raw, nil
	}
	return Decode(scratch, encoded, digest)
}

// Count is the number of chunks of a file of size bytes.
func Count(size int64) int64 { return (size + Size - 1) / Size }
