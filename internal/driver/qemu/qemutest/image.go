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

// Image returns a directory holding a bootable QEMU template, or skips the
// test when QEMU or apt is not installed.
func Image(t testing.TB) string {
	t.Helper()
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (apt-get install qemu-system-x86 qemu-utils)", bin)
		}
	}
	for _, bin := range []string{"apt-get", "dpkg-deb", "readelf"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is needed to build the QEMU test image from Debian packages", bin)
		}
	}
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
