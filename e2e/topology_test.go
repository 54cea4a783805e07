package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
	"github.com/sluice-vpn/sluice/internal/syncbuf"
)

// The test network of DESIGN.md. Everything lives in namespaces the test
// creates; only documentation and private ranges are used.
const (
	gwUnderlay  = "192.0.2.1"
	gwTunnel4   = "10.20.0.1"
	gwTunnel6   = "fd20::1"
	resolver4   = "10.20.0.53"
	resolver6   = "fd20::53"
	corpDNS1    = "10.30.0.53"
	corpDNS2    = "10.30.0.54"
	corpGW      = "10.30.0.1"
	corpAnswer4 = "10.30.1.10"
	corpAnswer6 = "fd30::10"
	publicDNS4  = "198.51.100.53"
	publicDNS6  = "2001:db8:53::53"
	trapAnswer  = "198.51.100.66" // the public view of git.corp.example
	dohIP4      = "203.0.113.10"
	dohIP6      = "2001:db8:443::10"
	dotIP4      = "203.0.113.11"
	dotIP6      = "2001:db8:853::11"
	httpIP4     = "203.0.113.20"
	httpIP6     = "2001:db8:80::20"
	internalFQ  = "git.corp.example"
	publicFQ    = "www.example.net"
	wgPort      = "51820"

	// gwInetIf is the gateway's internet-facing interface; inetGwIf is its
	// peer in the internet namespace.
	gwInetIf = "inet0"
	inetGwIf = "gw0"

	// counterTable is the test-owned nftables table in the internet
	// namespace that counts what arrives from the gateway.
	counterTable = "sle2e"
)

// topology is the four-namespace test network with its resolvers and
// internet servers running. Client namespaces are added with newClientNS.
type topology struct {
	t    *testing.T
	dir  string
	gw   *netnstest.NS
	corp *netnstest.NS
	inet *netnstest.NS

	corpDNS   []*unbound
	publicDNS *unbound

	mu      sync.Mutex // protects clients
	clients int
}

// newTopology builds the gateway, corp and internet namespaces, starts two
// corp unbounds, the public unbound and the internet servers, and installs
// the counting table on the internet side of the gateway's egress link.
func newTopology(t *testing.T) *topology {
	t.Helper()
	netnstest.RequirePrivileged(t, "wg", "wg-quick", "wireguard-go", "unbound", "unbound-checkconf", "dig", "kdig", "curl", "nft", "ping", "sysctl")
	tp := &topology{t: t, dir: t.TempDir()}
	tp.gw = netnstest.New(t, "gw")
	tp.corp = netnstest.New(t, "co")
	tp.inet = netnstest.New(t, "in")
	for _, ns := range []*netnstest.NS{tp.gw, tp.corp, tp.inet} {
		noDAD(ns)
	}
	// No forwarding sysctl here: sluice must turn it on itself when peers
	// route through the gateway (TestTopology's throwaway gateway sets it).

	// Underlay: a bridge so that several clients share 192.0.2.0/24.
	ipn(t, tp.gw, "link", "add", "ulbr", "type", "bridge")
	ipn(t, tp.gw, "addr", "add", gwUnderlay+"/24", "dev", "ulbr")
	ipn(t, tp.gw, "link", "set", "ulbr", "up")

	// Corp: 10.30.0.0/16 with both internal resolvers on it.
	netnstest.Veth(t, tp.gw, "corp0", tp.corp, "gw0")
	ipn(t, tp.gw, "addr", "add", corpGW+"/16", "dev", "corp0")
	ipn(t, tp.gw, "addr", "add", "fd30::1/64", "dev", "corp0", "nodad")
	for _, a := range []string{"10.30.0.2/16", corpDNS1 + "/16", corpDNS2 + "/16"} {
		ipn(t, tp.corp, "addr", "add", a, "dev", "gw0")
	}
	ipn(t, tp.corp, "addr", "add", "fd30::2/64", "dev", "gw0", "nodad")
	ipn(t, tp.corp, "route", "add", "10.20.0.0/24", "via", corpGW)
	ipn(t, tp.corp, "-6", "route", "add", "fd20::/64", "via", "fd30::1")

	// Internet: the gateway's default routes point there. The internet has
	// no route back to the tunnel prefixes: full-tunnel traffic only comes
	// back if the gateway masquerades it.
	netnstest.Veth(t, tp.gw, gwInetIf, tp.inet, inetGwIf)
	ipn(t, tp.gw, "addr", "add", "203.0.113.1/24", "dev", gwInetIf)
	ipn(t, tp.gw, "addr", "add", "2001:db8:1::1/64", "dev", gwInetIf, "nodad")
	ipn(t, tp.gw, "route", "add", "default", "via", "203.0.113.2")
	ipn(t, tp.gw, "-6", "route", "add", "default", "via", "2001:db8:1::2")
	ipn(t, tp.inet, "addr", "add", "203.0.113.2/24", "dev", inetGwIf)
	ipn(t, tp.inet, "addr", "add", "2001:db8:1::2/64", "dev", inetGwIf, "nodad")
	// Service addresses on lo (this kernel has no dummy driver).
	for _, a := range []string{publicDNS4, dohIP4, dotIP4, httpIP4} {
		ipn(t, tp.inet, "addr", "add", a+"/32", "dev", "lo")
	}
	for _, a := range []string{publicDNS6, dohIP6, dotIP6, httpIP6} {
		ipn(t, tp.inet, "addr", "add", a+"/128", "dev", "lo", "nodad")
	}
	tp.installCounters()

	// Resolvers. The static root zone keeps unbound from ever iterating:
	// a name it does not hold is answered NXDOMAIN at once.
	tp.corpDNS = []*unbound{
		tp.startUnbound(tp.corp, "corp1", []string{corpDNS1}, corpRecords, true, nil),
		tp.startUnbound(tp.corp, "corp2", []string{corpDNS2}, corpRecords, true, nil),
	}
	tp.publicDNS = tp.startUnbound(tp.inet, "public", []string{publicDNS4, publicDNS6}, publicRecords, true, nil)
	startInternetServers(t, tp.inet)
	return tp
}

