package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// tierTimeout bounds the whole VM run (boot, every in-VM test, power off).
// It is generous for a shared 2-core machine under software emulation; a
// quiet one needs about a third of it.
const tierTimeout = 8 * time.Minute

// TestKernelTier boots Debian's kernel under qemu (TCG) with sluice and the
// tests of vmtest/guest in the initramfs and reports each in-VM test as a
// subtest: sluice on the kernel WireGuard backend, live peers, a real
// kernel client's handshake, pings and DNS through the tunnel, off-policy
// DNS redirected and rejected, SIGTERM and SIGKILL. The kernel comes from
// the cache `make vm-deps` fills.
func TestKernelTier(t *testing.T) {
	netnstest.RequirePrivileged(t, QEMU, "go")
	if testing.Short() {
		t.Skip("boots a VM for minutes: not in -short")
	}
	k, err := FindKernel(KernelDir())
	if err != nil {
		t.Fatal(err)
	}
	root, err := RepoRoot(".")
	if err != nil {
		t.Fatalf("find the module root: %v", err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), tierTimeout)
	defer cancel()

	start := time.Now()
	bins, err := Build(ctx, root, dir)
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := WriteInitramfs(initrd, k, bins, Modules); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(initrd)
	t.Logf("built sluice, the guest tests and a %d MiB initramfs for %s in %s", st.Size()>>20, k.Release, time.Since(start).Round(time.Millisecond))

	remaining := time.Until(deadlineOf(ctx))
	console, took, runErr := Run(ctx, Spec{
		Kernel:    k,
		Initramfs: initrd,
		Console:   filepath.Join(dir, "console.log"),
		Args:      []string{"-test.v", "-test.run=^TestKernel", "-test.timeout=" + (remaining - 30*time.Second).Round(time.Second).String()},
		Timeout:   remaining,
	})
	t.Logf("VM ran %s (kernel %s, qemu -accel tcg, %d MiB, %d CPUs)", took.Round(time.Second), k.Release, DefaultMemoryMiB, DefaultCPUs)
	results := ParseResults(console)
	for _, r := range results {
		if strings.Contains(r.Name, "/") {
			continue // subtests are reported inside their parent's output
		}
		t.Run(r.Name, func(t *testing.T) {
			switch r.Status {
			case "PASS":
				t.Logf("passed inside the VM in %s", r.Took)
			case "SKIP":
				t.Errorf("skipped inside the VM (not allowed):\n%s", r.Output)
			default:
				t.Errorf("failed inside the VM:\n%s", r.Output)
			}
		})
	}
	if runErr != nil {
		t.Fatalf("%v\nconsole tail:\n%s", runErr, tail(console, 60))
	}
	if len(results) == 0 {
		t.Fatalf("no test results on the console:\n%s", tail(console, 60))
	}
	if code, _ := ExitCode(console); code != 0 {
		t.Fatalf("guest test binary exited %d\nconsole tail:\n%s", code, tail(console, 40))
	}
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
