package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/syncbuf"

	"github.com/miekg/dns"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// envRunMain makes the test binary behave as the sluice command, so the
// daemon tests run the real CLI (with -race) inside a namespace without a
// separate build.
const envRunMain = "SLUICE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// upDaemon is a `sluice up` running in a namespace.
type upDaemon struct {
	t      *testing.T
	ns     *netnstest.NS
	cfg    string
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	done   chan error
}

// sluiceCmd returns the CLI (this test binary) run inside ns.
func sluiceCmd(ns *netnstest.NS, args ...string) *exec.Cmd {
	cmd := ns.Command(context.Background(), append([]string{os.Args[0]}, args...)...)
	cmd.Env = append(os.Environ(), envRunMain+"=1")
	return cmd
}

// startDaemon runs `sluice up -c cfg` and waits for systemd's READY=1 on a
// notify socket of the test's own.
func startDaemon(t *testing.T, ns *netnstest.NS, cfg string) *upDaemon {
	t.Helper()
	return startUp(t, ns, cfg, sluiceCmd(ns, "up", "-c", cfg))
}

// startUp starts cmd (a `sluice up`) and waits for READY=1. With cfg "" the
// daemon runs on embedded defaults and cli enters its namespaces.
func startUp(t *testing.T, ns *netnstest.NS, cfg string, cmd *exec.Cmd) *upDaemon {
	t.Helper()
	d, ready := launchUp(t, ns, cfg, cmd)
	d.waitReady(ready)
	return d
}

// waitReady waits for READY=1 on ready.
func (d *upDaemon) waitReady(ready <-chan string) {
	d.t.Helper()
	select {
	case <-ready:
	case err := <-d.done:
		d.done <- err // for Cleanup
		d.t.Fatalf("sluice up exited before READY=1: %v\n%s", err, d.stderr)
	case <-time.After(20 * time.Second):
		d.t.Fatalf("no READY=1 within 20s\n%s", d.stderr)
	}
}

// launchUp starts cmd (a `sluice up`) with a notify socket of the test's
// own; READY=1 arrives on the channel.
func launchUp(t *testing.T, ns *netnstest.NS, cfg string, cmd *exec.Cmd) (*upDaemon, <-chan string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	nconn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nconn.Close() })
	d := &upDaemon{t: t, ns: ns, cfg: cfg, stderr: &syncbuf.Buffer{}, done: make(chan error, 1)}
	d.cmd = cmd
	d.cmd.Env = append(d.cmd.Env, "NOTIFY_SOCKET="+sock)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill() // already gone after stop()
		<-d.done
		if t.Failed() {
			t.Logf("sluice up stderr:\n%s", d.stderr)
		}
	})
	ready := make(chan string, 1)
	go func() {
		// Reads until the socket closes, like systemd: a full socket would
		// block the daemon's next notification (each reload sends two).
		buf := make([]byte, 512)
		sent := false
		for {
			n, err := nconn.Read(buf)
			if err != nil {
				return
			}
			if msg := string(buf[:n]); !sent && strings.Contains(msg, "READY=1") {
				ready <- msg
				sent = true
			}
		}
	}()
	return d, ready
}

// cli runs a sluice subcommand against the daemon's config.
func (d *upDaemon) cli(args ...string) (string, int) {
	var cmd *exec.Cmd
	if d.cfg == "" {
		// The daemon's mount namespace holds its state and sockets.
		cmd = exec.Command("nsenter", append([]string{"-t", strconv.Itoa(d.cmd.Process.Pid), "-m", "-n", os.Args[0]}, args...)...)
		cmd.Env = append(os.Environ(), envRunMain+"=1")
	} else {
		cmd = sluiceCmd(d.ns, append(args, "-c", d.cfg)...)
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatalf("run sluice %v: %v", args, err)
	}
	return string(out), code
}

func (d *upDaemon) stop() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	select {
	case err := <-d.done:
		d.done <- err // for Cleanup
		if err != nil {
			d.t.Fatalf("sluice up exited with %v\n%s", err, d.stderr)
		}
	case <-time.After(15 * time.Second):
		d.t.Fatalf("sluice up did not stop within 15s")
	}
}

