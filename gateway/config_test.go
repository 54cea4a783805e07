package gateway

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
)

const goodConfig = `interface:
  name: wgt0
  backend: userspace
  listen_port: 51820
  private_key_file: /tmp/sluice-test/wgt0.key
  addresses: [10.20.0.1/24, fd20::1/64]
  mtu: 1420
  endpoint: vpn.example.com:51820
dns:
  mode: split
  listen: [10.20.0.53, fd20::53]
  search_domains: [corp.example]
  zones:
    - name: corp.example
      upstreams: [10.30.0.53, 10.30.0.54]
  default:
    upstreams: ["tls://9.9.9.9#dns.quad9.net", 1.1.1.1]
  edns_buffer_size: 1232
enforce:
  off_policy_dns: redirect
  dot: reject
peers:
  state_dir: /tmp/sluice-test
  routes: [10.30.0.0/16]
admin:
  listen: 127.0.0.1:9153
`

func TestParseGood(t *testing.T) {
	c, err := Parse("good.yaml", []byte(goodConfig))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.Interface.Name != "wgt0" || c.Interface.MTU != 1420 || c.Interface.ListenPort != 51820 {
		t.Errorf("interface = %+v", c.Interface)
	}
	wantRes := []netip.Addr{netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("fd20::53")}
	if got := c.Resolvers(); len(got) != 2 || got[0] != wantRes[0] || got[1] != wantRes[1] {
		t.Errorf("resolvers = %v, want %v", got, wantRes)
	}
	if len(c.DNS.Zones) != 1 || c.DNS.Zones[0].Name != "corp.example" || len(c.DNS.Zones[0].Upstreams) != 2 {
		t.Errorf("zones = %+v", c.DNS.Zones)
	}
	if c.Enforce.OffPolicyDNS != "redirect" || c.Enforce.DoT != "reject" || c.Enforce.DoH != "reject" {
		t.Errorf("enforce = %+v", c.Enforce)
	}
	if c.FullTunnel() {
		t.Error("split config reported full tunnel")
	}
	pool := c.Pool()
	if pool.V4 != netip.MustParsePrefix("10.20.0.0/24") || pool.V6 != netip.MustParsePrefix("fd20::/64") {
		t.Errorf("pool = %+v", pool)
	}
	if got := c.ControlSocket(); got != "/run/sluice/wgt0.sock" {
		t.Errorf("control socket = %q", got)
	}
}

func TestParseFullModeDefaultsToReject(t *testing.T) {
	cfg := strings.Replace(goodConfig, "mode: split", "mode: full", 1)
	cfg = strings.Replace(cfg, `upstreams: ["tls://9.9.9.9#dns.quad9.net", 1.1.1.1]`, `upstreams: [10.30.0.55]`, 1)
	cfg = strings.Replace(cfg, "  off_policy_dns: redirect\n", "", 1)
	c, err := Parse("full.yaml", []byte(cfg))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.Enforce.OffPolicyDNS != "reject" {
		t.Errorf("full mode off_policy_dns = %q, want reject", c.Enforce.OffPolicyDNS)
	}
}

