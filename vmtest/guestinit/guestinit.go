//go:build linux

// Package guestinit is what a program running as /init of vmtest's VM
// needs around its own work: the boot of the bare initramfs (pseudo file
// systems, the WireGuard modules, loopback), the power-off that ends the
// VM, and small readers of the guest's state. The kernel tier's guest
// tests (vmtest/guest) and the bench's kernel section (bench/cmd/kernelguest)
// both run as that /init.
package guestinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/sluice-vpn/sluice/internal/nsexec"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Boot prepares the bare initramfs: pseudo file systems, the modules in
// modulesDir (in name order, which is their load order), loopback up, and
// HOME, PATH and TMPDIR. It returns how many modules it loaded.
func Boot(modulesDir string) (int, error) {
	mounts := []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/run", "tmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	}
	for _, mt := range mounts {
		if err := os.MkdirAll(mt.dst, 0o755); err != nil {
			return 0, err
		}
		if err := unix.Mount(mt.src, mt.dst, mt.fstype, 0, ""); err != nil {
			return 0, fmt.Errorf("mount %s: %w", mt.dst, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(modulesDir, "*.ko"))
	if err != nil {
		return 0, err
	}
	sort.Strings(files)
	for _, f := range files {
		if err := loadModule(f); err != nil {
			return 0, err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return 0, fmt.Errorf("find loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return 0, fmt.Errorf("loopback up: %w", err)
	}
	for _, kv := range [][2]string{{"HOME", "/root"}, {"PATH", "/bin"}, {"TMPDIR", "/tmp"}} {
		os.Setenv(kv[0], kv[1])
	}
	return len(files), nil
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

// Poweroff stops the VM; qemu runs with -no-reboot, so a restart ends it.
func Poweroff() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		fmt.Println("reboot:", err)
	}
	os.Exit(1) // init exiting panics the kernel, which qemu also ends on
}

// RSSMiB returns a process's VmRSS in MiB.
func RSSMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				return 0, err
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, errors.New("no VmRSS")
}

// NewNetns creates a network namespace with loopback up, without moving
// the caller into it.
func NewNetns() (netns.NsHandle, error) {
	type res struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			c <- res{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.New() // switches this thread into it
		if err != nil {
			c <- res{err: err}
			return
		}
		if serr := netns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and dies with the goroutine
		c <- res{h: h}
	}()
	r := <-c
	if r.err != nil {
		return r.h, fmt.Errorf("create netns: %w", r.err)
	}
	nl, err := netlink.NewHandleAt(r.h, unix.NETLINK_ROUTE)
	if err != nil {
		r.h.Close()
		return r.h, fmt.Errorf("netlink in netns: %w", err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		r.h.Close()
		return r.h, fmt.Errorf("loopback up: %w", err)
	}
	return r.h, nil
}

// InNetns runs fn on a thread switched into namespace h: sockets, netlink
// and wgctrl clients it opens and processes it starts belong to h.
func InNetns(h netns.NsHandle, fn func() error) error { return nsexec.In(h, fn) }
