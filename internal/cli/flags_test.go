package cli

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnvDefaultsAndAliases(t *testing.T) {
	t.Setenv("ANKA_ANKA_REGISTRY", "http://reg:8089")
	t.Setenv("ANKA_INSTANCE_TIME_OUT", "90")
	t.Setenv("CORRAL_ETCD_ENDPOINTS", "http://e1:2379, http://e2:2379")
	t.Setenv("CORRAL_LISTEN", ":9999")
	var c controllerFlags
	f := newFlags("controller", "", &bytes.Buffer{})
	c.register(f, ":80")
	if err := f.Parse([]string{"--listen", ":7000"}, slog.Default); err != nil {
		t.Fatal(err)
	}
	if c.registryURL != "http://reg:8089" || c.retention != 90*time.Second || c.listen != ":7000" ||
		len(c.etcdEndpoints) != 2 || c.etcdEndpoints[1] != "http://e2:2379" {
		t.Fatalf("got %+v", c)
	}
}

func TestCorralNameWinsOverAlias(t *testing.T) {
	t.Setenv("ANKA_LISTEN_ADDR", ":1")
	t.Setenv("CORRAL_LISTEN", ":2")
	var c controllerFlags
	f := newFlags("controller", "", &bytes.Buffer{})
	c.register(f, ":80")
	if err := f.Parse(nil, slog.Default); err != nil || c.listen != ":2" {
		t.Fatalf("listen %q err %v", c.listen, err)
	}
}

func TestBadEnvValueIsAnError(t *testing.T) {
	t.Setenv("ANKA_V", "loud")
	var c controllerFlags
	f := newFlags("controller", "", &bytes.Buffer{})
	c.register(f, ":80")
	err := f.Parse(nil, slog.Default)
	if err == nil || !strings.Contains(err.Error(), `ANKA_V="loud"`) {
		t.Fatalf("got %v", err)
	}
}