// TestParseBad checks that each bad value gives an error naming the file,
// the line, the key and what to do.
func TestParseBad(t *testing.T) {
	tests := []struct {
		name       string
		old, new   string
		line       int
		key, inMsg string
		old2, new2 string
	}{
		{"unknown key", "  mtu: 1420\n", "  mtu: 1420\n  mtux: 3\n", 8, "interface.mtux", `unknown key "mtux"`, "", ""},
		{"unknown section", "admin:\n", "bogus: 1\nadmin:\n", 25, "bogus", `unknown key "bogus"`, "", ""},
		{"bad cidr", "addresses: [10.20.0.1/24, fd20::1/64]", "addresses: [10.20.0.1/33, fd20::1/64]", 6, "interface.addresses[0]", "not an address with prefix length", "", ""},
		{"network address", "addresses: [10.20.0.1/24, fd20::1/64]", "addresses: [10.20.0.0/24, fd20::1/64]", 6, "interface.addresses[0]", "network address", "", ""},
		{"no ipv6", "addresses: [10.20.0.1/24, fd20::1/64]", "addresses: [10.20.0.1/24]", 6, "interface.addresses", "one IPv4 and one IPv6", "", ""},
		{"resolver outside", "listen: [10.20.0.53, fd20::53]", "listen: [10.99.0.53, fd20::53]", 11, "dns.listen[0]", "outside the interface prefixes", "", ""},
		{"resolver v6 outside", "listen: [10.20.0.53, fd20::53]", "listen: [10.20.0.53, fd99::53]", 11, "dns.listen[1]", "outside the interface prefixes", "", ""},
		{"pool too small", "addresses: [10.20.0.1/24, fd20::1/64]", "addresses: [10.20.0.1/30, fd20::1/64]", 6, "interface.addresses", "", "10.20.0.53", "10.20.0.2"},
		{"bad upstream", "upstreams: [10.30.0.53, 10.30.0.54]", "upstreams: [10.30.0.53, 'udp://nope']", 15, "dns.zones[0].upstreams[1]", "", "", ""},
		{"bad mode", "mode: split", "mode: half", 10, "dns.mode", "unknown mode", "", ""},
		{"bad backend", "backend: userspace", "backend: ebpf", 3, "interface.backend", "unknown backend", "", ""},
		{"bad route", "routes: [10.30.0.0/16]", "routes: [10.30.0.0/99]", 24, "peers.routes[0]", "not a CIDR", "", ""},
		{"v4 default only", "routes: [10.30.0.0/16]", "routes: [0.0.0.0/0]", 24, "peers.routes", "leaks", "", ""},
		{"route host bits", "routes: [10.30.0.0/16]", "routes: [10.30.0.1/16]", 24, "peers.routes[0]", "host bits", "", ""},
		{"bad endpoint", "endpoint: vpn.example.com:51820", "endpoint: vpn.example.com", 8, "interface.endpoint", "not host:port", "", ""},
		{"bad action", "off_policy_dns: redirect", "off_policy_dns: drop", 20, "enforce.off_policy_dns", "unknown action", "", ""},
		{"wrong type", "mtu: 1420", "mtu: big", 7, "interface.mtu", `"big" is not a whole number`, "", ""},
		{"bad duration", "edns_buffer_size: 1232", "edns_buffer_size: 1232\n  upstream_timeout: soon", 19, "dns.upstream_timeout", "not a duration", "", ""},
		{"timeout too long", "edns_buffer_size: 1232", "edns_buffer_size: 1232\n  upstream_timeout: 5s", 19, "dns.upstream_timeout", "under 2s", "", ""},
		{"duplicate zone", "  default:\n", "    - name: Corp.Example.\n      upstreams: [10.30.0.53]\n  default:\n", 16, "dns.zones[1].name", "listed twice", "", ""},
		{"public upstream in full mode", "mode: split", "mode: full", 17, "dns.default.upstreams[0]", "not internal", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(goodConfig, tt.old) {
				t.Fatalf("test setup: %q not in config", tt.old)
			}
			data := strings.Replace(goodConfig, tt.old, tt.new, 1)
			if tt.old2 != "" {
				data = strings.Replace(data, tt.old2, tt.new2, 1)
			}
			_, err := Parse("bad.yaml", []byte(data))
			if err == nil {
				t.Fatal("Parse succeeded, want error")
			}
			var ces ConfigErrors
			if !errors.As(err, &ces) || len(ces) == 0 {
				t.Fatalf("error %v (%T) is not ConfigErrors", err, err)
			}
			var found *ConfigError
			for _, ce := range ces {
				if (tt.key == "" || ce.Key == tt.key) && strings.Contains(ce.Msg, tt.inMsg) {
					found = ce
				}
			}
			if found == nil {
				t.Fatalf("no error with key %q and message containing %q in:\n%v", tt.key, tt.inMsg, err)
			}
			if found.File != "bad.yaml" || found.Line != tt.line {
				t.Errorf("position = %s:%d, want bad.yaml:%d (%v)", found.File, found.Line, tt.line, found)
			}
			if tt.key != "" && found.Fix == "" {
				t.Errorf("error %v says nothing about what to do", found)
			}
			if !strings.HasPrefix(found.Error(), "bad.yaml:") {
				t.Errorf("Error() = %q, want it to start with the file name", found.Error())
			}
		})
	}
}

