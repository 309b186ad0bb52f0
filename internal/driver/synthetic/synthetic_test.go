package synthetic

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/driver"
)

func TestLifecycle(t *testing.T) {
	d := New(10 * time.Millisecond)
	m, err := d.Start(t.Context(), driver.Spec{InstanceID: "0123456789", HostIP: "127.0.0.1", VCPU: 4, VRAMMB: 8192})
	if err != nil {
		t.Fatal(err)
	}
	info := m.Info()
	if info.Status != "running" || info.CPUCores != 4 || info.RAM != "8G" || info.IP == "" {
		t.Fatalf("info %+v", info)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(info.PortForwarding[0].HostPort))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	res, err := m.RunScript(t.Context(), []byte("echo $CORRAL_INSTANCE_ID; exit 2"))
	if err != nil || res.ReturnCode != 2 || res.Stdout != "0123456789\n" {
		t.Fatalf("script %+v %v", res, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	res, err = m.RunScript(ctx, []byte("sleep 10"))
	if err != nil || !res.DidTimeout {
		t.Fatalf("timeout %+v %v", res, err)
	}

	m.(*vm).Crash(errTest)
	select {
	case <-m.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed after crash")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("SSH endpoint still open after crash")
	}
	if err := m.Destroy(t.Context()); err != nil || m.Info().Status != "stopped" {
		t.Fatalf("destroy: %v %+v", err, m.Info())
	}
}

type testErr struct{}

func (testErr) Error() string { return "test crash" }

var errTest = testErr{}
