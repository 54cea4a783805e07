package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
	"github.com/sluice-vpn/sluice/internal/syncbuf"
)

// Timeouts of the sluice process.
const (
	readyTimeout = 20 * time.Second // `sluice up` until its "ready" line
	stopTimeout  = 10 * time.Second // SIGTERM until exit
	cliTimeout   = 30 * time.Second // one CLI command
)

// sluiceOpts are the knobs the tests turn; everything else is the fixed
// test network.
type sluiceOpts struct {
	mode      string   // split | full
	offPolicy string   // redirect | reject
	routes    []string // peers.routes; default 10.30.0.0/16
	// egress_test.go: extra YAML lines under enforce: and dns.zones.
	enforceYAML string
	zonesYAML   string
	encrypted   bool   // dns.encrypted: [dot, doh] with sluice's own CA (encryptedServerName)
	dot         string // enforce.dot; default reject
}

// sluiceGW is one `sluice up` in the gateway namespace.
type sluiceGW struct {
	t        testing.TB
	tp       *topology
	dir      string
	ifname   string
	cfgPath  string
	queryLog string
	opts     sluiceOpts
	p        *proc // the current `sluice up`

	stopOnCleanup bool // the owner's cleanup stops the daemon
}

// newSluice writes a configuration for the test network (and the gateway's
// private key, and the DoH list) into a fresh directory. It does not start
// the daemon.
func (tp *topology) newSluice(opts sluiceOpts) *sluiceGW {
	tp.t.Helper()
	requireSluice(tp.t)
	g := &sluiceGW{t: tp.t, tp: tp, opts: opts, ifname: netnstest.Unique("slgw")}
	g.dir = filepath.Join(tp.dir, "sluice-"+g.ifname)
	if err := os.MkdirAll(filepath.Join(g.dir, "state"), 0o700); err != nil {
		tp.t.Fatalf("create %s: %v", g.dir, err)
	}
	key, _ := wgKeyPair(tp.t)
	keyFile := filepath.Join(g.dir, "gw.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		tp.t.Fatalf("write %s: %v", keyFile, err)
	}
	dohFile := filepath.Join(g.dir, "doh.txt")
	if err := os.WriteFile(dohFile, []byte("# test DoH servers\n"+dohIP4+"\n"+dohIP6+"\n"), 0o644); err != nil {
		tp.t.Fatalf("write %s: %v", dohFile, err)
	}
	g.queryLog = filepath.Join(g.dir, "query.log")
	g.cfgPath = filepath.Join(g.dir, "sluice.yaml")
	g.writeConfig(tp.t, opts)
	tp.t.Cleanup(func() { removeStaleSocket(tp.t, g.ifname) })
	return g
}

// writeConfig (re)writes the configuration file for opts.
func (g *sluiceGW) writeConfig(t testing.TB, opts sluiceOpts) {
	t.Helper()
	keyFile := filepath.Join(g.dir, "gw.key")
	dohFile := filepath.Join(g.dir, "doh.txt")
	if len(opts.routes) == 0 {
		opts.routes = []string{"10.30.0.0/16"}
	}
	g.opts = opts
	defaults := "[" + publicDNS4 + "]"
	if opts.mode == "full" {
		// Full mode refuses public upstreams: everything goes to corp.
		defaults = "[" + corpDNS1 + ", " + corpDNS2 + "]"
	}
	cfg := fmt.Sprintf(`# sluice e2e configuration (generated)
interface:
  name: %[1]s
  backend: userspace
  listen_port: %[2]s
  private_key_file: %[3]s
  addresses: [10.20.0.1/24, fd20::1/64]
  mtu: 1420
  endpoint: %[4]s:%[2]s
dns:
  mode: %[5]s
  listen: [%[6]s, %[7]s]
  search_domains: [corp.example]
  zones:
    - name: corp.example
      upstreams: [%[8]s, %[9]s]
  default:
    upstreams: %[10]s
  query_log: %[11]s
%[17]senforce:
  off_policy_dns: %[12]s
  dot: %[18]s
  doh_ips_file: %[13]s
  egress_interface: ""
peers:
  state_dir: %[14]s
  routes: [%[16]s]
admin:
  listen: 127.0.0.1:9153
  control_socket: %[15]s
`, g.ifname, wgPort, keyFile, gwUnderlay, opts.mode, resolver4, resolver6, corpDNS1, corpDNS2,
		defaults, g.queryLog, opts.offPolicy, dohFile, filepath.Join(g.dir, "state"), filepath.Join(g.dir, "ctl.sock"),
		strings.Join(opts.routes, ", "), encryptedYAML(opts), orDefault(opts.dot, "reject"))
	cfg = strings.Replace(cfg, "  egress_interface: \"\"\n", "  egress_interface: \"\"\n"+opts.enforceYAML, 1)
	cfg = strings.Replace(cfg, "  default:\n", opts.zonesYAML+"  default:\n", 1)
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatalf("write %s: %v", g.cfgPath, err)
	}
}

