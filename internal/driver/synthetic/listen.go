package synthetic

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Ports for SSH endpoints come from a cursor over the ephemeral range, each
// bound by number. With thousands of instances in one process (the fleet
// simulations this driver exists for), bind(0) stops being cheap: Linux
// looks for a free port among those of one parity first, and once about
// half the range is bound it walks every bound port of that parity on each
// call (1.6 ms a listen at 15,000 listeners here, more than the rest of an
// instance's start). A cursor finds a free port in a step or two; bind(0)
// stays the fallback. Like bind(0), it takes the odd ports first: Linux's
// connect() looks for its local ports among the even ones, and walks past
// every listener it finds there.
var (
	portCursor     atomic.Uint32
	portRangeOnce  sync.Once
	portLo, portHi uint32
)

// portAt is the cursor's i-th port: the range's odd ports, then its even
// ones.
func portAt(i uint32) uint32 {
	odd := portLo | 1
	nOdd := (portHi-odd)/2 + 1
	n := portHi - portLo + 1
	if i %= n; i < nOdd {
		return odd + 2*i
	}
	return portLo + portLo&1 + 2*(i-nOdd)
}

// listen opens a TCP listener on host at a free port.
func listen(host string) (net.Listener, error) {
	portRangeOnce.Do(func() {
		portLo, portHi = ephemeralRange()
		portCursor.Store(rand.Uint32N(portHi - portLo + 1))
	})
	for range 64 {
		port := portAt(portCursor.Add(1))
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return net.Listen("tcp", net.JoinHostPort(host, "0"))
}

// ephemeralRange is the range the system hands out for bind(0): Linux's
// ip_local_port_range, else the IANA dynamic range (macOS's default).
func ephemeralRange() (lo, hi uint32) {
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			l, err1 := strconv.ParseUint(f[0], 10, 16)
			h, err2 := strconv.ParseUint(f[1], 10, 16)
			if err1 == nil && err2 == nil && l > 0 && l < h {
				return uint32(l), uint32(h)
			}
		}
	}
	return 49152, 65535
}
