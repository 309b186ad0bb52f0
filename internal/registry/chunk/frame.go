package chunk

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Many chunks travel in one request as frames: the raw 32-byte sha256, the
// encoded length (uint32, little endian), then the encoded chunk. A push
// sends a pack of frames; a pull receives a stream of them.
const FrameHeader = 32 + 4

// AppendFrameHeader appends the header of a frame of n encoded bytes.
func AppendFrameHeader(dst []byte, digest string, n int) ([]byte, error) {
	raw, err := hex.DecodeString(digest)
	if err != nil || len(raw) != 32 {
		return dst, fmt.Errorf("frame: %q is not a sha256 hex digest", digest)
	}
	dst = append(dst, raw...)
	return binary.LittleEndian.AppendUint32(dst, uint32(n)), nil
}

// ErrFrame means a frame stream is malformed.
var ErrFrame = errors.New("malformed chunk frame")

// ReadFrame reads the next frame into buf (grown as needed, up to
// MaxEncoded). It returns io.EOF at a clean end of the stream.
func ReadFrame(r io.Reader, buf []byte) (digest string, encoded []byte, err error) {
	var h [FrameHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return "", nil, fmt.Errorf("%w: stream ends inside a header", ErrFrame)
		}
		return "", nil, err
	}
	n := binary.LittleEndian.Uint32(h[32:])
	if n == 0 || n > MaxEncoded {
		return "", nil, fmt.Errorf("%w: %d encoded bytes (want 1 to %d)", ErrFrame, n, MaxEncoded)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n, MaxEncoded)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return "", nil, fmt.Errorf("%w: stream ends inside chunk %x", ErrFrame, h[:6])
		}
		return "", nil, err
	}
	return hex.EncodeToString(h[:32]), buf, nil
}