// corpRecords is the internal view of corp.example.
var corpRecords = []string{
	`local-zone: "corp.example." static`,
	`local-data: "corp.example. 60 IN SOA ns.corp.example. hostmaster.corp.example. 1 3600 600 86400 60"`,
	`local-data: "git.corp.example. 60 IN A ` + corpAnswer4 + `"`,
	`local-data: "git.corp.example. 60 IN AAAA ` + corpAnswer6 + `"`,
	`local-data: "wiki.corp.example. 60 IN A 10.30.1.11"`,
	// What the corp resolvers forward for the internet in full mode (here:
	// static), for egress_test.go.
	`local-zone: "example.com." static`,
	`local-data: "www.example.com. 60 IN A ` + httpIP4 + `"`,
	`local-data: "www.example.com. 60 IN AAAA ` + httpIP6 + `"`,
}

// publicRecords is the public internet: it answers corp.example
// differently (the split-horizon trap) and holds www.example.net.
var publicRecords = []string{
	`local-zone: "corp.example." static`,
	`local-data: "git.corp.example. 60 IN A ` + trapAnswer + `"`,
	`local-data: "wiki.corp.example. 60 IN A ` + trapAnswer + `"`,
	`local-zone: "example.net." static`,
	`local-data: "www.example.net. 60 IN A ` + httpIP4 + `"`,
	`local-data: "www.example.net. 60 IN AAAA ` + httpIP6 + `"`,
}

// ipn runs `ip -n NS args...` and fails the test on error.
func ipn(t testing.TB, ns *netnstest.NS, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns.Name, strings.Join(args, " "), err, out)
	}
}

// noDAD turns duplicate address detection off in ns so that IPv6 addresses
// are usable at once.
func noDAD(ns *netnstest.NS) {
	ns.Run("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
}

// installCounters adds the test-owned counting table in the internet
// namespace: every packet that arrives from the gateway for port 53 or 853
// or for the DoH server's port 443 is counted, both families.
func (tp *topology) installCounters() {
	rules := fmt.Sprintf(`table inet %[1]s {
	counter port53 { }
	counter port853 { }
	counter doh443 { }
	chain pre {
		type filter hook prerouting priority -400; policy accept;
		iifname "%[2]s" meta l4proto { tcp, udp } th dport 53 counter name "port53"
		iifname "%[2]s" meta l4proto { tcp, udp } th dport 853 counter name "port853"
		iifname "%[2]s" ip daddr %[3]s meta l4proto { tcp, udp } th dport 443 counter name "doh443"
		iifname "%[2]s" ip6 daddr %[4]s meta l4proto { tcp, udp } th dport 443 counter name "doh443"
	}
}
`, counterTable, inetGwIf, dohIP4, dohIP6)
	path := filepath.Join(tp.dir, "counters.nft")
	if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
		tp.t.Fatalf("write %s: %v", path, err)
	}
	tp.inet.Run("nft", "-f", path)
}

