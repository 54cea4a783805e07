package e2e

// Helpers of the systemd tier: a Debian root built once with debootstrap and
// cached, an overlay per run so the cache is never written, and a machine
// booted from it with systemd-nspawn, driven with nsenter.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
	"github.com/sluice-vpn/sluice/internal/syncbuf"
)

// The cached Debian root. Changing the suite, the variant or the package
// list changes the cache key, so an old root is never reused for a new list.
const (
	debianSuite    = "bookworm"
	debianVariant  = "minbase"
	debianPackages = "systemd,systemd-sysv,dbus,logrotate,bash-completion"
	// debianMirror is Debian's own mirror; SLUICE_DEBIAN_MIRROR overrides it.
	debianMirror = "http://deb.debian.org/debian"
	// rootCacheDir keeps built roots between runs; SLUICE_TEST_CACHE overrides it.
	rootCacheDir = "/var/cache/sluice-test"
	// rootComplete is written into a root once debootstrap has finished.
	rootComplete = ".sluice-root-complete"

	debootstrapTimeout = 10 * time.Minute // measured: about 40 s here
	bootTimeout        = 2 * time.Minute  // boot to `is-system-running`, about 2 s here
	shutdownTimeout    = 30 * time.Second
	machineCmdTimeout  = 2 * time.Minute // one command in the machine (systemctl waits for its job)
)

// debianRoot returns a minimal Debian root with systemd, built with
// debootstrap from Debian's packages the first time and reused afterwards.
// Concurrent runs serialize on a lock file; an interrupted build leaves only
// a temporary directory that the next build removes.
func debianRoot(t *testing.T) string {
	t.Helper()
	cache := rootCacheDir
	if d := os.Getenv("SLUICE_TEST_CACHE"); d != "" {
		cache = d
	}
	mirror := debianMirror
	if m := os.Getenv("SLUICE_DEBIAN_MIRROR"); m != "" {
		mirror = m
	}
	sum := sha256.Sum256([]byte(debianSuite + " " + debianVariant + " " + debianPackages))
	root := filepath.Join(cache, "debian-"+debianSuite+"-"+hex.EncodeToString(sum[:4]))
	if rootReady(root) {
		return root
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatalf("root cache: %v", err)
	}
	unlock := lockFile(t, filepath.Join(cache, ".debian-root.lock"), debootstrapTimeout)
	defer unlock()
	if rootReady(root) { // built by a concurrent run while we waited
		return root
	}
	tmp := root + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatalf("remove interrupted build: %v", err)
	}
	if err := os.RemoveAll(root); err != nil { // incomplete: no marker
		t.Fatalf("remove incomplete root: %v", err)
	}
	t.Logf("building the Debian %s root with debootstrap (once; cached in %s)", debianSuite, root)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), debootstrapTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant="+debianVariant, "--include="+debianPackages,
		"--components=main", debianSuite, tmp, mirror)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		_ = os.RemoveAll(tmp) // best effort: the next build removes it too
		t.Fatalf("debootstrap %s (%s): %v\n%s", debianSuite, mirror, err, tail(string(out), 30))
	}
	if err := os.WriteFile(filepath.Join(tmp, rootComplete), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrap took %s", time.Since(start).Round(time.Second))
	// Roots of older package lists are never used again.
	old, _ := filepath.Glob(filepath.Join(cache, "debian-"+debianSuite+"-????????"))
	for _, o := range old {
		if o != root {
			t.Logf("removing the outdated root %s", o)
			if err := os.RemoveAll(o); err != nil {
				t.Errorf("remove outdated root: %v", err)
			}
		}
	}
	return root
}

func rootReady(root string) bool {
	for _, f := range []string{rootComplete, "lib/systemd/systemd", "usr/bin/systemctl"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			return false
		}
	}
	return true
}

// lockFile takes an exclusive flock on path, waiting at most wait.
func lockFile(t *testing.T, path string, wait time.Duration) (unlock func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("lock %s: %v", path, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() } // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			t.Fatalf("lock %s: %v", path, err)
		}
		time.Sleep(time.Second)
	}
}

// overlayRoot mounts a writable overlay over the read-only lower root and
// returns its mount point; the cleanup unmounts it (the upper layer lives in
// the test's temporary directory).
func overlayRoot(t *testing.T, lower string) string {
	t.Helper()
	dir := t.TempDir()
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay on %s: %v", merged, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil {
			t.Logf("unmount %s: %v; detaching it", merged, err)
			if err := syscall.Unmount(merged, syscall.MNT_DETACH); err != nil {
				t.Errorf("detach %s: %v", merged, err)
			}
		}
	})
	return merged
}

// machine is a Debian root booted with systemd-nspawn: its own PID, mount,
// network (only lo) and UTS namespaces, systemd as PID 1.
type machine struct {
	t       *testing.T
	name    string
	leader  int // the machine's PID 1, as the host sees it
	cmd     *exec.Cmd
	console *syncbuf.Buffer
	exited  chan struct{}
}

