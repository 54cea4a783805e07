// Package netnstest creates throwaway network namespaces, veth pairs and
// processes for sluice's privileged tests, and removes them in t.Cleanup even
// when the test fails. Names are unique per run so that two runs never collide.
//
// Privileged tests call RequirePrivileged first. It skips when the test does
// not run as root, unless SLUICE_REQUIRE_PRIVILEGED=1 is set (make test sets
// it when run as root): then a missing privilege is a failure, so a privileged
// test can never silently not run in CI.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/nsexec"

	"github.com/vishvananda/netns"
)

// EnvRequire is the environment variable that turns privilege skips into failures.
const EnvRequire = "SLUICE_REQUIRE_PRIVILEGED"

// RequirePrivileged skips t unless it runs as root with the tools a kernel
// test needs; with SLUICE_REQUIRE_PRIVILEGED=1 it fails instead of skipping.
func RequirePrivileged(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("privileged test needs %s", strings.Join(missing, ", "))
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%s (%s=1: skipping is not allowed)", msg, EnvRequire)
	}
	t.Skip(msg)
}

// Unique returns prefix followed by random hex, at most 15 bytes long so that
// it is a valid interface name.
func Unique(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	s := prefix + hex.EncodeToString(b[:])
	if len(s) > 15 {
		s = s[len(s)-15:]
	}
	return s
}

// NS is a named network namespace that lives until the test's cleanup.
type NS struct {
	Name string
	t    testing.TB
}

// New creates a namespace named after prefix plus random hex, with loopback
// up. Cleanup kills every process left in it and deletes it.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	ns := &NS{Name: Unique("sl" + prefix), t: t}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		t.Fatalf("create netns %s: %v: %s", ns.Name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "pids", ns.Name).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				_ = exec.Command("kill", "-9", pid).Run() // best effort: the namespace is deleted next
			}
		}
		if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", ns.Name, err, out)
		}
	})
	ns.Run("ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and fails the test on error. It
// returns combined output.
func (n *NS) Run(args ...string) string {
	n.t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		n.t.Fatalf("in netns %s: %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Exec runs a command inside the namespace (bounded to one minute) and
// returns its combined output and error.
func (n *NS) Exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Command returns a command that runs inside the namespace; the caller starts it.
func (n *NS) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Start starts a long-running command inside the namespace. Cleanup kills it
// and waits for it.
func (n *NS) Start(args ...string) *exec.Cmd {
	n.t.Helper()
	cmd := n.Command(context.Background(), args...)
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("in netns %s: start %s: %v", n.Name, strings.Join(args, " "), err)
	}
	n.t.Cleanup(func() {
		_ = cmd.Process.Kill() // it may have exited already
		_ = cmd.Wait()
	})
	return cmd
}

// Handle opens the namespace; the caller closes it. Use it with
// nftables.WithNetNSFd(int(h)) or netlink.NewHandleAt(h).
func (n *NS) Handle() netns.NsHandle {
	n.t.Helper()
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		n.t.Fatalf("open netns %s: %v", n.Name, err)
	}
	return h
}

// Do runs fn on an OS thread switched into the namespace, and switches the
// thread back afterwards. Sockets and
// netlink handles fn creates belong to the namespace; goroutines fn starts do
// not (they run on other threads), but sockets they use keep their namespace.
func (n *NS) Do(fn func() error) error { return nsexec.InNamed(n.Name, fn) }

// Veth connects namespace a (interface aName) to namespace b (bName) with a
// veth pair, both ends up. Deleting either namespace removes the pair.
func Veth(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	tmpA, tmpB := Unique("va"), Unique("vb")
	steps := [][]string{
		{"ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB},
		{"ip", "link", "set", tmpA, "netns", a.Name},
		{"ip", "link", "set", tmpB, "netns", b.Name},
		{"ip", "-n", a.Name, "link", "set", tmpA, "name", aName},
		{"ip", "-n", b.Name, "link", "set", tmpB, "name", bName},
		{"ip", "-n", a.Name, "link", "set", aName, "up"},
		{"ip", "-n", b.Name, "link", "set", bName, "up"},
	}
	for i, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			if i < 3 {
				_ = exec.Command("ip", "link", "del", tmpA).Run() // may already be in a namespace
			}
			t.Fatalf("veth %s/%s <-> %s/%s: %s: %v: %s", a.Name, aName, b.Name, bName, strings.Join(s, " "), err, out)
		}
	}
}
