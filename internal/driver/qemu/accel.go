package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Accelerator choices for Config.Accel.
const (
	AccelAuto = "auto" // KVM if a probe guest really runs under it, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// probeTimeout bounds the KVM probe: the probe guest runs three
// instructions, so a working KVM answers in milliseconds; a KVM that opens
// but cannot run guests (no vmx/svm exposed to a nested host) hangs.
const probeTimeout = 10 * time.Second

// chooseAccel resolves Config.Accel to kvm or tcg, with the reason.
func chooseAccel(ctx context.Context, binary, dir, want string) (string, string, error) {
	switch want {
	case AccelTCG:
		return AccelTCG, "chosen by --qemu-accel", nil
	case AccelKVM:
		if err := probeAccel(ctx, binary, dir, AccelKVM); err != nil {
			return "", "", fmt.Errorf("qemu driver: --qemu-accel kvm, but KVM cannot run a guest here: %w", err)
		}
		return AccelKVM, "chosen by --qemu-accel", nil
	case AccelAuto, "":
	default:
		return "", "", fmt.Errorf("qemu driver: accelerator %q: want auto, kvm or tcg", want)
	}
	if err := kvmUsable(); err != nil {
		return AccelTCG, err.Error(), nil
	}
	if err := probeAccel(ctx, binary, dir, AccelKVM); err != nil {
		return AccelTCG, "a probe guest did not run under KVM: " + err.Error(), nil
	}
	return AccelKVM, "a probe guest ran under KVM", nil
}

// kvmUsable checks what can be checked without running a guest: /dev/kvm
// opens read-write and, on x86, the CPU exposes hardware virtualisation.
func kvmUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm: %w", err)
	}
	f.Close()
	if runtime.GOARCH == "amd64" || runtime.GOARCH == "386" {
		data, err := os.ReadFile("/proc/cpuinfo")
		if err != nil {
			return fmt.Errorf("read /proc/cpuinfo: %w", err)
		}
		if !cpuHasVirt(string(data)) {
			return errors.New("the CPU exposes no vmx or svm flag (/proc/cpuinfo), so KVM guests cannot run")
		}
	}
	return nil
}

// cpuHasVirt reports whether a /proc/cpuinfo text lists vmx or svm.
func cpuHasVirt(cpuinfo string) bool {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
	}
	return false
}

// probeBIOS is a 64 KiB firmware whose reset vector (offset 0xfff0) writes
// 1 to the isa-debug-exit port and halts: QEMU exits with status 3 as soon as
// the guest has executed its first instructions.
func probeBIOS() []byte {
	img := make([]byte, 64<<10)
	copy(img[0xfff0:], []byte{
		0xb0, 0x01, // mov al, 1
		0xe6, 0xf4, // out 0xf4, al
		0xf4,       // hlt
		0xeb, 0xfe, // jmp $
	})
	return img
}

// probeAccel boots the probe firmware under accel and waits for its exit.
func probeAccel(ctx context.Context, binary, dir, accel string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	bios := filepath.Join(dir, "accel-probe.bin")
	if err := os.WriteFile(bios, probeBIOS(), 0o600); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "-accel", accel, "-machine", "pc", "-nodefaults", "-display", "none",
		"-m", "16", "-bios", bios, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-no-reboot")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("the probe guest did not finish within %s (guests hang under %s)", probeTimeout, accel)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 3 {
		return nil
	}
	return fmt.Errorf("probe guest: %v: %.300s", err, out)
}
