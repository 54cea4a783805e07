// Package vmtest boots Debian's own kernel under qemu (software emulation,
// -accel tcg) with an initramfs built from the tree, so that the kernel
// WireGuard backend — which this build host's kernel lacks — is tested and
// measured on a real kernel. It owns the pieces the host side needs: finding
// the cached kernel package, resolving the modules a test needs from their
// .modinfo dependencies, writing the initramfs (cpio newc), running qemu
// with a bounded time and reading the Go test results back from the serial
// console.
//
// The in-VM tests live in vmtest/guest (build tag sluicevm); their test
// binary is the VM's /init.
package vmtest

import (
	"os"
	"path/filepath"
	"strings"
)

// Defaults.
const (
	// DefaultKernelDir is where `make vm-deps` extracts the Debian kernel
	// package (boot/vmlinuz-*, lib/modules/*).
	DefaultKernelDir = "/var/cache/sluice-test/kernel"
	// EnvKernelDir overrides DefaultKernelDir.
	EnvKernelDir = "SLUICE_VM_KERNEL_DIR"
	// QEMU is the emulator binary (Debian package qemu-system-x86).
	QEMU = "qemu-system-x86_64"
	// DefaultMemoryMiB is the guest memory: 10,000 peers on two backends
	// plus an uncompressed initramfs fit comfortably.
	DefaultMemoryMiB = 2048
	// DefaultCPUs is the number of guest CPUs (multi-threaded TCG runs
	// each on a host thread).
	DefaultCPUs = 2
	// GuestTag is the build tag of the in-VM test package.
	GuestTag = "sluicevm"
	// GuestPackage is the import path suffix of the in-VM tests.
	GuestPackage = "./vmtest/guest"
	// SluicePath is where the initramfs carries the static sluice binary.
	SluicePath = "/bin/sluice"
	// ModulesDir is where the initramfs carries the modules, in load order
	// (file names start with their position).
	ModulesDir = "/modules"
	// ExitMarker starts the line the guest prints after its tests, followed
	// by the test binary's exit code.
	ExitMarker = "SLUICE-VM-EXIT"
	// BootFailMarker starts the line the guest prints when it could not
	// prepare the system (mounts, modules) and ran no test.
	BootFailMarker = "SLUICE-VM-BOOT-FAILED"
)

// Modules are the modules the in-VM tests need, loaded by name with their
// dependencies: WireGuard, TUN (embedded backend), veth, and the nftables
// stack sluice's table uses (conntrack, NAT, reject, fib, limit, sets, the
// conntrack netlink interface for flushing flows). The guest has no
// modprobe to follow aliases, so crc32c_generic (what libcrc32c's
// "softdep=pre: crc32c" names by alias, for nf_conntrack and nf_nat) is
// listed first, by its module name.
var Modules = []string{
	"crc32c_generic", "wireguard", "tun", "veth",
	"nf_tables", "nfnetlink", "nf_conntrack", "nf_nat", "nf_conntrack_netlink",
	"nft_ct", "nft_nat", "nft_chain_nat", "nft_masq", "nft_redir", "nft_reject",
	"nft_reject_inet", "nft_reject_ipv4", "nft_reject_ipv6", "nft_fib", "nft_fib_inet",
	"nft_fib_ipv4", "nft_fib_ipv6", "nft_limit", "nft_quota", "nft_hash",
	"nft_numgen", "nft_objref", "nft_connlimit", "nft_log", "nft_socket",
}

// KernelDir returns the kernel cache directory: $SLUICE_VM_KERNEL_DIR or
// DefaultKernelDir.
func KernelDir() string {
	if d := os.Getenv(EnvKernelDir); d != "" {
		return d
	}
	return DefaultKernelDir
}

// RepoRoot walks up from dir to the directory holding go.mod.
func RepoRoot(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", os.ErrNotExist
		}
		d = parent
	}
}

// moduleName normalizes a module or file name: no directory, no .ko
// suffix, dashes as underscores (the kernel treats them alike).
func moduleName(s string) string {
	s = filepath.Base(s)
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}
