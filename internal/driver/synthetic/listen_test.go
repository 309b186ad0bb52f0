package synthetic

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// BenchmarkListenAmongMany: an SSH endpoint's listen, and a connect out,
// once a fleet simulation holds 15,000 endpoints in one process, against
// bind(0) holding as many (the baseline, in the same run):
// go test -bench ListenAmongMany -benchtime 1x -run '^$' ./internal/driver/synthetic/
func BenchmarkListenAmongMany(b *testing.B) {
	const held, n = 15000, 500
	bind0 := func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
	cursor := func() (net.Listener, error) { return listen("127.0.0.1") }
	// among holds as many listeners as open makes, then times n more
	// listens and n connects to one of them.
	among := func(open func() (net.Listener, error)) (listenEach, dialEach time.Duration) {
		var lns []net.Listener
		defer func() {
			for _, ln := range lns {
				ln.Close()
			}
		}()
		for range held {
			ln, err := open()
			if err != nil {
				b.Skipf("holding %d listeners: %v (raise the open-file limit)", held, err)
			}
			lns = append(lns, ln)
		}
		start := time.Now()
		for range n {
			ln, err := open()
			if err != nil {
				b.Fatal(err)
			}
			ln.Close()
		}
		listenEach = time.Since(start) / n
		go func() {
			for {
				c, err := lns[0].Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		start = time.Now()
		for range n {
			c, err := net.Dial("tcp", lns[0].Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
		return listenEach, time.Since(start) / n
	}
	for range b.N {
		bl, bd := among(bind0)
		cl, cd := among(cursor)
		fmt.Printf("with %d listeners held: listen: bind(0) %s, port cursor %s (%.1fx faster); connect: %s among bind(0)'s, %s among the cursor's (%.2fx)\n",
			held, bl, cl, float64(bl)/float64(cl), bd, cd, float64(bd)/float64(cd))
	}
}

// TestPortsOddFirst: the cursor covers the range once, odd ports first.
func TestPortsOddFirst(t *testing.T) {
	defer func(lo, hi uint32) { portLo, portHi = lo, hi }(portLo, portHi)
	for _, r := range [][2]uint32{{32768, 60999}, {32769, 61000}, {10, 15}} {
		portLo, portHi = r[0], r[1]
		seen := map[uint32]bool{}
		n := portHi - portLo + 1
		for i := range n {
			p := portAt(i)
			if p < portLo || p > portHi || seen[p] {
				t.Fatalf("range %v: port %d at %d: outside or twice", r, p, i)
			}
			if wantOdd := i < (portHi-(portLo|1))/2+1; (p%2 == 1) != wantOdd {
				t.Fatalf("range %v: port %d at %d, want odd %v", r, p, i, wantOdd)
			}
			seen[p] = true
		}
		if portAt(n) != portAt(0) {
			t.Fatalf("range %v: the cursor does not wrap", r)
		}
	}
}

// TestListenTakesFreePorts: endpoints get distinct ports and skip one that
// is taken.
func TestListenTakesFreePorts(t *testing.T) {
	a, err := listen("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// The port the cursor tries next, taken by someone else.
	next := int(portAt(portCursor.Load() + 1))
	other, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", next))
	if err != nil {
		t.Skipf("port %d busy: %v", next, err)
	}
	defer other.Close()
	b, err := listen("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pa, pb := a.Addr().(*net.TCPAddr).Port, b.Addr().(*net.TCPAddr).Port
	if pb == next || pb == pa {
		t.Fatalf("listen took port %d (first %d, taken %d)", pb, pa, next)
	}
}