func TestUnknownCorralVariableWarns(t *testing.T) {
	t.Setenv("CORRAL_LISTN", ":1")
	var logs bytes.Buffer
	f := newFlags("controller", "", &bytes.Buffer{})
	var c controllerFlags
	c.register(f, ":80")
	if err := f.Parse(nil, func() *slog.Logger { return slog.New(slog.NewTextHandler(&logs, nil)) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "CORRAL_LISTN") {
		t.Fatalf("no warning: %q", logs.String())
	}
}

// TestDocumentedVariablesDoNotWarn: CORRAL_CONFIG (where contexts live) is
// read without a flag; it was honoured and warned about as unknown.
func TestDocumentedVariablesDoNotWarn(t *testing.T) {
	t.Setenv("CORRAL_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	var logs bytes.Buffer
	f := newFlags("vm list", "", &bytes.Buffer{})
	if err := f.Parse(nil, func() *slog.Logger { return slog.New(slog.NewTextHandler(&logs, nil)) }); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "CORRAL_CONFIG") {
		t.Fatalf("CORRAL_CONFIG warned about: %q", logs.String())
	}
}

func TestValidateRegistryURL(t *testing.T) {
	for _, good := range []string{"", "http://reg:8089", "https://reg.example.com"} {
		if err := ValidateRegistryURL(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for bad, want := range map[string]string{
		"http://reg:8089/": "must not end with a slash",
		"reg:8089":         "want http(s)://host:port",
		"http://reg/x":     "no path",
	} {
		if err := ValidateRegistryURL(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", bad, err, want)
		}
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands() {
		var out bytes.Buffer
		err := c.run(t.Context(), []string{"--help"}, &out)
		if err == nil || !strings.Contains(out.String(), "Usage: corral "+c.name) {
			t.Errorf("%s --help: err %v, output %q", c.name, err, out.String())
		}
	}
}

func TestRegistryBackendConfig(t *testing.T) {
	parse := func(env map[string]string) (*registryFlags, error) {
		for k, v := range env {
			t.Setenv(k, v)
		}
		f := newFlags("registry", "", &bytes.Buffer{})
		var r registryFlags
		r.register(f, "", ":8089", "dir")
		if err := f.Parse(nil, nil); err != nil {
			return nil, err
		}
		return &r, nil
	}
	r, _ := parse(map[string]string{"ANKA_BACKEND_TYPE": "s3"})
	if _, err := r.config(nil); err == nil || !strings.Contains(err.Error(), "CORRAL_S3_BUCKET") {
		t.Fatalf("s3 without a bucket: %v", err)
	}
	r, _ = parse(map[string]string{"ANKA_BACKEND_TYPE": "s3", "CORRAL_S3_BUCKET": "b", "CORRAL_S3_ENDPOINT": "http://minio:9000"})
	cfg, err := r.config(nil)
	if err != nil || cfg.S3 == nil || cfg.S3.Bucket != "b" || !cfg.S3.PathStyle {
		t.Fatalf("s3 config %+v %v", cfg.S3, err)
	}
	r, _ = parse(map[string]string{"ANKA_BACKEND_TYPE": "disk"})
	if cfg, err := r.config(nil); err != nil || cfg.S3 != nil || cfg.DataDir != "dir" {
		t.Fatalf("disk config %+v %v", cfg, err)
	}
	r, _ = parse(map[string]string{"ANKA_BACKEND_TYPE": "nfs"})
	if _, err := r.config(nil); err == nil || !strings.Contains(err.Error(), `"nfs"`) {
		t.Fatalf("unknown backend: %v", err)
	}
}

// TestReferenceEnvNamesAccepted: every variable existing users have in their
// controller.env / registry.env (the reference product's names) is read by
// the matching command, so those files keep working.
func TestReferenceEnvNamesAccepted(t *testing.T) {
	both := []string{"ANKA_V", "ANKA_USE_HTTPS", "ANKA_SERVER_CERT", "ANKA_SERVER_KEY", "ANKA_SKIP_TLS_VERIFICATION",
		"ANKA_CA_CERT", "ANKA_ROOT_CERT", "ANKA_ENABLE_METRICS", "ANKA_LISTEN_ADDR"}
	for _, tc := range []struct {
		command  string
		register func(*flags)
		names    []string
	}{
		{"controller", func(f *flags) { (&controllerFlags{}).register(f, ":80") }, append([]string{"ANKA_ANKA_REGISTRY",
			"ANKA_LOCAL_ANKA_REGISTRY", "ANKA_ETCD_ENDPOINTS", "ANKA_STANDALONE", "ANKA_INSTANCE_TIME_OUT",
			"ANKA_DEFRAG_DB_INTERVAL", "ANKA_ENABLE_AUTH", "ANKA_ROOT_TOKEN", "ANKA_ENABLE_API_KEYS"}, both...)},
		{"registry", func(f *flags) { (&registryFlags{}).register(f, "", ":8089", "x") }, append([]string{"ANKA_BASE_PATH",
			"ANKA_BACKEND_TYPE", "ANKA_BACKEND_S3_BUCKET", "ANKA_BACKEND_S3_USE_PATH_STYLE", "ANKA_BACKEND_S3_UPLOAD_PART_SIZE",
			"ANKA_BACKEND_S3_UPLOAD_CONCURRENCY"}, both...)},
	} {
		f := newFlags(tc.command, "", &bytes.Buffer{})
		tc.register(f)
		for _, name := range tc.names {
			if !f.known[name] {
				t.Errorf("corral %s does not read %s", tc.command, name)
			}
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "5G": 5 << 30, "5GiB": 5 << 30, "500m": 500 << 20,
		"1.5T": 3 << 39, "64K": 64 << 10, "2 GB": 2 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "big", "-1G", "5X"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// TestUpListensOnLoopbackByDefault: `corral up` used to listen on :8090 (every
// interface) with auth off: remote code execution for anyone on the network.
func TestUpListensOnLoopbackByDefault(t *testing.T) {
	var out bytes.Buffer
	runUp(t.Context(), []string{"--help"}, &out)
	help := out.String()
	i := strings.Index(help, "  -listen string\n")
	if i < 0 {
		t.Fatalf("no --listen in up's help:\n%s", help)
	}
	usage, _, _ := strings.Cut(help[i+len("  -listen string\n"):], "\n")
	if !strings.Contains(usage, `(default "127.0.0.1:8090")`) {
		t.Fatalf("up --listen: %q, want the loopback default", usage)
	}
}

// The reference's settings: those with a Corral equivalent are aliases;
// every other ANKA_* the controller does not read is warned about by name
// (only unknown CORRAL_* were).
func TestAnkaVariables(t *testing.T) {
	t.Setenv("ANKA_NODE_ACTIVE_TIMEOUT", "30")
	t.Setenv("ANKA_AUTO_COMPACTION_RETENTION", "2")
	t.Setenv("ANKA_DATA_DIR", "/var/lib/anka")
	t.Setenv("ANKA_METRICS_PORT", "9100")
	t.Setenv("ANKA_ENABLE_METRICS", "true")
	t.Setenv("ANKA_LOG_DIR", "/var/log/anka-controller")
	t.Setenv("ANKA_ENABLE_CENTRAL_LOGGING", "true")
	var logs bytes.Buffer
	f := newFlags("controller", "", &bytes.Buffer{})
	f.warnAnka = true
	var c controllerFlags
	c.register(f, ":80")
	if err := f.Parse(nil, func() *slog.Logger { return slog.New(slog.NewTextHandler(&logs, nil)) }); err != nil {
		t.Fatal(err)
	}
	if c.leaseTTL != 30*time.Second || c.compaction != 2*time.Hour || c.dataDir != "/var/lib/anka" ||
		metricsListen(c.enableMetrics, c.metricsListen) != "127.0.0.1:9100" {
		t.Fatalf("aliases: ttl %v compaction %v data %q metrics %q", c.leaseTTL, c.compaction, c.dataDir, metricsListen(c.enableMetrics, c.metricsListen))
	}
	for _, name := range []string{"ANKA_LOG_DIR", "ANKA_ENABLE_CENTRAL_LOGGING"} {
		if !strings.Contains(logs.String(), "name="+name) {
			t.Errorf("no warning about %s: %q", name, logs.String())
		}
	}
	for _, name := range []string{"ANKA_NODE_ACTIVE_TIMEOUT", "ANKA_METRICS_PORT", "ANKA_DATA_DIR"} {
		if strings.Contains(logs.String(), "name="+name) {
			t.Errorf("warned about %s, which is read", name)
		}
	}
}

// ANKA_BACKEND_S3_SKIP_TLS_VERIFICATION is the reference's name for the
// registry's S3 client skipping certificate checks.
func TestS3SkipTLSAlias(t *testing.T) {
	t.Setenv("ANKA_BACKEND_S3_SKIP_TLS_VERIFICATION", "true")
	f := newFlags("registry", "", &bytes.Buffer{})
	var r registryFlags
	r.register(f, "", ":8089", "dir")
	if err := f.Parse(nil, nil); err != nil {
		t.Fatal(err)
	}
	if !r.s3TLS.skipVerify {
		t.Fatal("ANKA_BACKEND_S3_SKIP_TLS_VERIFICATION not read")
	}
}

// TestSecretsStayOffCommandLinesAndChildren: the root token rode on the
// corral process's command line, where a job read it in /proc, and secrets
// from the environment were inherited by every child (tart, scripts). A
// secret flag reads a file too, its variables are cleared once read, and
// one given on the command line draws a warning.
func TestSecretsStayOffCommandLinesAndChildren(t *testing.T) {
	t.Setenv("ANKA_ROOT_TOKEN", "from-env")
	t.Setenv("ANKA_ETCD_PASSWORD", "etcd-pw")
	var c controllerFlags
	f := newFlags("controller", "", &bytes.Buffer{})
	c.register(f, ":80")
	var logs bytes.Buffer
	log := func() *slog.Logger { return slog.New(slog.NewTextHandler(&logs, nil)) }
	if err := f.Parse(nil, log); err != nil {
		t.Fatal(err)
	}
	if c.rootToken != "from-env" || c.etcdPassword != "etcd-pw" {
		t.Fatalf("root token %q etcd password %q", c.rootToken, c.etcdPassword)
	}
	for _, n := range []string{"ANKA_ROOT_TOKEN", "ANKA_ETCD_PASSWORD"} {
		if v, ok := os.LookupEnv(n); ok {
			t.Errorf("%s=%q is still in the environment children inherit", n, v)
		}
	}
	if strings.Contains(logs.String(), "command line") {
		t.Errorf("warned about a secret from the environment: %s", logs.String())
	}

	file := filepath.Join(t.TempDir(), "root-token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c = controllerFlags{}
	f = newFlags("controller", "", &bytes.Buffer{})
	c.register(f, ":80")
	if err := f.Parse([]string{"--root-token-file", file}, log); err != nil || c.rootToken != "from-file" {
		t.Fatalf("--root-token-file: %q %v", c.rootToken, err)
	}

	c = controllerFlags{}
	f = newFlags("controller", "", &bytes.Buffer{})
	c.register(f, ":80")
	if err := f.Parse([]string{"--root-token", "typed", "--root-token-file", file}, log); err == nil {
		t.Error("both --root-token and --root-token-file accepted")
	}
	c = controllerFlags{}
	f = newFlags("controller", "", &bytes.Buffer{})
	c.register(f, ":80")
	if err := f.Parse([]string{"--root-token", "typed"}, log); err != nil || c.rootToken != "typed" {
		t.Fatalf("--root-token: %q %v", c.rootToken, err)
	}
	if !strings.Contains(logs.String(), "--root-token") || strings.Contains(logs.String(), "typed") {
		t.Errorf("a secret on the command line: want a warning naming the flag, never the value; log: %s", logs.String())
	}
}
