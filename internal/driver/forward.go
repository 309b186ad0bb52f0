package driver

import (
	"io"
	"net"
	"sync"
	"time"
)

// Forwarder forwards TCP connections from a port on the node to a guest
// address only the node reaches (a VM on the host's private network).
type Forwarder struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// Forward listens on listen (host:0 picks a port) and forwards to to.
func Forward(listen, to string) (*Forwarder, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	f := &Forwarder{ln: ln, to: to, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Port is the node port guests are reached on.
func (f *Forwarder) Port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *Forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		c.Close()
		return false
	}
	if add {
		f.conns[c] = true
	} else {
		delete(f.conns, c)
	}
	return true
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if !f.track(c, true) {
				return
			}
			defer f.track(c, false)
			g, err := net.DialTimeout("tcp", f.to, 10*time.Second)
			if err != nil {
				return
			}
			defer g.Close()
			if !f.track(g, true) {
				return
			}
			defer f.track(g, false)
			done := make(chan struct{}, 2)
			go func() { io.Copy(g, c); done <- struct{}{} }()
			go func() { io.Copy(c, g); done <- struct{}{} }()
			<-done
		}()
	}
}

// Close stops listening and drops the open connections.
func (f *Forwarder) Close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}