var counterRE = regexp.MustCompile(`counter (\w+) \{\s*packets (\d+) bytes \d+`)

// counters reads the packet counts of the counting table.
func (tp *topology) counters(t testing.TB) map[string]int {
	t.Helper()
	out := tp.inet.Run("nft", "list", "counters", "table", "inet", counterTable)
	m := map[string]int{}
	for _, sm := range counterRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(sm[2]) // the regexp guarantees digits
		m[sm[1]] = n
	}
	if len(m) != 3 {
		t.Fatalf("parse counters of table %s: %q", counterTable, out)
	}
	return m
}

// newClientNS adds a client namespace on the underlay bridge with the next
// free 192.0.2.x address and a private resolv.conf (ip netns exec mounts
// /etc/netns/NAME/resolv.conf over /etc/resolv.conf).
func (tp *topology) newClientNS(prefix string) *netnstest.NS {
	tp.t.Helper()
	tp.mu.Lock()
	tp.clients++
	n := tp.clients
	tp.mu.Unlock()
	ns := netnstest.New(tp.t, prefix)
	etc := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		tp.t.Fatalf("create %s: %v", etc, err)
	}
	tp.t.Cleanup(func() {
		if err := os.RemoveAll(etc); err != nil {
			tp.t.Errorf("remove %s: %v", etc, err)
		}
		// /etc/netns itself goes too once no namespace uses it.
		if err := os.Remove("/etc/netns"); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			tp.t.Errorf("remove /etc/netns: %v", err)
		}
	})
	// No nameserver: until wg-quick applies DNS=, nothing resolves.
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("# sluice e2e: no resolver until wg-quick sets one\n"), 0o644); err != nil {
		tp.t.Fatalf("write resolv.conf: %v", err)
	}
	noDAD(ns)
	port := fmt.Sprintf("ulc%d", n)
	netnstest.Veth(tp.t, ns, "ul0", tp.gw, port)
	ipn(tp.t, tp.gw, "link", "set", port, "master", "ulbr")
	ipn(tp.t, ns, "addr", "add", fmt.Sprintf("192.0.2.%d/24", 1+n), "dev", "ul0")
	return ns
}

// resolvConf returns the resolv.conf that the client namespace sees.
func resolvConf(t testing.TB, ns *netnstest.NS) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/etc/netns", ns.Name, "resolv.conf"))
	if err != nil {
		t.Fatalf("read resolv.conf of %s: %v", ns.Name, err)
	}
	return string(b)
}

// wgClient is a wg-quick interface in a client namespace.
type wgClient struct {
	ns     *netnstest.NS
	ifname string
	conf   string
}

// wgQuickUp writes conf to <ifname>.conf and runs wg-quick up on it in ns
// with Debian's wireguard-go (which daemonizes). A resolvconf shim that only
// writes the namespace's own resolv.conf keeps wg-quick away from the host's
// resolver configuration. Cleanup runs wg-quick down.
func (tp *topology) wgQuickUp(t testing.TB, ns *netnstest.NS, conf string) *wgClient {
	t.Helper()
	c := &wgClient{ns: ns, ifname: netnstest.Unique("wgc")}
	c.conf = filepath.Join(tp.dir, c.ifname+".conf")
	if err := os.WriteFile(c.conf, []byte(conf), 0o600); err != nil {
		t.Fatalf("write %s: %v", c.conf, err)
	}
	env := wgQuickEnv(tp.t, tp.dir, ns)
	tp.t.Cleanup(func() {
		if out, err := runEnv(env, 30*time.Second, "ip", "netns", "exec", ns.Name, "wg-quick", "down", c.conf); err != nil &&
			!strings.Contains(out, "is not a WireGuard interface") {
			tp.t.Logf("wg-quick down %s: %v: %s", c.ifname, err, out)
		}
		removeStaleSocket(tp.t, c.ifname)
	})
	out, err := runEnv(env, 30*time.Second, "ip", "netns", "exec", ns.Name, "wg-quick", "up", c.conf)
	if err != nil {
		t.Fatalf("wg-quick up %s in %s: %v\n%s\nconfig:\n%s", c.ifname, ns.Name, err, out, redactKey(conf))
	}
	t.Logf("wg-quick up %s in %s:\n%s", c.ifname, ns.Name, out)
	return c
}

// down runs wg-quick down now (cleanup then finds nothing to do).
func (c *wgClient) down(t testing.TB, dir string) {
	t.Helper()
	out, err := runEnv(wgQuickEnv(t, dir, c.ns), 30*time.Second, "ip", "netns", "exec", c.ns.Name, "wg-quick", "down", c.conf)
	if err != nil {
		t.Fatalf("wg-quick down %s: %v: %s", c.ifname, err, out)
	}
}