func TestEndpointErrorNamesKey(t *testing.T) {
	data := strings.Replace(goodConfig, "  endpoint: vpn.example.com:51820\n", "", 1)
	c, err := Parse("noep.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	err = c.EndpointError()
	// The key is absent: the error points at its section.
	if !strings.Contains(err.Error(), "noep.yaml:1: interface.endpoint") || !strings.Contains(err.Error(), "set interface.endpoint") {
		t.Errorf("EndpointError = %q", err)
	}
}

func TestDefaultConfig(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("# test\nsearch example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions edns0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ups, err := hostResolvers(rc)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ups, ",") != "192.0.2.53,2001:db8::53" {
		t.Errorf("host resolvers = %v", ups)
	}
	if _, err := hostResolvers(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing resolv.conf gave no error")
	}
	if os.Getenv("SLUICE_SKIP_HOST_RESOLV") == "" {
		if _, err := os.Stat(defaultResolvConf); err == nil {
			c, err := Default()
			if err != nil {
				t.Fatalf("Default: %v", err)
			}
			if c.Interface.Backend != "userspace" || c.Mode != ModeSplit || len(c.DNS.Default.Upstreams) == 0 {
				t.Errorf("defaults = %+v", c)
			}
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "wg.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %04o, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 {
		t.Error("second load returned a different key")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key: err = %v, want refusal", err)
	}
}

// The weak cases an operator hits first: each error names the key path and
// says what to write instead.
func TestParseWeakCases(t *testing.T) {
	tests := []struct {
		name         string
		old, new     string
		line         int
		key          string
		inMsg, inFix string
	}{
		{"tab indentation", "  mtu: 1420\n", "\tmtu: 1420\n", 7, "interface.mtu", "tab in indentation", "spaces"},
		{"quoted number", "mtu: 1420", `mtu: "big"`, 7, "interface.mtu", `"big" is not a whole number`, "without quotes"},
		{"typo with suggestion", "  mtu: 1420\n", "  mtux: 1420\n", 7, "interface.mtux", `unknown key "mtux"`, "did you mean interface.mtu?"},
		{"key in the wrong section", "  mode: split\n", "  mode: split\n  mtu: 1420\n", 11, "dns.mtu", `unknown key "mtu"`, "interface.mtu"},
		{"nested typo", "  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  cache:\n    max_tl: 1h\n", 20, "dns.cache.max_tl", `unknown key "max_tl"`, "did you mean dns.cache.max_ttl?"},
		{"negative duration", "  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  upstream_timeout: -1s\n", 19, "dns.upstream_timeout", "negative", "1s"},
		{"bare number duration", "  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  health:\n    interval: 5\n", 20, "dns.health.interval", "bare number", "5s"},
		{"value where a list goes", "routes: [10.30.0.0/16]", "routes: 10.30.0.0/16", 24, "peers.routes", "is a list", "[a, b]"},
		{"list where a value goes", "mode: split", "mode: [split]", 10, "dns.mode", "single value", ""},
		{"word for a boolean", "  dot: reject\n", "  dot: reject\n  keep_on_stop: yes please\n", 22, "enforce.keep_on_stop", "not true or false", "true or false"},
		{"default route internal", "  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  internal_prefixes: [10.0.0.0/8, '::/0']\n", 19, "dns.internal_prefixes[1]", "default route", "your own networks"},
		{"ambiguous upstream", "upstreams: [10.30.0.53, 10.30.0.54]", "upstreams: [10.30.0.53, 'fd30::53:5353']", 15, "dns.zones[0].upstreams[1]", "ambiguous", ""},
		{"mtu above jumbo", "mtu: 1420", "mtu: 65000", 7, "interface.mtu", "out of range", "1280-9000"},
		{"bad allowlist name", "  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  policy:\n    allowlist: ['bad name']\n", 20, "dns.policy.allowlist[0]", "not a domain name", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(goodConfig, tt.old) {
				t.Fatalf("test setup: %q not in config", tt.old)
			}
			_, err := Parse("bad.yaml", []byte(strings.Replace(goodConfig, tt.old, tt.new, 1)))
			var ces ConfigErrors
			if !errors.As(err, &ces) || len(ces) == 0 {
				t.Fatalf("error %v (%T) is not ConfigErrors", err, err)
			}
			var found *ConfigError
			for _, ce := range ces {
				if ce.Key == tt.key && strings.Contains(ce.Msg, tt.inMsg) {
					found = ce
				}
			}
			if found == nil {
				t.Fatalf("no error with key %q and message containing %q in:\n%v", tt.key, tt.inMsg, err)
			}
			if found.Line != tt.line {
				t.Errorf("line %d, want %d (%v)", found.Line, tt.line, found)
			}
			if !strings.Contains(found.Fix, tt.inFix) {
				t.Errorf("fix %q does not contain %q", found.Fix, tt.inFix)
			}
		})
	}
}

// Every key of the file types is documented: `sluice config reference` is
// generated from them, so a key added without a doc tag fails here.
func TestKeyReferenceDocumentsEveryKey(t *testing.T) {
	ref := KeyReference()
	paths := map[string]KeyDoc{}
	for _, k := range ref {
		if k.Doc == "" || k.Type == "" {
			t.Errorf("key %s has no doc or type: %+v", k.Path, k)
		}
		paths[k.Path] = k
	}
	for _, want := range []string{"interface.mtu", "dns.zones[].upstreams", "dns.cache.max_ttl", "enforce.off_policy_dns", "peers.state_dir", "admin.control_socket"} {
		if _, ok := paths[want]; !ok {
			t.Errorf("reference lacks %s", want)
		}
	}
	if k := paths["interface.mtu"]; k.Allowed != fmt.Sprintf("%d-%d", wgdev.MinMTU, wgdev.MaxMTU) {
		t.Errorf("interface.mtu documents %q, the rule is %d-%d", k.Allowed, wgdev.MinMTU, wgdev.MaxMTU)
	}
	if k := paths["dns.health.interval"]; k.Type != "duration" || k.Default != "5s" {
		t.Errorf("dns.health.interval = %+v", k)
	}
	// Documented defaults agree with the defaults the code applies.
	c, err := Parse("min.yaml", []byte("dns:\n  default:\n    upstreams: [10.30.0.53]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for key, got := range map[string]string{
		"interface.mtu":              strconv.Itoa(c.Interface.MTU),
		"interface.listen_port":      strconv.Itoa(c.Interface.ListenPort),
		"interface.name":             c.Interface.Name,
		"dns.mode":                   string(c.Mode),
		"dns.edns_buffer_size":       strconv.Itoa(c.DNS.EDNSBufferSize),
		"dns.upstream_timeout":       c.DNS.UpstreamTimeout.String(),
		"dns.cache.size":             strconv.Itoa(c.DNS.Cache.Size),
		"dns.cache.max_ttl":          strings.TrimSuffix(c.DNS.Cache.MaxTTL.String(), "0m0s"),
		"dns.health.interval":        c.DNS.Health.Interval.String(),
		"dns.health.timeout":         c.DNS.Health.Timeout.String(),
		"dns.health.failures":        strconv.Itoa(c.DNS.Health.Failures),
		"dns.limits.peer_qps":        strconv.Itoa(c.DNS.Limits.PeerQPS),
		"dns.limits.peer_burst":      strconv.Itoa(c.DNS.Limits.PeerBurst),
		"dns.limits.max_inflight":    strconv.Itoa(c.DNS.Limits.MaxInflight),
		"enforce.dot":                string(c.Enforce.DoT),
		"enforce.table":              c.FirewallTable,
		"peers.persistent_keepalive": c.Peers.PersistentKeepalive.String(),
		"admin.listen":               c.Admin.Listen,
	} {
		if d := paths[key].Default; d != got {
			t.Errorf("%s: documented default %q, applied %q", key, d, got)
		}
	}
}

func TestParseUpstreamsTyped(t *testing.T) {
	c, err := Parse("good.yaml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	u := c.DNS.Default.Upstreams[0]
	if u.Proto != dnsproxy.ProtoTLS || u.Addr != netip.MustParseAddrPort("9.9.9.9:853") || u.ServerName != "dns.quad9.net" {
		t.Errorf("default upstream = %+v", u)
	}
	for in, want := range map[string]string{
		"[fd30::53]:5353": "[fd30::53]:5353",
		"[fd30::53:5353]": "[fd30::53:5353]:53",
		"fd30::53":        "[fd30::53]:53",
		"2001:db8::1":     "[2001:db8::1]:53",
	} {
		u, err := dnsproxy.ParseUpstream(in)
		if err != nil || u.String() != want {
			t.Errorf("ParseUpstream(%q) = %v, %v; want %s", in, u, err, want)
		}
	}
	if _, err := dnsproxy.ParseUpstream("fd30::53:5353"); !errors.Is(err, dnsproxy.ErrAmbiguousUpstream) || !strings.Contains(err.Error(), "[fd30::53]:5353") {
		t.Errorf("fd30::53:5353: %v, want ambiguous with the bracketed forms", err)
	}
}

func TestParseWarnings(t *testing.T) {
	data := strings.Replace(goodConfig, "  endpoint: vpn.example.com:51820\n", "", 1)
	data = strings.Replace(data, "routes: [10.30.0.0/16]", "routes: [10.30.0.0/16, 10.30.5.0/24, 10.30.0.0/16]", 1)
	c, err := Parse("warn.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"interface.endpoint": "--endpoint",
		"peers.routes[1]":    "redundant",
		"peers.routes[2]":    "twice",
	}
	for _, w := range c.Warnings {
		if s, ok := want[w.Key]; ok && strings.Contains(w.Error(), s) {
			delete(want, w.Key)
		}
	}
	if len(want) > 0 {
		t.Errorf("missing warnings %v in %v", want, c.Warnings)
	}
}

// Without peers.state_dir each interface gets its own store; an interface
// whose key is still in the shared root (the old default) keeps it there,
// with a warning saying how to move.
func TestStateDirPerInterface(t *testing.T) {
	root := t.TempDir()
	old := stateRoot
	stateRoot = root
	t.Cleanup(func() { stateRoot = old })
	doc := strings.Replace(goodConfig, "  state_dir: /tmp/sluice-test\n", "", 1)
	doc = strings.Replace(doc, "  private_key_file: /tmp/sluice-test/wgt0.key\n", "", 1)
	c, err := Parse("a.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "wgt0"); c.Peers.StateDir != want || c.Interface.PrivateKeyFile != filepath.Join(want, "wgt0.key") {
		t.Errorf("state %s, key %s; want both in %s", c.Peers.StateDir, c.Interface.PrivateKeyFile, want)
	}
	c1, err := Parse("b.yaml", []byte(strings.Replace(doc, "name: wgt0", "name: wgt1", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if c1.Peers.StateDir == c.Peers.StateDir {
		t.Errorf("two interfaces share %s", c.Peers.StateDir)
	}
	// Legacy layout: <root>/wgt0.key and <root>/peers.json.
	if err := os.WriteFile(filepath.Join(root, "wgt0.key"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Parse("a.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.Peers.StateDir != root || c.Interface.PrivateKeyFile != filepath.Join(root, "wgt0.key") {
		t.Errorf("legacy install moved: state %s key %s", c.Peers.StateDir, c.Interface.PrivateKeyFile)
	}
	found := false
	for _, w := range c.Warnings {
		found = found || w.Key == "peers.state_dir" && strings.Contains(w.Fix, filepath.Join(root, "wgt0"))
	}
	if !found {
		t.Errorf("no warning about the shared legacy directory: %v", c.Warnings)
	}
	// A store in the root whose owner kept its key elsewhere stays too.
	root2 := t.TempDir()
	stateRoot = root2
	if err := os.WriteFile(filepath.Join(root2, "peers.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, _ := Parse("a.yaml", []byte(doc)); c == nil || c.Peers.StateDir != root2 {
		t.Errorf("legacy store with a key elsewhere: %+v", c)
	}
	stateRoot = root
	// Once moved, the per-interface directory wins.
	os.MkdirAll(filepath.Join(root, "wgt0"), 0o700)
	os.WriteFile(filepath.Join(root, "wgt0", "wgt0.key"), []byte("x"), 0o600)
	if c, _ = Parse("a.yaml", []byte(doc)); c.Peers.StateDir != filepath.Join(root, "wgt0") {
		t.Errorf("after the move: state %s", c.Peers.StateDir)
	}
}

// Preflight finds every file problem before Run changes the host.
func TestPreflight(t *testing.T) {
	dir := t.TempDir()
	block := filepath.Join(dir, "block.txt")
	os.WriteFile(block, []byte("ok.example\nbad name\n"), 0o644)
	key := filepath.Join(dir, "k", "gw.key")
	os.MkdirAll(filepath.Dir(key), 0o700)
	os.WriteFile(key, []byte("not a key\n"), 0o600)
	doc := strings.NewReplacer("/tmp/sluice-test/wgt0.key", key, "state_dir: /tmp/sluice-test", "state_dir: "+filepath.Join(dir, "state"),
		"  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  query_log: "+filepath.Join(dir, "log", "q.log")+"\n  policy:\n    blocklist_file: "+block+"\n").Replace(goodConfig)
	c, err := Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	err = Preflight(c)
	var ces ConfigErrors
	if !errors.As(err, &ces) {
		t.Fatalf("Preflight = %v", err)
	}
	keys := map[string]string{}
	for _, e := range ces {
		keys[e.Key] = e.Msg
	}
	if !strings.Contains(keys["dns.policy.blocklist_file"], block+":2") {
		t.Errorf("blocklist error %q does not name %s:2", keys["dns.policy.blocklist_file"], block)
	}
	if !strings.Contains(keys["interface.private_key_file"], "not a base64 WireGuard key") {
		t.Errorf("key error %q", keys["interface.private_key_file"])
	}
	for _, d := range []string{filepath.Join(dir, "log"), filepath.Join(dir, "state")} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s not created: %v", d, err)
		}
	}
}

// A bad duration does not hide the other problems of the file, and every
// problem comes in file order.
func TestParseReportsEverythingInOrder(t *testing.T) {
	data := strings.NewReplacer(
		"  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  upstream_timeout: -1s\n",
		"upstreams: [10.30.0.53, 10.30.0.54]", "upstreams: [10.30.0.53, 'fd30::53:5353']",
		"mode: split", "mode: half",
	).Replace(goodConfig)
	_, err := Parse("bad.yaml", []byte(data))
	var ces ConfigErrors
	if !errors.As(err, &ces) || len(ces) != 3 {
		t.Fatalf("want three errors, got %v", err)
	}
	for i, want := range []string{"dns.mode", "dns.zones[0].upstreams[1]", "dns.upstream_timeout"} {
		if ces[i].Key != want {
			t.Errorf("error %d is %s, want %s (file order)", i, ces[i].Key, want)
		}
	}
}

// Named sections (a map of structs, like a future groups: section) are
// checked key by key and documented as <name>.
func TestCheckNodeMaps(t *testing.T) {
	type entry struct {
		Routes []string `yaml:"routes" doc:"r" kind:"CIDR"`
		TTL    string   `yaml:"ttl" doc:"t" kind:"duration"`
	}
	type doc struct {
		Groups map[string]entry `yaml:"groups" doc:"g"`
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte("groups:\n  eng:\n    routes: [10.0.0.0/8]\n    ttl: 5\n  ops:\n    rutes: []\n"), &root); err != nil {
		t.Fatal(err)
	}
	var errs ConfigErrors
	checkNode("m.yaml", root.Content[0], reflect.TypeFor[doc](), "", "", &errs)
	if len(errs) != 2 || errs[0].Key != "groups.eng.ttl" || errs[1].Key != "groups.ops.rutes" || !strings.Contains(errs[1].Fix, "groups.ops.routes") {
		t.Errorf("errors %v", errs)
	}
	var ref []KeyDoc
	walkKeys(reflect.TypeFor[doc](), "", &ref)
	if len(ref) != 3 || ref[1].Path != "groups.<name>.routes" || ref[0].Type != "named sections" {
		t.Errorf("reference %+v", ref)
	}
}
