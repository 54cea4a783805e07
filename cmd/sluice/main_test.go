package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/gateway"
)

// run executes the CLI in-process and returns stdout, stderr and the exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.Execute()
	code := 0
	var ee exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case err != nil:
		errb.WriteString(err.Error())
		code = 1
	}
	return out.String(), errb.String(), code
}

func writeConfig(t *testing.T, extra string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := `interface:
  name: sltest0
  backend: userspace
  private_key_file: ` + filepath.Join(dir, "gw.key") + `
  addresses: [10.20.0.1/24, fd20::1/64]
  endpoint: 192.0.2.1:51820
dns:
  listen: [10.20.0.53, fd20::53]
  search_domains: [corp.example]
  zones:
    - name: corp.example
      upstreams: [10.30.0.53]
  default:
    upstreams: [198.51.100.53]
peers:
  state_dir: ` + filepath.Join(dir, "state") + `
  routes: [10.30.0.0/16]
admin:
  control_socket: ` + filepath.Join(dir, "ctl.sock") + `
` + extra
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, dir
}

func TestCheck(t *testing.T) {
	good, _ := writeConfig(t, "")
	if out, errs, code := run(t, "check", "-c", good); code != 0 || !strings.Contains(out, ": ok") {
		t.Fatalf("check good: code %d, out %q, err %q", code, out, errs)
	}
	bad, _ := writeConfig(t, "enforce:\n  dot: maybe\n")
	_, errs, code := run(t, "check", "-c", bad)
	if code != 1 {
		t.Fatalf("check bad: code %d, want 1", code)
	}
	if !strings.Contains(errs, bad+":21: enforce.dot: unknown action \"maybe\"") {
		t.Errorf("check bad: stderr %q does not name file:line and key", errs)
	}
}

func TestPeerLifecycleWithoutDaemon(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	out, errs, code := run(t, "peer", "add", "alice", "--device", "laptop", "-c", cfg)
	if code != 0 {
		t.Fatalf("peer add: %d %s", code, errs)
	}
	if !strings.Contains(out, "added alice/laptop: 10.20.0.2, fd20::2") {
		t.Errorf("peer add output %q", out)
	}
	if !strings.Contains(errs, "not running") {
		t.Errorf("peer add without daemon should say the change waits for the next start; stderr %q", errs)
	}
	if _, _, code := run(t, "peer", "add", "alice/laptop", "-c", cfg); code == 0 {
		t.Error("adding the same device twice succeeded")
	}
	conf, errs, code := run(t, "peer", "config", "alice/laptop", "-c", cfg)
	if code != 0 {
		t.Fatalf("peer config: %d %s", code, errs)
	}
	for _, want := range []string{"10.20.0.53/32", "fd20::53/128", "10.30.0.0/16", "Endpoint = 192.0.2.1:51820", "DNS = 10.20.0.53, fd20::53, corp.example"} {
		if !strings.Contains(conf, want) {
			t.Errorf("client config lacks %q:\n%s", want, conf)
		}
	}
	// The rendered config passes our own lint.
	confPath := filepath.Join(dir, "alice.conf")
	if _, errs, code := run(t, "peer", "config", "alice/laptop", "-o", confPath, "-c", cfg); code != 0 {
		t.Fatalf("peer config -o: %s", errs)
	}
	if fi, err := os.Stat(confPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("client config file mode: %v %v", fi, err)
	}
	if out, _, code := run(t, "peer", "lint", confPath); code != 0 {
		t.Errorf("lint of our own config: code %d: %s", code, out)
	}
	list, _, code := run(t, "peer", "list", "--json", "-c", cfg)
	if code != 0 || !strings.Contains(list, `"id": "alice/laptop"`) || strings.Contains(list, "private") {
		t.Errorf("peer list --json: %d %s", code, list)
	}
	if _, errs, code := run(t, "peer", "remove", "alice/laptop", "-c", cfg); code != 0 {
		t.Fatalf("peer remove: %s", errs)
	}
	if _, errs, code := run(t, "peer", "show", "alice/laptop", "-c", cfg); code == 0 || !strings.Contains(errs, "not found") {
		t.Errorf("show after remove: %d %q", code, errs)
	}
}