// gatewayNS is a namespace with an internal network (10.30.0.0/16 on a dummy
// link, resolvers 10.30.0.53 answered by a test DNS server) and an
// "internet" link holding the default routes.
func gatewayNS(t *testing.T) (*netnstest.NS, func()) {
	ns := netnstest.New(t, "gw")
	ns.Run("ip", "link", "add", "corp0", "type", "veth", "peer", "name", "corp1")
	ns.Run("ip", "link", "set", "corp1", "up")
	ns.Run("ip", "addr", "add", "10.30.0.53/16", "dev", "corp0")
	ns.Run("ip", "link", "set", "corp0", "up")
	ns.Run("ip", "link", "add", "inet0", "type", "veth", "peer", "name", "inet1")
	ns.Run("ip", "link", "set", "inet1", "up")
	ns.Run("ip", "addr", "add", "203.0.113.1/24", "dev", "inet0")
	ns.Run("ip", "addr", "add", "2001:db8:1::1/64", "dev", "inet0", "nodad")
	ns.Run("ip", "link", "set", "inet0", "up")
	ns.Run("ip", "route", "add", "default", "via", "203.0.113.2")
	ns.Run("ip", "-6", "route", "add", "default", "via", "2001:db8:1::2")
	var srv *dns.Server
	if err := ns.Do(func() error {
		pc, err := net.ListenPacket("udp", "10.30.0.53:53")
		if err != nil {
			return err
		}
		mux := dns.NewServeMux()
		mux.HandleFunc("corp.example.", func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			m.Authoritative = true
			rr, _ := dns.NewRR("corp.example. 60 IN SOA ns.corp.example. admin.corp.example. 1 60 60 60 60")
			if r.Question[0].Qtype == dns.TypeSOA {
				m.Answer = append(m.Answer, rr)
			}
			w.WriteMsg(m)
		})
		srv = &dns.Server{PacketConn: pc, Handler: mux}
		go srv.ActivateAndServe()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := func() { srv.Shutdown() }
	t.Cleanup(stop)
	return ns, stop
}

func daemonConfig(t *testing.T, zoneUpstream string) (path, dir, ifname string) {
	dir = t.TempDir()
	ifname = netnstest.Unique("slt")
	cfg := `interface:
  name: ` + ifname + `
  backend: userspace
  private_key_file: ` + filepath.Join(dir, "gw.key") + `
  addresses: [10.20.0.1/24, fd20::1/64]
  endpoint: 192.0.2.1:51820
dns:
  listen: [10.20.0.53, fd20::53]
  zones:
    - name: corp.example
      upstreams: [` + zoneUpstream + `]
  default:
    upstreams: [203.0.113.53]
  health:
    disabled: true
enforce:
  table: ` + ifname + `
peers:
  state_dir: ` + filepath.Join(dir, "state") + `
admin:
  listen: 127.0.0.1:9153
  control_socket: ` + filepath.Join(dir, "ctl.sock") + `
`
	path = filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, dir, ifname
}

// TestDaemonLifecycle covers READY=1, a second instance refused, reload of a
// bad and a good config (SIGHUP and `sluice reload`), the admin listener,
// and a clean stop that removes interface, table and sockets.
func TestDaemonLifecycle(t *testing.T) {
	netnstest.RequirePrivileged(t, "nft")
	ns, _ := gatewayNS(t)
	cfg, dir, ifname := daemonConfig(t, "10.30.0.53")
	d := startDaemon(t, ns, cfg)

	if fi, err := os.Stat(filepath.Join(dir, "ctl.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v, mode %v; want 0600", err, fi)
	}
	if fi, err := os.Stat(filepath.Join(dir, "gw.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key: %v, mode %v; want 0600", err, fi)
	}
	if strings.Contains(d.stderr.String(), string(mustRead(t, filepath.Join(dir, "gw.key"))[:40])) {
		t.Error("the private key appears in the log")
	}

	// A second instance for the same interface is refused; the first stays.
	out, code := d.cli("up")
	if code == 0 || !strings.Contains(out, "already running") {
		t.Errorf("second up: code %d, output %q", code, out)
	}
	if out, code := d.cli("status"); code != 0 || !strings.Contains(out, "interface: "+ifname) {
		t.Fatalf("status after second up: %d\n%s", code, out)
	}

	// Admin listener.
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": "sluice_firewall_packets_total"} {
		out := ns.Run("curl", "-fsS", "http://127.0.0.1:9153"+path)
		if !strings.Contains(out, want) {
			t.Errorf("GET %s: %q lacks %q", path, out, want)
		}
	}

	// Reload with a bad config: refused with file:line, the daemon keeps going.
	good := mustRead(t, cfg)
	bad := bytes.Replace(good, []byte("  health:\n"), []byte("  healht:\n"), 1)
	if err := os.WriteFile(cfg, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = d.cli("reload")
	if code != 1 || !strings.Contains(out, cfg+":14: ") || !strings.Contains(out, `unknown key "healht"`) {
		t.Errorf("reload of a bad config: code %d, output %q", code, out)
	}
	if err := syscall.Kill(d.cmd.Process.Pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "SIGHUP reload refused in the log", func() bool { return strings.Count(d.stderr.String(), "reload refused") == 2 })
	if out := ns.Run("nft", "list", "table", "inet", ifname); !strings.Contains(out, "dnat") {
		t.Errorf("firewall table changed after a refused reload:\n%s", out)
	}

	// A good change applies live: a new zone appears in the proxy.
	changed := bytes.Replace(good, []byte("  default:\n"), []byte("    - name: lab.example\n      upstreams: [10.30.0.54]\n  default:\n"), 1)
	if err := os.WriteFile(cfg, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := d.cli("reload"); code != 0 || !strings.Contains(out, "reloaded") {
		t.Fatalf("reload of a good config: %d %s", code, out)
	}
	if out, _ := d.cli("status", "--json"); !strings.Contains(out, "lab.example") {
		t.Errorf("status after reload lacks the new zone:\n%s", out)
	}

	d.stop()
	if out, err := ns.Exec("ip", "link", "show", ifname); err == nil {
		t.Errorf("interface %s still exists after stop:\n%s", ifname, out)
	}
	if out, err := ns.Exec("nft", "list", "table", "inet", ifname); err == nil {
		t.Errorf("table still exists after a clean stop:\n%s", out)
	}
	for _, p := range []string{filepath.Join(dir, "ctl.sock"), "/var/run/wireguard/" + ifname + ".sock"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}

// TestDaemonFailsClosed kills the daemon: the table stays (fail closed) and
// the next start replaces it without duplicates.
func TestDaemonFailsClosed(t *testing.T) {
	netnstest.RequirePrivileged(t, "nft")
	ns, _ := gatewayNS(t)
	cfg, _, ifname := daemonConfig(t, "10.30.0.53")
	d := startDaemon(t, ns, cfg)
	before := ns.Run("nft", "-a", "list", "table", "inet", ifname)
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.done
	d.done <- nil
	if _, err := ns.Exec("nft", "list", "table", "inet", ifname); err != nil {
		t.Fatalf("table gone after SIGKILL: the gateway must fail closed: %v", err)
	}
	// The userspace interface dies with the process; a restart brings it back
	// and replaces the table.
	waitFor(t, "interface gone after kill", func() bool { _, err := ns.Exec("ip", "link", "show", ifname); return err != nil })
	d2 := startDaemon(t, ns, cfg)
	after := ns.Run("nft", "list", "table", "inet", ifname)
	if strings.Count(after, "dnat") != strings.Count(stripHandles(before), "dnat") || strings.Count(after, "table inet") != 1 {
		t.Errorf("table after restart differs from before (duplicates?)\nbefore:\n%s\nafter:\n%s", before, after)
	}
	d2.stop()
}

// TestDoctor checks that doctor passes on a healthy gateway, and names a
// stopped internal resolver and an internal upstream routed out of the
// internet-facing interface.
func TestDoctor(t *testing.T) {
	netnstest.RequirePrivileged(t, "nft")
	ns, stopResolver := gatewayNS(t)
	cfg, _, _ := daemonConfig(t, "10.30.0.53")
	d := startDaemon(t, ns, cfg)
	out, code := d.cli("doctor")
	if !strings.Contains(out, "PASS  query 10.30.0.53:53 (corp.example)") || !strings.Contains(out, "PASS  route 10.30.0.53 (corp.example)") {
		t.Errorf("doctor on a healthy zone:\n%s", out)
	}
	if !strings.Contains(out, "PASS  proxy 10.20.0.53:53 use-application-dns.net") || !strings.Contains(out, "PASS  firewall") {
		t.Errorf("doctor proxy/firewall checks:\n%s", out)
	}
	// The default group (203.0.113.53) has no server: doctor fails on it.
	if code != 1 || !strings.Contains(out, "FAIL  query 203.0.113.53:53 (default)") {
		t.Errorf("doctor with a dead default upstream: code %d\n%s", code, out)
	}
	// The doctor's probes are not client traffic, and its upstream checks
	// are the proxy's: after three failed checks (dns.health.failures) the
	// dead default upstream is ejected in status too, and /readyz says the
	// default group has no healthy upstream.
	for range 2 {
		d.cli("doctor")
	}
	var st gateway.Status
	out, code = d.cli("status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("status --json: exit %d, %v\n%s", code, err, out)
	}
	if st.DNS.Queries != 0 || st.DNS.Blocked != 0 || len(st.DNS.ByRcode) != 0 {
		t.Errorf("doctor probes counted as client queries: %+v", st.DNS)
	}
	for _, u := range st.DNS.Upstreams {
		dead := u.Addr == "203.0.113.53:53"
		if u.Healthy == dead || (dead && u.Failures != 3) {
			t.Errorf("status after three doctor runs: %+v", u)
		}
	}
	if len(st.NotReady) != 1 || !strings.Contains(st.NotReady[0], "dns group default has no healthy upstream: 203.0.113.53:53") {
		t.Errorf("status not_ready = %q", st.NotReady)
	}
	if out, err := ns.Exec("curl", "-sS", "-o", "/dev/stdout", "-w", "%{http_code}", "http://127.0.0.1:9153/readyz"); err != nil || !strings.Contains(out, "dns group default has no healthy upstream") || !strings.HasSuffix(out, "503") {
		t.Errorf("/readyz with the default group down: %v\n%s", err, out)
	}
	if out, _ := d.cli("doctor"); !strings.Contains(out, "FAIL  query 203.0.113.53:53 (default)") || !strings.Contains(out, "EJECTED") {
		t.Errorf("doctor does not show the ejection status shows:\n%s", out)
	}
	stopResolver()
	out, _ = d.cli("doctor", "--json")
	if !strings.Contains(out, `"name": "query 10.30.0.53:53 (corp.example)",`+"\n      \"ok\": false") {
		t.Errorf("doctor did not flag the stopped internal resolver:\n%s", out)
	}
	d.stop()

	// An internal zone whose resolver is only reachable by the default route.
	cfg2, _, _ := daemonConfig(t, "10.99.0.53")
	d2 := startDaemon(t, ns, cfg2)
	out, code = d2.cli("doctor")
	if code != 1 || !strings.Contains(out, "FAIL  route 10.99.0.53 (corp.example)") || !strings.Contains(out, "internet-facing") {
		t.Errorf("doctor did not flag a misrouted internal upstream: code %d\n%s", code, out)
	}
	d2.stop()
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func stripHandles(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		l := sc.Text()
		if i := strings.Index(l, " # handle"); i >= 0 {
			l = l[:i]
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// TestUpWithoutConfig runs `sluice up` with no file at all, as a first-time
// user would: interface sluice0 on the userspace backend, split mode, a new
// key (0600) under /var/lib/sluice/sluice0, and the host's resolv.conf nameservers as
// the default group. The daemon gets private tmpfs mounts over /run and
// /var/lib and its own resolv.conf, so nothing of the host is touched.
func TestUpWithoutConfig(t *testing.T) {
	netnstest.RequirePrivileged(t, "nft", "nsenter", "dig")
	ns := netnstest.New(t, "nc")
	ns.Run("ip", "addr", "add", "192.0.2.53/32", "dev", "lo")
	if err := ns.Do(func() error {
		pc, err := net.ListenPacket("udp", "192.0.2.53:53")
		if err != nil {
			return err
		}
		srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			if q := r.Question[0]; q.Qtype == dns.TypeA {
				rr, _ := dns.NewRR(q.Name + " 60 IN A 198.51.100.80")
				m.Answer = append(m.Answer, rr)
			}
			w.WriteMsg(m)
		})}
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// ip netns exec gives the command a mount namespace of its own (a slave
	// of the host's), so these mounts never reach the host.
	script := `mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"`
	cmd := ns.Command(context.Background(), "sh", "-c", script, "sh", resolv, os.Args[0], "up")
	cmd.Env = append(os.Environ(), envRunMain+"=1")
	d := startUp(t, ns, "", cmd)

	out, code := d.cli("status")
	if code != 0 || !strings.Contains(out, "interface: sluice0 (userspace backend, split mode)") {
		t.Errorf("sluice status on embedded defaults (exit %d):\n%s", code, out)
	}
	out, code = d.cli("status", "--json")
	for _, want := range []string{`"name": "sluice0"`, `"backend": "userspace"`, `"mode": "split"`, `"192.0.2.53:53"`} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status on embedded defaults lacks %s (exit %d):\n%s", want, code, out)
		}
	}
	if out, _ := d.cli("version"); out == "" {
		t.Error("no version output")
	}
	st, err := exec.Command("nsenter", "-t", strconv.Itoa(d.cmd.Process.Pid), "-m", "stat", "-c", "%a", "/var/lib/sluice/sluice0/sluice0.key").CombinedOutput()
	if err != nil || strings.TrimSpace(string(st)) != "600" {
		t.Errorf("generated key /var/lib/sluice/sluice0/sluice0.key: mode %q, %v; want 600", st, err)
	}
	// A query from a tunnel address reaches the host's resolver via the proxy.
	r := ns.Run("dig", "+short", "+tries=1", "+time=3", "-b", "10.20.0.1", "@10.20.0.53", "www.example.net", "A")
	if strings.TrimSpace(r) != "198.51.100.80" {
		t.Errorf("dig @10.20.0.53 from the tunnel prefix = %q, want the host resolver's answer", r)
	}
	out, code = d.cli("peer", "add", "alice")
	if code != 0 || !strings.Contains(out, "applied to the running gateway") {
		t.Errorf("peer add on embedded defaults (exit %d):\n%s", code, out)
	}
	out, code = d.cli("peer", "config", "alice", "--endpoint", "192.0.2.1:51820")
	if code != 0 || !strings.Contains(out, "DNS = 10.20.0.53, fd20::53") || !strings.Contains(out, "10.20.0.53/32") || !strings.Contains(out, "fd20::53/128") {
		t.Errorf("peer config on embedded defaults (exit %d):\n%s", code, redactConf(out))
	}
	d.stop()
	if _, err := ns.Exec("ip", "link", "show", "sluice0"); err == nil {
		t.Error("sluice0 still exists after a clean stop")
	}
}

// redactConf hides keys of a rendered client config in test output.
func redactConf(conf string) string {
	var b strings.Builder
	for _, l := range strings.Split(conf, "\n") {
		if k, _, ok := strings.Cut(l, "="); ok && strings.Contains(strings.TrimSpace(k), "Key") && strings.TrimSpace(k) != "PublicKey" {
			l = k + "= (redacted)"
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// hupSender sends SIGHUP to pid every interval until stop is called (at
// most max signals).
func hupSender(pid int, interval time.Duration, max int) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for range max {
			_ = syscall.Kill(pid, syscall.SIGHUP) // the process may be gone at the end
			select {
			case <-done:
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() { close(done); <-finished }
}

// TestDaemonReloadRace is issue 11's crash: SIGHUP while `sluice up` is
// still starting (the proxy and firewall not built yet) panicked in
// dnsproxy.(*Proxy).Reload. SIGHUPs start right after the firewall is
// applied and keep coming until READY=1, together with `sluice reload`;
// then both paths reload at once; then SIGHUPs keep coming while the
// daemon stops. The daemon must never crash, answer early reloads "not
// ready yet", apply the concurrent ones, and stop cleanly with nothing
// left behind (a reload racing the stop must not put the table back).
func TestDaemonReloadRace(t *testing.T) {
	netnstest.RequirePrivileged(t, "nft")
	ns, _ := gatewayNS(t)
	cfg, dir, ifname := daemonConfig(t, "10.30.0.53")
	d, ready := launchUp(t, ns, cfg, sluiceCmd(ns, "up", "-c", cfg))
	pid := d.cmd.Process.Pid

	// Early: from the firewall being applied (well inside Run) to READY=1.
	waitFor(t, "firewall applied in the log", func() bool { return strings.Contains(d.stderr.String(), "firewall applied") })
	stopHUP := hupSender(pid, time.Millisecond, 20000)
	var early sync.WaitGroup
	earlyOut := make(chan string, 4)
	early.Add(1)
	go func() { // `sluice reload` while starting: either not ready yet or, if late, reloaded
		defer early.Done()
		out, code := d.cli("reload")
		if !(code == 1 && strings.Contains(out, "not ready yet")) && !(code == 0 && strings.Contains(out, "reloaded")) {
			earlyOut <- fmt.Sprintf("exit %d: %s", code, out)
		}
	}()
	d.waitReady(ready)
	stopHUP()
	early.Wait()
	close(earlyOut)
	for o := range earlyOut {
		t.Errorf("sluice reload while starting: %s", o)
	}
	if strings.Contains(d.stderr.String(), "panic") {
		t.Fatalf("daemon panicked on an early SIGHUP:\n%s", d.stderr)
	}
	if out, code := d.cli("status"); code != 0 || !strings.Contains(out, "interface: "+ifname) {
		t.Fatalf("status after early SIGHUPs: exit %d\n%s", code, out)
	}

	// Both paths at once.
	stopHUP = hupSender(pid, time.Millisecond, 2000)
	var wg sync.WaitGroup
	outs := make(chan string, 8)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2 {
				if out, code := d.cli("reload"); code != 0 || !strings.Contains(out, "reloaded") {
					outs <- fmt.Sprintf("exit %d: %s", code, out)
				}
			}
		}()
	}
	wg.Wait()
	stopHUP()
	close(outs)
	for o := range outs {
		t.Errorf("concurrent sluice reload: %s", o)
	}
	if n := strings.Count(d.stderr.String(), "configuration reloaded"); n < 6 {
		t.Errorf("%d reloads applied, want at least the 6 of sluice reload", n)
	}

	// During the stop.
	stopHUP = hupSender(pid, time.Millisecond, 20000)
	d.stop()
	stopHUP()
	if strings.Contains(d.stderr.String(), "panic") {
		t.Fatalf("daemon panicked:\n%s", d.stderr)
	}
	if out, err := ns.Exec("nft", "list", "table", "inet", ifname); err == nil {
		t.Errorf("table exists after a stop under SIGHUPs (a reload put it back):\n%s", out)
	}
	if out, err := ns.Exec("ip", "link", "show", ifname); err == nil {
		t.Errorf("interface %s exists after stop:\n%s", ifname, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "ctl.sock")); err == nil {
		t.Error("control socket left behind")
	}
}

// fakeDaemon answers on the control socket of cfg with status code and
// body for every request, like a daemon that is still starting.
func fakeControlSocket(t *testing.T, sock string, code int, body string) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, body, code)
	}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

// TestReloadNotReady: `sluice reload` and `sluice status` against a daemon
// that is still starting say so and exit non-zero.
func TestReloadNotReady(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	fakeControlSocket(t, filepath.Join(dir, "ctl.sock"), http.StatusServiceUnavailable, "not ready yet: sluice is still starting")
	_, errs, code := run(t, "reload", "-c", cfg)
	if code != 1 || !strings.Contains(errs, "reload not done: not ready yet: sluice is still starting; try again once it is up") || strings.Contains(errs, "refused") {
		t.Errorf("reload while starting: exit %d, stderr %q", code, errs)
	}
	_, errs, code = run(t, "status", "-c", cfg)
	if code != 1 || !strings.Contains(errs, "not ready yet: sluice is still starting") {
		t.Errorf("status while starting: exit %d, stderr %q", code, errs)
	}
}

// TestStatusPermissionDenied: a user who may not open the control socket
// (0600, the daemon's) is told so, not that sluice is not running. The CLI
// runs as nobody in a subprocess.
func TestStatusPermissionDenied(t *testing.T) {
	netnstest.RequirePrivileged(t)
	const nobody = 65534
	// A directory nobody can read and execute from, with a copy of the CLI.
	dir, err := os.MkdirTemp("", "sluice-perm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "sluice")
	if err := os.WriteFile(bin, mustRead(t, os.Args[0]), 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(cfg, []byte("interface:\n  name: slperm0\nadmin:\n  control_socket: "+sock+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fakeControlSocket(t, sock, http.StatusOK, "{}")
	if err := os.Chmod(sock, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"status"}, {"reload"}} {
		cmd := exec.Command(bin, append(args, "-c", cfg)...)
		cmd.Env = append(os.Environ(), envRunMain+"=1")
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		want := "permission denied on the control socket " + sock + ": run as root"
		if err == nil || !strings.Contains(string(out), want) || strings.Contains(string(out), "not running") {
			t.Errorf("sluice %s as nobody: %v\n%s\nwant %q", args[0], err, out, want)
		}
	}
	// Root is let in: the same socket works.
	_, errs, code := run(t, "status", "-c", cfg)
	if code != 0 {
		t.Errorf("status as root: exit %d, %s", code, errs)
	}
}
