package cli

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// envFile reads KEY=value lines, skipping comments and blanks.
func envFile(t *testing.T, path string) map[string]string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not KEY=value: %q", path, line)
		}
		vars[k] = v
	}
	return vars
}

// TestDeployEnvFilesAreAccepted: every variable the compose env files set is
// read by the command that service runs, and its value parses.
func TestDeployEnvFilesAreAccepted(t *testing.T) {
	register := map[string]func(*flags){
		"etcd/etcd.env":             func(f *flags) { (&etcdServeFlags{}).register(f) },
		"controller/controller.env": func(f *flags) { (&controllerFlags{}).register(f, ":80") },
		"registry/registry.env":     func(f *flags) { (&registryFlags{}).register(f, "", ":8089", "corral-registry") },
	}
	for file, define := range register {
		t.Run(file, func(t *testing.T) {
			vars := envFile(t, filepath.Join("..", "..", "deploy", "compose", file))
			if len(vars) == 0 {
				t.Fatal("empty env file")
			}
			for k, v := range vars {
				t.Setenv(k, v)
			}
			f := newFlags("test", "", &bytes.Buffer{})
			define(f)
			if err := f.Parse(nil, nil); err != nil {
				t.Fatalf("values do not parse: %v", err)
			}
			for k := range vars {
				if !f.known[k] {
					t.Errorf("%s sets %s, which the service's command does not read", file, k)
				}
			}
		})
	}
}
