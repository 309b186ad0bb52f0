package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/testenv"
)

// TestHandshakeFloodLocksNobodyOut: an unauthenticated flood of
// /tap/v1/hand for a key let only 4 of 10 real logins through: each hand
// replaced the key's one pending secret, so a real client's shake found
// another. Pending handshakes are now one key each.
func TestHandshakeFloodLocksNobodyOut(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true}})
	base := c.Controllers[0].URL
	_, st := testenv.StoreAt(t, c.Etcd.ClientURL)
	priv := testenv.NewAPIKey(t, st, "jenkins")
	login := func() bool {
		code, hand := authCall(t, "POST", base+"/tap/v1/hand", "", `{"id":"jenkins"}`)
		enc, _ := base64.StdEncoding.DecodeString(hand)
		secret, err := rsa.DecryptOAEP(sha256.New(), rand.Reader, priv, enc, nil)
		if code != 200 || err != nil {
			return false
		}
		code, _ = authCall(t, "POST", base+"/tap/v1/shake", "", `{"id":"jenkins","secret":"`+string(secret)+`"}`)
		return code == 200
	}
	stop := make(chan struct{})
	var flood sync.WaitGroup
	var sent atomic.Int64
	for range 8 {
		flood.Add(1)
		go func() {
			defer flood.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Post(base+"/tap/v1/hand", "application/json", strings.NewReader(`{"id":"jenkins"}`))
				if err == nil {
					resp.Body.Close()
					sent.Add(1)
				}
			}
		}()
	}
	ok := 0
	for range 10 {
		if login() {
			ok++
		}
	}
	close(stop)
	flood.Wait()
	if ok != 10 {
		t.Fatalf("%d of 10 real logins went through a flood of %d handshakes", ok, sent.Load())
	}
	t.Logf("10 of 10 logins during a flood of %d handshakes", sent.Load())
}
