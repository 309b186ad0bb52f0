package kubernetes

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/testenv"
	"sigs.k8s.io/yaml"
)

// resources maps the kinds the manifests use to their REST collections.
var resources = map[string]struct {
	prefix, plural string
	namespaced     bool
}{
	"Namespace":             {"/api/v1", "namespaces", false},
	"ConfigMap":             {"/api/v1", "configmaps", true},
	"Service":               {"/api/v1", "services", true},
	"PersistentVolumeClaim": {"/api/v1", "persistentvolumeclaims", true},
	"Deployment":            {"/apis/apps/v1", "deployments", true},
	"StatefulSet":           {"/apis/apps/v1", "statefulsets", true},
	"Ingress":               {"/apis/networking.k8s.io/v1", "ingresses", true},
	"PodDisruptionBudget":   {"/apis/policy/v1", "poddisruptionbudgets", true},
}

// TestServerSideDryRun sends every manifest to a real kube-apiserver (on an
// embedded etcd) with dryRun=All and strict field validation: what `kubectl
// apply --dry-run=server` checks. .ci/run builds the binary and sets
// CORRAL_TEST_KUBE=1 (see testenv.Binary).
func TestServerSideDryRun(t *testing.T) {
	bin := testenv.Binary(t, "kube-apiserver", "CORRAL_TEST_KUBE_APISERVER", "CORRAL_TEST_KUBE",
		"deploy/kubernetes/testdata/build-kube-apiserver.sh builds one")
	base, token := startAPIServer(t, bin)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a throwaway loopback server
	send := func(method, path string, body []byte) (int, string) {
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}

	docs := documents(t)
	checked := 0
	// The namespace is created for real first: namespaced dry-runs need it.
	for _, wantNamespace := range []bool{true, false} {
		for _, doc := range docs {
			js, err := yaml.YAMLToJSON(doc.data)
			if err != nil {
				t.Fatalf("%s: %v", doc.where, err)
			}
			var obj struct {
				Kind     string
				Metadata struct{ Name, Namespace string }
			}
			json.Unmarshal(js, &obj)
			if (obj.Kind == "Namespace") != wantNamespace {
				continue
			}
			res, ok := resources[obj.Kind]
			if !ok {
				t.Fatalf("%s %s: add its kind to the dry-run table", obj.Kind, obj.Metadata.Name)
			}
			path := res.prefix + "/" + res.plural
			if res.namespaced {
				ns := obj.Metadata.Namespace
				if ns == "" {
					ns = "corral" // kustomization.yaml's namespace
				}
				path = res.prefix + "/namespaces/" + ns + "/" + res.plural
			}
			query := "?fieldValidation=Strict"
			if !wantNamespace {
				query += "&dryRun=All"
			}
			code, body := send(http.MethodPost, path+query, js)
			if code != http.StatusCreated && code != http.StatusOK {
				t.Errorf("%s %s: HTTP %d %s", obj.Kind, obj.Metadata.Name, code, body)
			}
			checked++
		}
	}
	if checked != len(docs) {
		t.Fatalf("checked %d of %d manifests", checked, len(docs))
	}
}

// startAPIServer runs kube-apiserver on loopback and returns its URL and an
// admin token.
func startAPIServer(t *testing.T, bin string) (string, string) {
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyFile := filepath.Join(dir, "sa.key")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	const token = "corral-dry-run-token"
	tokenFile := filepath.Join(dir, "tokens.csv")
	os.WriteFile(tokenFile, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--etcd-servers="+etcd.ClientURL, "--etcd-prefix=/kube",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port), "--advertise-address=10.96.0.1",
		"--cert-dir="+filepath.Join(dir, "certs"), "--token-auth-file="+tokenFile, "--authorization-mode=AlwaysAllow",
		"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file="+keyFile,
		"--service-account-signing-key-file="+keyFile, "--service-cluster-ip-range=10.96.0.0/16")
	logFile, _ := os.Create(filepath.Join(dir, "kube-apiserver.log"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited; logFile.Close() })

	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a throwaway loopback server
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodGet, base+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base, token
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("kube-apiserver exited: %s", tail(string(log), 3000))
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("kube-apiserver not ready in 90s: %s", tail(string(log), 3000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