// restart stops the daemon, rewrites the configuration for opts (same
// interface, key and peer store) and starts it again.
func (g *sluiceGW) restart(t testing.TB, opts sluiceOpts) {
	t.Helper()
	g.stop()
	g.writeConfig(t, opts)
	g.start(t)
}

// start runs `sluice up` in the gateway namespace and waits for its ready
// line. Cleanup stops it (SIGTERM) and checks that it tore down its interface.
func (g *sluiceGW) start(t testing.TB) {
	t.Helper()
	if out, err := g.cli("check"); err != nil {
		t.Fatalf("sluice check: %v\n%s\nconfig:\n%s", err, out, readFile(g.cfgPath))
	}
	g.p = startProc(g.t, g.tp.gw, g.dir, "sluice-"+g.ifname, os.Environ(), sluiceBin, "up", "-c", g.cfgPath, "--log-level", "debug")
	if !g.stopOnCleanup {
		g.stopOnCleanup = true
		g.t.Cleanup(func() { g.stop() })
	}
	ok, _ := waitFor(readyTimeout, 50*time.Millisecond, func() (bool, string) {
		return strings.Contains(g.p.out.String(), "ready") || g.p.exited(), ""
	})
	if g.p.exited() {
		t.Fatalf("sluice up exited before ready: %v\n%s", g.p.err, g.p.out.String())
	}
	if !ok {
		t.Fatalf("sluice up: no ready line within %v:\n%s", readyTimeout, g.p.out.String())
	}
}

// stop sends SIGTERM and checks the clean teardown: exit status 0 and the
// WireGuard interface gone. It is safe to call twice.
func (g *sluiceGW) stop() {
	g.t.Helper()
	if g.p == nil || g.p.exited() && g.p.err == nil && !g.linkExists() {
		return
	}
	already := g.p.exited()
	if err := g.p.stop(stopTimeout); err != nil {
		g.t.Errorf("sluice up did not stop cleanly on SIGTERM (exited before: %v): %v\n%s", already, err, tail(g.p.out.String(), 30))
	}
	if g.linkExists() {
		g.t.Errorf("sluice stopped but interface %s is still in the gateway namespace", g.ifname)
		_, _ = g.tp.gw.Exec("ip", "link", "del", g.ifname) // so that the next test does not trip on it
	}
}

func (g *sluiceGW) linkExists() bool {
	_, err := g.tp.gw.Exec("ip", "link", "show", g.ifname)
	return err == nil
}

// cli runs `sluice ARGS -c CONFIG` in the gateway namespace; it returns
// standard output (standard error is appended to the error).
func (g *sluiceGW) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	full := append([]string{"netns", "exec", g.tp.gw.Name, sluiceBin}, args...)
	full = append(full, "-c", g.cfgPath)
	cmd := exec.CommandContext(ctx, "ip", full...)
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("sluice %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// mustCLI is cli that fails the test on error.
func (g *sluiceGW) mustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := g.cli(args...)
	if err != nil {
		t.Fatalf("%v\nstdout: %s", err, out)
	}
	return out
}

// addPeer adds user/device (with pub, if set) and returns the rendered
// wg-quick configuration. Without pub sluice generates the key pair and the
// configuration carries the private key; with pub the caller's priv is put
// in.
func (g *sluiceGW) addPeer(t testing.TB, user, device, pub, priv string) string {
	t.Helper()
	args := []string{"peer", "add", user, "--device", device}
	if pub != "" {
		args = append(args, "--public-key", pub)
	}
	g.mustCLI(t, args...)
	conf := g.mustCLI(t, "peer", "config", user+"/"+device)
	if priv != "" {
		if privateKeyRE.MatchString(conf) {
			conf = privateKeyRE.ReplaceAllString(conf, "${1}"+priv)
		} else {
			conf = strings.Replace(conf, "[Interface]", "[Interface]\nPrivateKey = "+priv, 1)
		}
	}
	if !regexp.MustCompile(`(?m)^\s*PrivateKey\s*=\s*[A-Za-z0-9+/]{43}=\s*$`).MatchString(conf) {
		t.Fatalf("peer config %s/%s has no usable PrivateKey:\n%s", user, device, redactKey(conf))
	}
	return conf
}