// bootMachine boots root with systemd-nspawn and waits until its systemd
// reports the boot finished. The cleanup powers it off (or kills it) and
// waits for it, whatever the test's outcome.
func bootMachine(t *testing.T, root string) *machine {
	t.Helper()
	start := time.Now()
	m := &machine{t: t, name: netnstest.Unique("slsd-"), console: &syncbuf.Buffer{}, exited: make(chan struct{})}
	m.cmd = exec.Command("systemd-nspawn",
		"--directory="+root, "--machine="+m.name,
		"--boot", "--register=no", "--keep-unit", "--console=read-only",
		"--private-network", "--bind=/dev/net/tun",
		"--capability=CAP_NET_ADMIN,CAP_NET_BIND_SERVICE",
		"--resolv-conf=off", "--timezone=off", "--link-journal=no")
	m.cmd.Stdout, m.cmd.Stderr = m.console, m.console
	// If the test binary dies (a -timeout panic skips cleanups), nspawn
	// powers the machine off.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() {
		_ = m.cmd.Wait() // the exit is reported through m.exited; the console has the reason
		close(m.exited)
	}()
	t.Cleanup(m.shutdown)

	deadline := time.Now().Add(bootTimeout)
	for m.leader == 0 {
		select {
		case <-m.exited:
			t.Fatalf("systemd-nspawn exited during boot:\n%s", tail(m.console.String(), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no PID 1 in machine %s after %s:\n%s", m.name, bootTimeout, tail(m.console.String(), 40))
		}
		m.leader = machineLeader(m.cmd.Process.Pid)
		time.Sleep(100 * time.Millisecond)
	}
	// Until PID 1 has set up its manager, systemctl cannot connect: retry.
	var state string
	for {
		out, _ := m.exec(time.Until(deadline), "systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(out)
		if state == "running" || state == "degraded" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	switch state {
	case "running":
	case "degraded": // a unit of the minimal image failed; sluice's own checks decide
		failed, _ := m.exec(machineCmdTimeout, "systemctl", "--failed", "--no-pager", "--plain")
		t.Logf("machine %s booted degraded:\n%s", m.name, failed)
	default:
		t.Fatalf("machine %s did not finish booting in %s (state %q):\n%s", m.name, bootTimeout, state, tail(m.console.String(), 40))
	}
	t.Logf("machine %s booted in %s", m.name, time.Since(start).Round(100*time.Millisecond))
	return m
}

// machineLeader finds the child of nspawn that is PID 1 of a new PID
// namespace.
func machineLeader(nspawn int) int {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "status"))
		if err != nil {
			continue
		}
		var ppid int
		var nspid []string
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				ppid, _ = strconv.Atoi(strings.TrimSpace(v))
			}
			if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
				nspid = strings.Fields(v)
			}
		}
		if ppid == nspawn && len(nspid) == 2 && nspid[1] == "1" {
			return pid
		}
	}
	return 0
}

// exec runs a command of the machine (its root, namespaces and PATH) and
// returns its combined output.
func (m *machine) exec(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", strconv.Itoa(m.leader),
		"--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// run is exec that fails the test on error.
func (m *machine) run(args ...string) string {
	m.t.Helper()
	out, err := m.exec(machineCmdTimeout, args...)
	if err != nil {
		m.t.Fatalf("in machine %s: %s: %v\n%s%s", m.name, strings.Join(args, " "), err, out, m.diagnostics())
	}
	return out
}

// netExec runs a host tool (ip, nft) in the machine's network namespace only.
func (m *machine) netExec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), machineCmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--target", strconv.Itoa(m.leader), "--net", "--"}, args...)...).CombinedOutput()
	return string(out), err
}

// diagnostics is what a failure report needs: the unit's state and journal.
func (m *machine) diagnostics() string {
	status, _ := m.exec(30*time.Second, "systemctl", "status", "--no-pager", "--lines=0", "sluice.service")
	journal, _ := m.exec(30*time.Second, "journalctl", "--no-pager", "--unit=sluice.service", "--lines=40", "--output=short")
	return "\n--- systemctl status sluice\n" + status + "--- journalctl -u sluice\n" + journal
}

// shutdown powers the machine off (nspawn turns SIGTERM into a clean
// poweroff of the machine) and, if that does not finish in time, kills its
// PID 1 (which ends every process of its PID namespace) and nspawn.
func (m *machine) shutdown() {
	if m.cmd.Process == nil {
		return
	}
	select {
	case <-m.exited:
		return
	default:
	}
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		m.t.Logf("stop machine %s: %v", m.name, err)
	}
	select {
	case <-m.exited:
		return
	case <-time.After(shutdownTimeout):
	}
	m.t.Errorf("machine %s did not power off in %s: killing it\n%s", m.name, shutdownTimeout, tail(m.console.String(), 20))
	if m.leader != 0 {
		_ = syscall.Kill(m.leader, syscall.SIGKILL) // it may be gone already
	}
	_ = m.cmd.Process.Kill() // it may be gone already
	select {
	case <-m.exited:
	case <-time.After(shutdownTimeout):
		m.t.Errorf("systemd-nspawn of machine %s (pid %d) did not exit after SIGKILL", m.name, m.cmd.Process.Pid)
	}
}

// makeInstall runs `make install` of this repository into destdir, with
// the binary built at bin, and returns its output.
func makeInstall(t *testing.T, destdir, bin string) string {
	t.Helper()
	return makeInstallArgs(t, destdir, bin)
}

// makeInstallArgs is makeInstall with more make variables (PREFIX=...).
func makeInstallArgs(t *testing.T, destdir, bin string, vars ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := append([]string{"--no-print-directory", "install", "DESTDIR=" + destdir, "BIN=" + bin}, vars...)
	cmd := exec.CommandContext(ctx, "make", args...)
	cmd.Dir = ".." // the module root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make install DESTDIR=%s: %v\n%s", destdir, err, out)
	}
	return string(out)
}

// fileMode returns the permission bits of path, failing the test when it is missing.
func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(fmt.Errorf("installed file: %w", err))
	}
	return st.Mode().Perm()
}
