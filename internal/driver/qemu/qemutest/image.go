// Package qemutest provides the tiny QEMU template that tests boot: built
// from Debian packages by testdata/build-image.sh and cached between runs.
package qemutest

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	once     sync.Once
	imageDir string
	buildErr string
)

// Require skips the test when QEMU is not installed, or fails it when
// CORRAL_TEST_QEMU=1 says it must be (.ci/run installs it).
func Require(t testing.TB, bins ...string) {
	t.Helper()
	if len(bins) == 0 {
		bins = []string{"qemu-system-x86_64", "qemu-img"}
	}
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CORRAL_TEST_QEMU") == "1" {
				t.Fatalf("%s is not installed, and CORRAL_TEST_QEMU=1 requires it", bin)
			}
			t.Skipf("%s is not installed (apt-get install qemu-system-x86 qemu-utils binutils)", bin)
		}
	}
}

// Image returns a directory holding a bootable QEMU template, or skips the
// test when QEMU or apt is not installed (fails under CORRAL_TEST_QEMU=1).
func Image(t testing.TB) string {
	t.Helper()
	Require(t)
	Require(t, "apt-get", "dpkg-deb", "readelf")
	once.Do(build)
	if buildErr != "" {
		t.Fatalf("build QEMU test image: %s", buildErr)
	}
	return imageDir
}

func build() {
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "..", "testdata", "build-image.sh")
	data, err := os.ReadFile(script)
	if err != nil {
		buildErr = err.Error()
		return
	}
	sum := sha256.Sum256(data)
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	imageDir = filepath.Join(cache, "corral", "qemu-test-image-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(imageDir, "config.json")); err == nil {
		return
	}
	tmp := imageDir + ".building"
	os.RemoveAll(tmp)
	if out, err := exec.Command("sh", script, tmp).CombinedOutput(); err != nil {
		buildErr = err.Error() + ": " + string(out)
		return
	}
	if err := os.Rename(tmp, imageDir); err != nil {
		buildErr = err.Error()
	}
}