// latestHandshake is the newest handshake time of the client's interface.
func (c *wgClient) latestHandshake(t testing.TB) time.Time {
	t.Helper()
	out, err := c.ns.Exec("wg", "show", c.ifname, "latest-handshakes")
	if err != nil {
		t.Fatalf("wg show %s latest-handshakes: %v: %s", c.ifname, err, out)
	}
	var newest int64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.ParseInt(f[1], 10, 64); err == nil && n > newest {
			newest = n
		}
	}
	if newest == 0 {
		return time.Time{}
	}
	return time.Unix(newest, 0)
}

// wgQuickEnv is the environment for wg-quick: userspace wireguard-go that
// daemonizes (no WG_PROCESS_FOREGROUND, no LOG_LEVEL so that its stdio goes
// to /dev/null) and the resolvconf shim first in PATH.
func wgQuickEnv(t testing.TB, dir string, ns *netnstest.NS) []string {
	t.Helper()
	shimDir := filepath.Join(dir, "shim-"+ns.Name)
	if err := os.MkdirAll(shimDir, 0o755); err != nil {
		t.Fatalf("create %s: %v", shimDir, err)
	}
	// The shim writes the namespace's file by its host path, so it cannot
	// reach the host's /etc/resolv.conf even if the bind mount were missing.
	target := filepath.Join("/etc/netns", ns.Name, "resolv.conf")
	shim := fmt.Sprintf(`#!/bin/sh
# sluice e2e resolvconf shim: never touches the host's resolver configuration.
case "$1" in
-a) cat > %[1]q ;;
-d) echo "# sluice e2e: $2 down" > %[1]q ;;
esac
exit 0
`, target)
	if err := os.WriteFile(filepath.Join(shimDir, "resolvconf"), []byte(shim), 0o755); err != nil {
		t.Fatalf("write resolvconf shim: %v", err)
	}
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "WG_PROCESS_FOREGROUND", "LOG_LEVEL", "WG_QUICK_USERSPACE_IMPLEMENTATION", "PATH":
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go",
		"PATH="+shimDir+":"+os.Getenv("PATH"))
}

// removeStaleSocket deletes wireguard-go's UAPI socket of ifname if its
// process was killed before it could remove it itself.
func removeStaleSocket(t testing.TB, ifname string) {
	p := filepath.Join("/var/run/wireguard", ifname+".sock")
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove %s: %v", p, err)
	}
}

// privateKeyRE matches the PrivateKey line of a wg-quick config.
var privateKeyRE = regexp.MustCompile(`(?m)^(\s*PrivateKey\s*=\s*).*$`)

// secretRE matches the lines redactKey hides.
var secretRE = regexp.MustCompile(`(?m)^(\s*(?:PrivateKey|PresharedKey)\s*=\s*).*$`)

// redactKey hides the private and preshared keys of a wg-quick config for logs.
func redactKey(conf string) string {
	return secretRE.ReplaceAllString(conf, "${1}(redacted)")
}

// runEnv runs a command with env and a timeout, returning combined output.
// Output goes to a buffer through a pipe that only the direct child holds:
// daemons it starts must not inherit it (wireguard-go reopens /dev/null).
func runEnv(env []string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	f, err := os.CreateTemp("", "sluice-e2e-out-*")
	if err != nil {
		return "", fmt.Errorf("create output file: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	out, err := os.ReadFile(f.Name())
	if err != nil {
		return "", fmt.Errorf("read output of %s: %w", args[0], err)
	}
	return string(out), runErr
}

// proc is a long-running program in a namespace with its output in a file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	out     *syncbuf.Buffer
	done    chan struct{}
	err     error // set before done is closed
}

// startProc starts args in ns with output to <dir>/<name>.out (and kept in
// memory). Cleanup stops it with SIGTERM, then SIGKILL, and on failure logs
// the tail of its output.
func startProc(t testing.TB, ns *netnstest.NS, dir, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, logPath: filepath.Join(dir, name+".out"), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	f, err := os.Create(p.logPath)
	if err != nil {
		t.Fatalf("create %s: %v", p.logPath, err)
	}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	p.cmd.Env = env
	w := &teeWriter{a: f, b: p.out}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s in %s: %v", name, ns.Name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.stop(5 * time.Second); err != nil {
			t.Logf("stop %s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("output of %s (tail):\n%s", name, tail(p.out.String(), 40))
		}
	})
	return p
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to timeout, then kills. It returns the
// process's exit error (nil for a clean exit), or a timeout error.
func (p *proc) stop(timeout time.Duration) error {
	if p.exited() {
		return p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // it may exit between the check and the signal
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill() // as above
		<-p.done
		return fmt.Errorf("%s did not exit within %v of SIGTERM; killed", p.name, timeout)
	}
}

