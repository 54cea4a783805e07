//go:build sluicevm

package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// These must match the constants of package vmtest (host side); the guest
// does not import it so that the test binary stays free of host code.
const (
	sluiceBin      = "/bin/sluice"
	modulesDir     = "/modules"
	exitMarker     = "SLUICE-VM-EXIT"
	bootFailMarker = "SLUICE-VM-BOOT-FAILED"
)

func TestMain(m *testing.M) {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "vmtest/guest: these tests run as /init of the VM that vmtest boots (go test ./vmtest)")
		os.Exit(2)
	}
	if err := boot(); err != nil {
		fmt.Printf("%s: %v\n", bootFailMarker, err)
		poweroff()
	}
	code := m.Run()
	fmt.Printf("%s %d\n", exitMarker, code)
	poweroff()
}

// boot prepares the bare initramfs: pseudo file systems, modules, loopback.
func boot() error {
	mounts := []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/run", "tmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	}
	for _, mt := range mounts {
		if err := os.MkdirAll(mt.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(mt.src, mt.dst, mt.fstype, 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", mt.dst, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(modulesDir, "*.ko"))
	if err != nil {
		return err
	}
	sort.Strings(files) // names start with the load order
	start := time.Now()
	for _, f := range files {
		if err := loadModule(f); err != nil {
			return err
		}
	}
	fmt.Printf("loaded %d modules in %s\n", len(files), time.Since(start).Round(time.Millisecond))
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	for _, kv := range [][2]string{{"HOME", "/root"}, {"PATH", "/bin"}, {"TMPDIR", "/tmp"}} {
		os.Setenv(kv[0], kv[1])
	}
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
		return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// poweroff stops the VM; qemu runs with -no-reboot, so a restart ends it.
func poweroff() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		fmt.Println("reboot:", err)
	}
	os.Exit(1) // init exiting panics the kernel, which qemu also ends on
}
