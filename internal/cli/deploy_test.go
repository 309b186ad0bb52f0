package cli

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
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

// TestKubernetesEnvIsAccepted: the ConfigMaps the Kubernetes containers load
// and the etcd StatefulSet's variables are all read by their commands.
func TestKubernetesEnvIsAccepted(t *testing.T) {
	type doc struct {
		Kind     string
		Metadata struct{ Name string }
		Data     map[string]string
		Spec     struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Env []struct{ Name string }
					}
				}
			}
		}
	}
	var docs []doc
	for _, file := range []string{"corral.yaml", "etcd.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", file))
		if err != nil {
			t.Fatal(err)
		}
		for _, part := range strings.Split(string(data), "\n---") {
			var d doc
			if err := yaml.Unmarshal([]byte(part), &d); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			docs = append(docs, d)
		}
	}
	check := func(what string, names []string, define func(*flags)) {
		f := newFlags("test", "", &bytes.Buffer{})
		define(f)
		if len(names) == 0 {
			t.Errorf("%s: no variables found", what)
		}
		for _, n := range names {
			if !f.known[n] {
				t.Errorf("%s sets %s, which its command does not read", what, n)
			}
		}
	}
	seen := 0
	for _, d := range docs {
		switch {
		case d.Kind == "ConfigMap" && d.Metadata.Name == "corral-controller":
			check("ConfigMap corral-controller", keys(d.Data), func(f *flags) { (&controllerFlags{}).register(f, ":80") })
			seen++
		case d.Kind == "ConfigMap" && d.Metadata.Name == "corral-registry":
			check("ConfigMap corral-registry", keys(d.Data), func(f *flags) { (&registryFlags{}).register(f, "", ":8089", "x") })
			seen++
		case d.Kind == "StatefulSet":
			var names []string
			for _, e := range d.Spec.Template.Spec.Containers[0].Env {
				names = append(names, e.Name)
			}
			check("etcd StatefulSet", names, func(f *flags) { (&etcdServeFlags{}).register(f) })
			seen++
		}
	}
	if seen != 3 {
		t.Fatalf("found %d of the 3 env sources", seen)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
