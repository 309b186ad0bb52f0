package etcdadmin_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/etcdadmin"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestStatusWithADeadEndpoint: `corral etcd status` with one dead endpoint
// in the list hung 640 s. Each endpoint now has its own deadline; the dead
// one is listed as unreachable and the live one answers.
func TestStatusWithADeadEndpoint(t *testing.T) {
	e := testenv.StartEtcd(t)
	// A member that accepts connections and never answers.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	var conns []net.Conn
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	dead := "http://" + hung.Addr().String()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL, dead}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sts, err := etcdadmin.GetStatus(ctx, cli)
	if err != nil {
		t.Fatalf("status with one live endpoint: %v", err)
	}
	if len(sts) != 2 || sts[0].Err != "" || sts[0].Version == "" || sts[1].Err == "" || !strings.Contains(sts[1].Endpoint, hung.Addr().String()) {
		t.Fatalf("statuses %+v", sts)
	}
	if ctx.Err() != nil {
		t.Fatal("status took the whole minute")
	}
}
