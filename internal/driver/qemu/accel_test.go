package qemu

import (
	"context"
	"testing"
)

func TestCPUHasVirt(t *testing.T) {
	for in, want := range map[string]bool{
		"processor\t: 0\nflags\t\t: fpu vme sse2 vmx aes\n": true,
		"flags\t\t: fpu svm\n":                              true,
		"flags\t\t: fpu vme sse2 hypervisor aes\n":          false, // this CI machine's kind
		"vmx\n": false,
	} {
		if got := cpuHasVirt(in); got != want {
			t.Errorf("cpuHasVirt(%q) = %v, want %v", in, got, want)
		}
	}
}

// The probe firmware really runs: under TCG (always available) it exits
// with the debug-exit status, so a probe that hangs or fails means the
// accelerator is broken, not the probe.
func TestProbeRunsUnderTCG(t *testing.T) {
	requireQEMU(t)
	if err := probeAccel(context.Background(), "qemu-system-x86_64", t.TempDir(), AccelTCG); err != nil {
		t.Fatalf("probe under TCG: %v", err)
	}
}

// auto never picks a KVM that cannot run the probe guest; on this kind of
// machine (/dev/kvm opens, no vmx) it must pick TCG, quickly.
func TestAutoPicksAWorkingAccelerator(t *testing.T) {
	requireQEMU(t)
	accel, why, err := chooseAccel(context.Background(), "qemu-system-x86_64", t.TempDir(), AccelAuto)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("auto chose %s: %s", accel, why)
	if accel == AccelKVM {
		if err := probeAccel(context.Background(), "qemu-system-x86_64", t.TempDir(), AccelKVM); err != nil {
			t.Fatalf("auto chose a KVM that fails the probe: %v", err)
		}
	} else if kvmUsable() == nil && probeAccel(context.Background(), "qemu-system-x86_64", t.TempDir(), AccelKVM) == nil {
		t.Fatal("auto chose TCG though KVM runs the probe guest")
	}
	if _, _, err := chooseAccel(context.Background(), "qemu-system-x86_64", t.TempDir(), "hvf"); err == nil {
		t.Fatal("an unknown accelerator must be refused")
	}
}
