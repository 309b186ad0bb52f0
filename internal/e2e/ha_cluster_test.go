package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/etcdembed"
	"github.com/corral-build/corral/internal/node"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// failover is what a load balancer does for the registries: send each
// request to the first backend that answers.
func failover(t *testing.T, backends ...string) *httptest.Server {
	var proxies []*httputil.ReverseProxy
	for _, b := range backends {
		u, _ := url.Parse(b)
		p := httputil.NewSingleHostReverseProxy(u)
		p.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) { w.WriteHeader(599) }
		proxies = append(proxies, p)
	}
	var next atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		start := int(next.Add(1))
		for i := range proxies {
			rec := httptest.NewRecorder()
			req := r.Clone(r.Context())
			req.Body = io.NopCloser(strings.NewReader(string(body)))
			proxies[(start+i)%len(proxies)].ServeHTTP(rec, req)
			if rec.Code == 599 {
				continue // backend down: try the next one
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		w.WriteHeader(http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestHAKillOneOfEach: a 3-member etcd cluster, 2 controllers and 2
// registries on one shared directory. While instances are started and
// templates pushed, one etcd member, one controller and one registry die.
// Every request succeeds and no instance is placed twice.
func TestHAKillOneOfEach(t *testing.T) {
	dir := t.TempDir()
	var peers, clients []string
	for range 3 {
		peers, clients = append(peers, freeURL(t)), append(clients, freeURL(t))
	}
	initial := fmt.Sprintf("m0=%s,m1=%s,m2=%s", peers[0], peers[1], peers[2])
	members := make([]*etcdembed.Server, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() { // members must start together to elect a leader
			defer wg.Done()
			m, err := etcdembed.Start(etcdembed.Config{Name: fmt.Sprint("m", i), DataDir: filepath.Join(dir, fmt.Sprint("etcd", i)),
				ClientURL: clients[i], PeerURL: peers[i], InitialCluster: initial, Quiet: true})
			if err != nil {
				t.Error(err)
				return
			}
			members[i] = m
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, m := range members {
		t.Cleanup(m.Close)
	}

	shared := filepath.Join(dir, "registry-volume")
	regs := []*regdaemon.Daemon{testenv.StartRegistry(t, shared), testenv.StartRegistry(t, shared)}
	lb := failover(t, regs[0].URL, regs[1].URL)

	var ctls []*daemon.Daemon
	for range 2 {
		d, err := daemon.Start(context.Background(), daemon.Config{ListenAddr: "127.0.0.1:0", EtcdEndpoints: clients,
			RegistryURL: lb.URL, JoinToken: "t", NodeLeaseTTL: 5 * time.Second, SchedulerTTL: 2 * time.Second,
			EtcdLogLevel: "off", Log: testenv.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		ctls = append(ctls, d)
	}
	urls := []string{ctls[0].URL, ctls[1].URL}
	for i := range 2 {
		agent, err := node.New(node.Config{ControllerURLs: urls, Token: "t", Name: fmt.Sprint("n", i), IP: "127.0.0.1",
			Capacity: 1000, DataDir: filepath.Join(dir, fmt.Sprint("node", i)), Driver: synthetic.New(10 * time.Millisecond),
			Log: testenv.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { agent.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}

	rc, _ := client.NewRegistry(lb.URL)
	seed, err := rc.Push(context.Background(), client.PushOptions{Source: newVMDir(t, 0, 1), Template: "base", Tag: "v1",
		Arch: runtimeArch()})
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := client.New(urls, "")
	mon, _ := clientv3.New(clientv3.Config{Endpoints: clients})
	defer mon.Close()
	startRev := mustRev(t, mon)

	// The stream: starts through both controllers and pushes through the LB.
	var ids []string
	var mu sync.Mutex
	var failures []error
	pushes, unavailable := 0, 0
	stop := make(chan struct{})
	var stream sync.WaitGroup
	for w := range 3 {
		stream.Add(1)
		go func() {
			defer stream.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				got, err := startWithRetry(ctx, cl, seed.TemplateID)
				cancel()
				mu.Lock()
				var fe *client.FailError
				switch {
				case errors.As(err, &fe) && fe.HTTPStatus == http.StatusServiceUnavailable:
					// etcd choosing a leader after its member died: an honest
					// "try again" (it was a 500, and failed this test once).
					unavailable++
				case err != nil:
					failures = append(failures, fmt.Errorf("start %d/%d: %w", w, i, err))
				}
				ids = append(ids, got...)
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	stream.Add(1)
	go func() {
		defer stream.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			src := newVMDir(t, int64(i%60), 2)
			if _, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "stream", Tag: fmt.Sprint("t", i)}); err != nil {
				mu.Lock()
				failures = append(failures, fmt.Errorf("push %d: %w", i, err))
				mu.Unlock()
			} else {
				mu.Lock()
				pushes++
				mu.Unlock()
			}
		}
	}()
	// progress waits until the stream has started n more instances and made
	// one more push: each fault below lands on a cloud under load, and the
	// cloud keeps serving after it.
	progress := func(what string, n int) {
		t.Helper()
		mu.Lock()
		wantIDs, wantPushes := len(ids)+n, pushes+1
		mu.Unlock()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			done := len(ids) >= wantIDs && pushes >= wantPushes
			mu.Unlock()
			if done {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no progress %s: want %d instances and %d pushes", what, wantIDs, wantPushes)
			}
		}
	}

	progress("before the faults", 5)
	members[2].Close() // one etcd member
	progress("after an etcd member died", 5)
	ctls[0].Kill() // one controller, without resigning
	progress("after a controller died", 5)
	regs[0].Close() // one registry
	progress("after a registry died", 10)
	close(stop)
	stream.Wait()

	for _, err := range failures {
		t.Error(err)
	}
	t.Logf("%d starts answered 503 while etcd had no leader", unavailable)
	if len(ids) < 20 {
		t.Fatalf("only %d instances started during the test", len(ids))
	}
	deadline, cancelWait := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelWait()
	for _, id := range ids {
		if _, err := cl.WaitState(deadline, id, apiv1.StateStarted); err != nil {
			_, getErr := cl.Instance(context.Background(), id)
			resp, _ := mon.Get(context.Background(), "/corral/instances/"+id)
			t.Fatalf("instance lost: %v (get: %v; in etcd: %d keys)", err, getErr, len(resp.Kvs))
		}
	}
	// Each instance's assignment was created exactly once in etcd's history.
	created := map[string]int{}
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	end := mustRev(t, mon)
	for wr := range mon.Watch(wctx, "/corral/assign/", clientv3.WithPrefix(), clientv3.WithRev(startRev)) {
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT && ev.IsCreate() {
				created[filepath.Base(string(ev.Kv.Key))]++
			}
		}
		if wr.Header.Revision >= end {
			break
		}
	}
	for id, n := range created {
		if n != 1 {
			t.Errorf("instance %s placed %d times", id, n)
		}
	}
	for _, id := range ids {
		if created[id] != 1 {
			t.Errorf("instance %s was started but placed %d times", id, created[id])
		}
	}
	// A controller killed after committing a start but before answering
	// leaves an instance the client never heard of (the client then retries
	// on the other controller). That is a lost response, not a double
	// placement; at most one per stream worker in flight at the kill.
	if extra := len(created) - len(ids); extra > 3 {
		t.Errorf("%d placements for %d instances: %d more than requests in flight at the kill", len(created), len(ids), extra)
	}
	t.Logf("%d instances started and %d placements during the failures", len(ids), len(created))
}

// startWithRetry starts one instance, retrying only when no controller
// answered (the request never reached one).
func startWithRetry(ctx context.Context, cl *client.Controller, vmid string) ([]string, error) {
	for {
		ids, err := cl.StartInstances(ctx, map[string]any{"vmid": vmid})
		var fe *client.FailError
		if err == nil || errors.As(err, &fe) || ctx.Err() != nil {
			return ids, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