// metrics returns the Prometheus text of the admin endpoint.
func (g *sluiceGW) metrics(t testing.TB) string {
	t.Helper()
	out, err := g.tp.gw.Exec("curl", "-sS", "--max-time", "3", "http://127.0.0.1:9153/metrics")
	if err != nil {
		t.Fatalf("fetch metrics: %v: %s", err, out)
	}
	return out
}

// metricSum adds up every sample of name whose labels contain all of
// labels (each `key="value"`).
func metricSum(text, name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// firewallCounter waits (counters may be read from the kernel
// periodically) until sluice_firewall_packets_total{reason=...} is at least
// 1 and returns it; 0 means it never counted.
func (g *sluiceGW) firewallCounter(t testing.TB, reason string) float64 {
	t.Helper()
	var n float64
	waitFor(5*time.Second, 200*time.Millisecond, func() (bool, string) {
		n = metricSum(g.metrics(t), "sluice_firewall_packets_total", `reason="`+reason+`"`)
		return n >= 1, ""
	})
	return n
}

// queryRecord is one line of the query log.
type queryRecord map[string]any

func (q queryRecord) str(key string) string {
	switch v := q[key].(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// queries reads the query log and returns the records for name (with or
// without the trailing dot).
func (g *sluiceGW) queries(t testing.TB, name string) []queryRecord {
	t.Helper()
	data, err := os.ReadFile(g.queryLog)
	if err != nil {
		return nil
	}
	var out []queryRecord
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var q queryRecord
		if err := json.Unmarshal([]byte(line), &q); err != nil {
			t.Errorf("query log line is not JSON: %q: %v", line, err)
			continue
		}
		if strings.EqualFold(strings.TrimSuffix(q.str("name"), "."), strings.TrimSuffix(name, ".")) {
			out = append(out, q)
		}
	}
	return out
}

// waitQuery waits until the query log has a record for name from peer
// whose upstream satisfies okUpstream, and returns it.
func (g *sluiceGW) waitQuery(t testing.TB, name, peer string, okUpstream func(string) bool) queryRecord {
	t.Helper()
	var found queryRecord
	ok, _ := waitFor(3*time.Second, 100*time.Millisecond, func() (bool, string) {
		for _, q := range g.queries(t, name) {
			if q.str("peer") == peer && okUpstream(q.str("upstream")) {
				found = q
				return true, ""
			}
		}
		return false, ""
	})
	if !ok {
		t.Fatalf("query log %s: no record for %s from peer %s with the expected upstream; log:\n%s", g.queryLog, name, peer, tail(readFile(g.queryLog), 20))
	}
	return found
}

// isCorp reports whether an upstream (as logged) is one of the corp resolvers.
func isCorp(up string) bool {
	return strings.Contains(up, corpDNS1) || strings.Contains(up, corpDNS2)
}

// gwStatus is the part of `sluice status --json` the tests read.
type gwStatus struct {
	Interface struct {
		Name string `json:"name"`
		Mode string `json:"mode"`
	} `json:"interface"`
	Peers []struct {
		ID              string    `json:"id"`
		PublicKey       string    `json:"public_key"`
		LatestHandshake time.Time `json:"latest_handshake"`
	} `json:"peers"`
}

// status runs `sluice status --json`.
func (g *sluiceGW) status(t testing.TB) gwStatus {
	t.Helper()
	out := g.mustCLI(t, "status", "--json")
	var s gwStatus
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("sluice status --json: %v:\n%s", err, out)
	}
	return s
}

// handshake is the gateway's latest handshake with peer id (zero if none
// or if the peer is not on the interface).
func (g *sluiceGW) handshake(t testing.TB, id string) (time.Time, bool) {
	t.Helper()
	for _, p := range g.status(t).Peers {
		if p.ID == id {
			return p.LatestHandshake, true
		}
	}
	return time.Time{}, false
}
