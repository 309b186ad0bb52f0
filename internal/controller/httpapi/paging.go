package httpapi

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strconv"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// Paging bounds of list endpoints (GET /api/v1/vm, /api/v1/node).
const (
	// MaxPageSize is the largest ?limit.
	MaxPageSize = 10000
	// MaxUnpagedItems bounds a list asked without ?limit (old clients get
	// the whole list up to this; the answer says when it was cut).
	MaxUnpagedItems = 50000
)

// page is a list answer with its paging facts (headers X-Total-Count and,
// when cut, X-Corral-Truncated).
type page struct {
	items        any
	count, total int
	truncated    bool
	// encode writes the items as a JSON array, one at a time: a list of
	// 10,000 instances is streamed, never built whole in memory.
	encode func(w io.Writer) error
}

// paginate applies ?limit and ?offset to items.
func paginate[T any](r *http.Request, items []T) (page, error) {
	q := r.URL.Query()
	limit, offset := MaxUnpagedItems, 0
	parse := func(name string, lo, hi int, into *int) error {
		v := q.Get(name)
		if v == "" {
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return &apiv1.FieldError{Field: name, Reason: "want an integer from " + strconv.Itoa(lo) + " to " + strconv.Itoa(hi) + ", got " + strconv.Quote(v)}
		}
		*into = n
		return nil
	}
	if err := parse("limit", 1, MaxPageSize, &limit); err != nil {
		return page{}, err
	}
	if err := parse("offset", 0, 1<<31-1, &offset); err != nil {
		return page{}, err
	}
	total := len(items)
	from := min(offset, total)
	to := min(from+limit, total)
	out := items[from:to]
	return page{items: out, count: len(out), total: total,
		truncated: q.Get("limit") == "" && total > MaxUnpagedItems,
		encode: func(w io.Writer) error {
			bw := bufio.NewWriterSize(w, 64<<10)
			bw.WriteByte('[')
			enc := json.NewEncoder(bw)
			for i := range out {
				if i > 0 {
					bw.WriteByte(',')
				}
				if raw, ok := any(out[i]).(json.RawMessage); ok {
					bw.Write(raw) // encoded already (and valid: json.Marshal made it)
					continue
				}
				if err := enc.Encode(out[i]); err != nil {
					return err
				}
			}
			bw.WriteByte(']')
			return bw.Flush()
		}}, nil
}