func TestPeerConfigWithoutEndpoint(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	data, _ := os.ReadFile(cfg)
	if err := os.WriteFile(cfg, bytes.Replace(data, []byte("  endpoint: 192.0.2.1:51820\n"), nil, 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := run(t, "peer", "add", "bob", "-c", cfg); code != 0 {
		t.Fatal(errs)
	}
	_, errs, code := run(t, "peer", "config", "bob", "-c", cfg)
	if code == 0 || !strings.Contains(errs, "interface.endpoint") || !strings.Contains(errs, cfg+":1") {
		t.Errorf("config without endpoint: code %d, stderr %q", code, errs)
	}
	if out, errs, code := run(t, "peer", "config", "bob", "--endpoint", "vpn.example.com:51820", "-c", cfg); code != 0 || !strings.Contains(out, "Endpoint = vpn.example.com:51820") {
		t.Errorf("--endpoint: %d %s", code, errs)
	}
}

func TestPeerLint(t *testing.T) {
	dir := t.TempDir()
	leaky := filepath.Join(dir, "leaky.conf")
	os.WriteFile(leaky, []byte("[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.20.0.2/32\nDNS = 10.20.0.53\n\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 10.30.0.0/16\nEndpoint = 192.0.2.1:51820\n"), 0o600)
	out, _, code := run(t, "peer", "lint", leaky)
	if code != 1 || !strings.Contains(out, "10.20.0.53") {
		t.Errorf("lint leaky: code %d, out %q", code, out)
	}
	if _, _, code := run(t, "peer", "lint", filepath.Join(dir, "missing.conf")); code != 2 {
		t.Errorf("lint missing file: code %d, want 2", code)
	}
}

// TestConcurrentPeerAdd adds peers from many goroutines at once through the
// CLI; every peer must land exactly once with its own addresses. (The peers
// package tests the same across processes.)
func TestConcurrentPeerAdd(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	const n = 12
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, errs, code := run(t, "peer", "add", "user"+string(rune('a'+i)), "-c", cfg); code != 0 {
				t.Errorf("add %d: %s", i, errs)
			}
		}()
	}
	wg.Wait()
	list, _, _ := run(t, "peer", "list", "-c", cfg)
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != n+1 {
		t.Fatalf("peer list has %d rows, want %d:\n%s", len(lines)-1, n, list)
	}
	seen := map[string]bool{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if seen[f[1]] || seen[f[2]] {
			t.Errorf("address given twice: %s", l)
		}
		seen[f[1]], seen[f[2]] = true, true
	}
}

func TestPrintDNSStats(t *testing.T) {
	st := &gateway.Status{DNS: dnsproxy.Stats{
		Queries: 10, ByRcode: map[string]uint64{"NOERROR": 8, "SERVFAIL": 2},
		CacheHits: 3, CacheMisses: 1, CacheEntries: 1, Blocked: 1,
		Upstreams: []dnsproxy.UpstreamStats{
			{Group: "corp.example", Addr: "10.30.0.53:53", Healthy: true, Latency: 1500 * time.Microsecond},
			{Group: "corp.example", Addr: "10.30.0.54:53", Failures: 3},
		},
	}}
	var b bytes.Buffer
	printDNSStats(&b, st)
	for _, want := range []string{
		"queries: 10 (NOERROR 8, SERVFAIL 2)",
		"cache: 1 entries, 3 hits, 1 misses (75.0 % hits)",
		"10.30.0.53:53                healthy  latency 1.5ms",
		"10.30.0.54:53                EJECTED  latency no answer yet, 3 failures in a row",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status dns section lacks %q:\n%s", want, b.String())
		}
	}
}

func TestPrintTraceLine(t *testing.T) {
	base := gateway.TraceRecord{Peer: "alice/laptop"}
	base.Time = time.Date(2026, 11, 26, 9, 30, 0, 0, time.Local)
	base.Name, base.Type, base.Rcode, base.Group, base.Latency = "git.corp.example.", "A", "NOERROR", "corp.example", 250*time.Microsecond
	miss, hit, blocked := base, base, base
	miss.Upstream = "10.30.0.53:53"
	hit.CacheHit = true
	blocked.Rcode, blocked.Group, blocked.Blocked = "NXDOMAIN", "", "doh"
	dot := hit
	dot.Transport = "dot"
	for _, c := range []struct {
		r    gateway.TraceRecord
		want []string
	}{
		{miss, []string{"09:30:00.000", "alice/laptop", "git.corp.example.", "NOERROR", "corp.example <- 10.30.0.53:53", "250µs"}},
		{hit, []string{"corp.example (cache)"}},
		{blocked, []string{"NXDOMAIN", "blocked: doh"}},
		{dot, []string{"corp.example (cache) [dot]"}},
	} {
		var b bytes.Buffer
		if err := printTraceLine(&b, c.r); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("trace line %q lacks %q", b.String(), w)
			}
		}
	}
}
