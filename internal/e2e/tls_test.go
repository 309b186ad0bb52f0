package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/node"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/tlsconfig"
)

type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "corral test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), caCert: cert, caKey: key}
	p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue makes a leaf certificate; server ones are valid for 127.0.0.1.
func (p *pki) issue(t *testing.T, cn string, server bool, orgs ...string) (certFile, keyFile string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	return p.write(t, cn+".pem", "CERTIFICATE", der), p.write(t, cn+".key", "PRIVATE KEY", keyDER)
}

// TestTLSAndClientCertificates: HTTPS registry and controller; with auth on
// and a client CA, a verified client certificate is the credential; nodes
// join and pull over HTTPS.
func TestTLSAndClientCertificates(t *testing.T) {
	p := newPKI(t)
	ca := filepath.Join(p.dir, "ca.pem")
	srvCert, srvKey := p.issue(t, "server", true)
	cliCert, cliKey := p.issue(t, "ci-bot", false)
	etcd := testenv.StartEtcd(t)

	reg, err := regdaemon.Start(regdaemon.Config{ListenAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		TLS: tlsconfig.Server{CertFile: srvCert, KeyFile: srvKey}, Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	trust, _ := tlsconfig.Client{CAFile: ca}.Config()
	rc, _ := client.NewRegistry(reg.URL)
	rc.UseTLS(trust)
	src := newVMDir(t, 0)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "secure", Tag: "v1"})
	if err != nil {
		t.Fatalf("push over HTTPS: %v", err)
	}

	ctl, err := daemon.Start(context.Background(), daemon.Config{ListenAddr: "127.0.0.1:0",
		EtcdEndpoints: []string{etcd.ClientURL}, RegistryURL: reg.URL, RegistryTLS: tlsconfig.Client{CAFile: ca},
		JoinToken: "t", TLS: tlsconfig.Server{CertFile: srvCert, KeyFile: srvKey, ClientCAFile: ca},
		Auth: controller.AuthConfig{Enabled: true}, EtcdLogLevel: "off", Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if ctl.URL[:8] != "https://" {
		t.Fatalf("controller URL %s", ctl.URL)
	}
	agent, err := node.New(node.Config{ControllerURLs: []string{ctl.URL}, Token: "t", Name: "tls-node", IP: "127.0.0.1",
		Capacity: 2, DataDir: t.TempDir(), Driver: synthetic.New(10 * time.Millisecond), TLS: trust, Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	nctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { agent.Run(nctx); close(done) }()
	defer func() { stop(); <-done }()

	// Without a client certificate: 401.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: trust}}
	resp, err := anon.Get(ctl.URL + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("no client certificate: HTTP %d", resp.StatusCode)
	}
	// With one: the API works end to end.
	withCert, _ := tlsconfig.Client{CAFile: ca, CertFile: cliCert, KeyFile: cliKey}.Config()
	cl, _ := client.New([]string{ctl.URL}, "")
	cl.UseTLS(withCert)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ids, err := cl.StartInstances(ctx, map[string]any{"vmid": res.TemplateID})
	if err != nil {
		t.Fatalf("start with a client certificate: %v", err)
	}
	if _, err := cl.WaitState(ctx, ids[0], apiv1.StateStarted); err != nil {
		t.Fatal(err)
	}
	// A certificate's organization can be bound to a permission group.
	if err := cl.PutPermissionGroup(ctx, apiv1.PermissionGroup{Name: "qa", Permissions: []string{apiv1.PermView},
		Members: []string{"cert-group:qa"}}, true); err != nil {
		t.Fatal(err)
	}
	qaCert, qaKey := p.issue(t, "qa-bot", false, "qa")
	qaTLS, _ := tlsconfig.Client{CAFile: ca, CertFile: qaCert, KeyFile: qaKey}.Config()
	qa, _ := client.New([]string{ctl.URL}, "")
	qa.UseTLS(qaTLS)
	if _, err := qa.Instance(ctx, ids[0]); err != nil {
		t.Fatalf("qa certificate with view: %v", err)
	}
	var fe *client.FailError
	if err := qa.Terminate(ctx, ids[0]); !errors.As(err, &fe) || fe.HTTPStatus != 403 ||
		!strings.Contains(fe.Message, "cert:qa-bot does not have the terminate_instances permission") {
		t.Fatalf("qa certificate terminating: %v", err)
	}
	// A certificate from another CA is not a credential.
	other := newPKI(t)
	badCert, badKey := other.issue(t, "intruder", false)
	bad, _ := tlsconfig.Client{CAFile: ca, CertFile: badCert, KeyFile: badKey}.Config()
	if _, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: bad}}).Get(ctl.URL + "/api/v1/status"); err == nil {
		t.Fatal("a certificate from an unknown CA was accepted")
	}
}

// TestRegistryClientCertificates: a registry given a client CA
// (ANKA_CA_CERT) serves only clients presenting a certificate from it.
func TestRegistryClientCertificates(t *testing.T) {
	p := newPKI(t)
	ca := filepath.Join(p.dir, "ca.pem")
	srvCert, srvKey := p.issue(t, "server", true)
	cliCert, cliKey := p.issue(t, "node-1", false)
	reg, err := regdaemon.Start(regdaemon.Config{ListenAddr: "127.0.0.1:0", DataDir: t.TempDir(), Log: testenv.Logger(t),
		TLS: tlsconfig.Server{CertFile: srvCert, KeyFile: srvKey, ClientCAFile: ca, RequireClientCert: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	src := newVMDir(t, 0)
	push := func(cfg tlsconfig.Client) error {
		tc, err := cfg.Config()
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := client.NewRegistry(reg.URL)
		rc.UseTLS(tc)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = rc.Push(ctx, client.PushOptions{Source: src, Template: "secure", Tag: fmt.Sprint(time.Now().UnixNano())})
		return err
	}
	if err := push(tlsconfig.Client{CAFile: ca}); err == nil {
		t.Fatal("push without a client certificate succeeded")
	}
	if err := push(tlsconfig.Client{CAFile: ca, CertFile: cliCert, KeyFile: cliKey}); err != nil {
		t.Fatalf("push with a client certificate: %v", err)
	}
}
