package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

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
	stderr *lockedBuffer
	done   chan error
}

// lockedBuffer is a bytes.Buffer safe for the exec copier and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
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
	sock := filepath.Join(t.TempDir(), "notify.sock")
	nconn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nconn.Close() })
	d := &upDaemon{t: t, ns: ns, cfg: cfg, stderr: &lockedBuffer{}, done: make(chan error, 1)}
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
		buf := make([]byte, 512)
		for {
			n, err := nconn.Read(buf)
			if err != nil {
				return
			}
			if msg := string(buf[:n]); strings.Contains(msg, "READY=1") {
				ready <- msg
				return
			}
		}
	}()
	select {
	case <-ready:
	case err := <-d.done:
		t.Fatalf("sluice up exited before READY=1: %v\n%s", err, d.stderr)
	case <-time.After(20 * time.Second):
		t.Fatalf("no READY=1 within 20s\n%s", d.stderr)
	}
	return d
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
