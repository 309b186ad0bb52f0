package chunk

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"

	"github.com/klauspost/compress/zstd"
)

// A chunk that differs from a base chunk in a few places travels as a
// delta: the 4 KiB blocks that differ. Disk images change in filesystem
// blocks, so a tag whose guest wrote scattered 4 KiB blocks sends about the
// bytes it changed instead of every 1 MiB chunk they touched. A delta is a
// wire form only: the registry rebuilds the chunk, checks it against its
// digest and stores it whole.
//
// The sender compares its blocks with the base's block signature (CRC-32C
// per block, which the registry computes). A block whose CRC collides is
// left out, the rebuilt chunk then fails its sha256 check, and the chunk is
// sent whole: the CRC only saves bytes, it never decides what is stored.
//
// Delta form: format byte 2 | base sha256 (32 bytes) | uint32 size |
// bitmap of changed blocks (Blocks bits) | the changed blocks in order.
const (
	BlockSize = 4096
	Blocks    = Size / BlockSize

	formatDelta = 2
	deltaHeader = 1 + 32 + 4 + Blocks/8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Signature returns the CRC-32C of each block of raw.
func Signature(raw []byte) []uint32 {
	sig := make([]uint32, 0, (len(raw)+BlockSize-1)/BlockSize)
	for off := 0; off < len(raw); off += BlockSize {
		sig = append(sig, crc32.Checksum(raw[off:min(off+BlockSize, len(raw))], castagnoli))
	}
	return sig
}

// EncodeDelta writes data as a delta against the base chunk whose block
// signature is sig, into dst. ok is false when a delta would not save at
// least half of the bytes (then send the chunk whole).
func EncodeDelta(dst []byte, base string, sig []uint32, data []byte) (out []byte, ok bool) {
	b, err := hex.DecodeString(base)
	if err != nil || len(b) != 32 || len(data) > Size {
		return dst[:0], false
	}
	out = append(dst[:0], formatDelta)
	out = append(out, b...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(data)))
	bitmap := len(out)
	out = append(out, make([]byte, Blocks/8)...)
	for i, off := 0, 0; off < len(data); i, off = i+1, off+BlockSize {
		block := data[off:min(off+BlockSize, len(data))]
		if i < len(sig) && crc32.Checksum(block, castagnoli) == sig[i] {
			continue
		}
		if len(out)+len(block) > len(data)/2 {
			return out[:0], false
		}
		out[bitmap+i/8] |= 1 << (i % 8)
		out = append(out, block...)
	}
	return out, true
}

// IsDelta reports whether an encoded chunk is a delta, and against which base.
func IsDelta(encoded []byte) (base string, ok bool) {
	if len(encoded) < deltaHeader || encoded[0] != formatDelta {
		return "", false
	}
	return hex.EncodeToString(encoded[1:33]), true
}

// ApplyDelta rebuilds a chunk from a delta and its base's raw bytes, into
// dst (the caller checks the result's digest).
func ApplyDelta(dst, delta, base []byte) ([]byte, error) {
	if _, ok := IsDelta(delta); !ok {
		return nil, fmt.Errorf("%w: not a delta", ErrCorrupt)
	}
	size := int(binary.LittleEndian.Uint32(delta[33:]))
	if size > Size || size == 0 {
		return nil, fmt.Errorf("%w: delta of %d bytes", ErrCorrupt, size)
	}
	bitmap, blocks := delta[37:deltaHeader], delta[deltaHeader:]
	out := append(dst[:0], make([]byte, size)...)
	copy(out, base)
	for i, off := 0, 0; off < size; i, off = i+1, off+BlockSize {
		n := min(BlockSize, size-off)
		if bitmap[i/8]&(1<<(i%8)) == 0 {
			if off+n > len(base) {
				return nil, fmt.Errorf("%w: delta keeps block %d, past the base's %d bytes", ErrCorrupt, i, len(base))
			}
			continue
		}
		if len(blocks) < n {
			return nil, fmt.Errorf("%w: delta ends inside block %d", ErrCorrupt, i)
		}
		copy(out[off:off+n], blocks[:n])
		blocks = blocks[n:]
	}
	if len(blocks) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the delta's last block", ErrCorrupt, len(blocks))
	}
	return out, nil
}

// DecodeStored returns the raw bytes of a chunk the registry stored and
// verified when it arrived (no second hash).
func DecodeStored(dst, encoded []byte) ([]byte, error) {
	if len(encoded) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrCorrupt)
	}
	switch encoded[0] {
	case formatRaw:
		return encoded[1:], nil
	case formatZstd:
		dec := decoders.Get().(*zstd.Decoder)
		defer decoders.Put(dec)
		raw, err := dec.DecodeAll(encoded[1:], dst[:0])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return raw, nil
	}
	return nil, fmt.Errorf("%w: unknown format %d", ErrCorrupt, encoded[0])
}
