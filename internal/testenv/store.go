package testenv

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// StoreAt is a store (and its etcd client, closed with the test) on the
// etcd at url; "" starts a fresh embedded one.
func StoreAt(t testing.TB, url string) (*clientv3.Client, *store.Store) {
	t.Helper()
	if url == "" {
		url = StartEtcd(t).ClientURL
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, store.New(cli, "")
}

// NewAPIKey creates API key id and returns its private key, as the
// client holding it has it.
func NewAPIKey(t testing.TB, st *store.Store, id string) *rsa.PrivateKey {
	t.Helper()
	pemKey, err := controller.NewAPIKey(context.Background(), st, id)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemKey)
	priv, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}