// teeWriter writes to a file and a buffer.
type teeWriter struct {
	a *os.File
	b *syncbuf.Buffer
}

func (w *teeWriter) Write(p []byte) (int, error) {
	_, _ = w.b.Write(p) // never fails
	return w.a.Write(p)
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// waitFor polls cond every interval until it holds or timeout passes; it
// returns the last detail cond gave and whether it held.
func waitFor(timeout, interval time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok || time.Now().After(deadline) {
			return ok, detail
		}
		time.Sleep(interval)
	}
}

// unbound is one unbound process in a namespace.
type unbound struct {
	name    string
	p       *proc
	logFile string
}

// startUnbound writes an unbound configuration for addrs with records (and
// forward zones, each "name addr..."), checks it with unbound-checkconf,
// runs unbound in the foreground in ns and waits until it answers.
func (tp *topology) startUnbound(ns *netnstest.NS, name string, addrs, records []string, staticRoot bool, forwards [][]string) *unbound {
	tp.t.Helper()
	dir := filepath.Join(tp.dir, "unbound-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tp.t.Fatalf("create %s: %v", dir, err)
	}
	u := &unbound{name: name, logFile: filepath.Join(dir, "unbound.log")}
	var b strings.Builder
	fmt.Fprintf(&b, "server:\n")
	for _, l := range []string{
		"verbosity: 1", "num-threads: 1", "port: 53",
		fmt.Sprintf("directory: %q", dir), `chroot: ""`, `username: ""`,
		fmt.Sprintf("pidfile: %q", filepath.Join(dir, "unbound.pid")),
		"use-syslog: no", fmt.Sprintf("logfile: %q", u.logFile), "log-queries: yes",
		"access-control: 0.0.0.0/0 allow", "access-control: ::/0 allow",
		"do-not-query-localhost: no", `module-config: "iterator"`,
		"do-ip4: yes", "do-ip6: yes", "interface-automatic: no",
	} {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	for _, a := range addrs {
		fmt.Fprintf(&b, "  interface: %s\n", a)
	}
	if staticRoot {
		fmt.Fprintf(&b, "  local-zone: \".\" static\n")
		fmt.Fprintf(&b, "  local-data: \". 60 IN SOA root.test. hostmaster.test. 1 3600 600 86400 60\"\n")
		fmt.Fprintf(&b, "  local-data: \". 60 IN NS root.test.\"\n")
	}
	for _, r := range records {
		fmt.Fprintf(&b, "  %s\n", r)
	}
	fmt.Fprintf(&b, "remote-control:\n  control-enable: no\n")
	for _, fz := range forwards {
		fmt.Fprintf(&b, "forward-zone:\n  name: %q\n", fz[0])
		for _, a := range fz[1:] {
			fmt.Fprintf(&b, "  forward-addr: %s\n", a)
		}
	}
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		tp.t.Fatalf("write %s: %v", conf, err)
	}
	if out, err := exec.Command("unbound-checkconf", conf).CombinedOutput(); err != nil {
		tp.t.Fatalf("unbound-checkconf %s: %v: %s\n%s", conf, err, out, b.String())
	}
	u.p = startProc(tp.t, ns, dir, "unbound-"+name, os.Environ(), "unbound", "-d", "-c", conf)
	probe := "."
	ok, detail := waitFor(10*time.Second, 100*time.Millisecond, func() (bool, string) {
		if u.p.exited() {
			return false, "unbound exited: " + u.p.out.String()
		}
		out, _ := ns.Exec("dig", "+tries=1", "+time=1", "@"+addrs[0], probe, "SOA")
		return strings.Contains(out, "status: NOERROR"), out
	})
	if !ok {
		tp.t.Fatalf("unbound %s not answering on %s: %s\nlog:\n%s", name, addrs[0], detail, readFile(u.logFile))
	}
	return u
}

// stop stops the unbound and waits for it.
func (u *unbound) stop(t testing.TB) {
	t.Helper()
	if err := u.p.stop(5 * time.Second); err != nil {
		t.Logf("unbound %s exit: %v", u.name, err)
	}
}

// log returns unbound's log file (queries included).
func (u *unbound) log() string { return readFile(u.logFile) }

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	return string(b)
}
