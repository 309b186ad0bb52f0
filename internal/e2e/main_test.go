package e2e

import (
	"os"
	"testing"

	"github.com/corral-build/corral/internal/fakecli"
	"github.com/corral-build/corral/internal/fakecli/fakeanka"
	"github.com/corral-build/corral/internal/fakecli/faketart"
)

// TestMain lets this test binary stand in for the macOS CLIs (fakecli):
// run as `tart` or `anka` it is the strict fake.
func TestMain(m *testing.M) {
	fakecli.Dispatch(faketart.Tool, fakeanka.Tool)
	os.Exit(m.Run())
}
