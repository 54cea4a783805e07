package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/gateway"
)

// runOut is run with standard output going to w.
func runOut(t *testing.T, w io.Writer, args ...string) (string, int) {
	t.Helper()
	root := newRoot()
	var errb bytes.Buffer
	root.SetOut(w)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.Execute()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		return errb.String(), ee.code
	case err != nil:
		return errb.String() + err.Error(), 1
	}
	return errb.String(), 0
}

// useInstalled points the installed configuration at path for one test.
func useInstalled(t *testing.T, path string) {
	old := installedConfig
	installedConfig = path
	t.Cleanup(func() { installedConfig = old })
	t.Setenv("SLUICE_CONFIG", "")
}

// fakeDaemon answers /v1/status on sock like a running gateway would.
func fakeDaemon(t *testing.T, sock string, st gateway.Status) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/status", func(w http.ResponseWriter, _ *http.Request) { json.NewEncoder(w).Encode(st) })
	mux.HandleFunc("/v1/peers/sync", func(http.ResponseWriter, *http.Request) {})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// Without -c and SLUICE_CONFIG every command reads the installed file and
// says so on stderr; without the installed file, the embedded defaults.
func TestInstalledConfigIsTheDefault(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	useInstalled(t, cfg)
	out, errs, code := run(t, "peer", "add", "bob")
	if code != 0 || !strings.Contains(out, "added bob/default") {
		t.Fatalf("peer add without -c: %d %s %s", code, out, errs)
	}
	if !strings.Contains(errs, "config: "+cfg) {
		t.Errorf("stderr does not say which config was used: %q", errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "peers.json")); err != nil {
		t.Errorf("the peer did not land in the installed config's store: %v", err)
	}
	list, _, code := run(t, "peer", "list", "--json")
	var v []map[string]any
	if code != 0 || json.Unmarshal([]byte(list), &v) != nil || len(v) != 1 {
		t.Errorf("peer list --json is not clean JSON with the peer: %q", list)
	}
	// SLUICE_CONFIG wins over the installed file, -c over both.
	other, _ := writeConfig(t, "")
	t.Setenv("SLUICE_CONFIG", other)
	if _, errs, _ := run(t, "peer", "list"); !strings.Contains(errs, "config: "+other+" (SLUICE_CONFIG)") {
		t.Errorf("SLUICE_CONFIG not used: %q", errs)
	}
	if _, errs, _ := run(t, "peer", "list", "-c", cfg); strings.Contains(errs, "config:") {
		t.Errorf("-c should need no announcement: %q", errs)
	}
	useInstalled(t, filepath.Join(t.TempDir(), "absent.yaml"))
	if _, errs, _ := run(t, "status"); !strings.Contains(errs, "config: embedded defaults") {
		t.Errorf("no installed file: stderr %q does not say embedded defaults", errs)
	}
	if _, errs, _ := run(t, "version"); strings.Contains(errs, "config:") {
		t.Errorf("version reads no config but says %q", errs)
	}
}

// A file that disagrees with the daemon on its socket (mode, key, name) is
// refused instead of rendering a config that can never handshake.
func TestPeerConfigRefusesWhenDaemonDisagrees(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	if _, errs, code := run(t, "peer", "add", "alice", "-c", cfg); code != 0 {
		t.Fatal(errs)
	}
	if _, errs, code := run(t, "peer", "config", "alice", "-c", cfg); code != 0 { // creates the gateway key
		t.Fatal(errs)
	}
	if _, err := gateway.ReadKey(filepath.Join(dir, "gw.key")); err != nil {
		t.Fatal(err)
	}
	other, _ := wgtypes.GeneratePrivateKey()
	fakeDaemon(t, filepath.Join(dir, "ctl.sock"), gateway.Status{Interface: gateway.InterfaceStatus{
		Name: "sltest0", Mode: "full", PublicKey: other.PublicKey().String()}})
	out, errs, code := run(t, "peer", "config", "alice", "-c", cfg)
	if code == 0 || out != "" {
		t.Fatalf("rendered despite the daemon disagreeing: code %d\n%s", code, out)
	}
	for _, want := range []string{"disagrees", "mode split, the daemon runs full mode", "the daemon's is " + other.PublicKey().String()} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q: %s", want, errs)
		}
	}
	if _, errs, code := run(t, "peer", "add", "carol", "-c", cfg); code == 0 || !strings.Contains(errs, "disagrees") {
		t.Errorf("peer add against a disagreeing daemon: %d %s", code, errs)
	}

	cfg2, dir2 := writeConfig(t, "")
	if _, errs, code := run(t, "peer", "add", "alice", "-c", cfg2); code != 0 {
		t.Fatal(errs)
	}
	k2, err := gateway.LoadOrCreateKey(filepath.Join(dir2, "gw.key"))
	if err != nil {
		t.Fatal(err)
	}
	fakeDaemon(t, filepath.Join(dir2, "ctl.sock"), gateway.Status{Interface: gateway.InterfaceStatus{
		Name: "sltest0", Mode: "split", PublicKey: k2.PublicKey().String()}})
	if out, errs, code := run(t, "peer", "config", "alice", "-c", cfg2); code != 0 || !strings.Contains(out, "PublicKey = "+k2.PublicKey().String()) {
		t.Errorf("an agreeing daemon: %d %s", code, errs)
	}
}

func TestPeerAddRefusesGatewayKey(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	k, err := gateway.LoadOrCreateKey(filepath.Join(dir, "gw.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, errs, code := run(t, "peer", "add", "mallory", "--public-key", k.PublicKey().String(), "-c", cfg)
	if code == 0 || !strings.Contains(errs, "gateway's own public key") {
		t.Errorf("peer add with the gateway's key: code %d, %q", code, errs)
	}
}

func TestPeerLintReadsBoundedSize(t *testing.T) {
	big := filepath.Join(t.TempDir(), "big.conf")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	f.Close()
	for _, path := range []string{big, "/dev/zero"} {
		_, errs, code := run(t, "peer", "lint", path)
		if code != 2 || !strings.Contains(errs, "too large") {
			t.Errorf("lint %s: code %d, stderr %q; want exit 2, too large", path, code, errs)
		}
	}
}

// Client configs are 0600 whatever the file was; the "private key" note
// appears only when there is one; a key on a terminal or pipe is warned of.
func TestPeerConfigPrivateKeyHandling(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	run(t, "peer", "add", "alice", "-c", cfg)
	byo, _ := wgtypes.GeneratePrivateKey()
	run(t, "peer", "add", "bob", "--public-key", byo.PublicKey().String(), "-c", cfg)

	out := filepath.Join(dir, "alice.conf")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := run(t, "peer", "config", "alice", "-o", out, "-c", cfg)
	if fi, err := os.Stat(out); code != 0 || err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("-o onto an existing 0644 file: code %d, %v, mode %v; want 0600", code, err, fi.Mode().Perm())
	}
	if !strings.Contains(errs, "holds the device's private key") {
		t.Errorf("-o for a generated key: %q", errs)
	}
	_, errs, _ = run(t, "peer", "config", "bob", "-o", filepath.Join(dir, "bob.conf"), "-c", cfg)
	if strings.Contains(errs, "holds") && !strings.Contains(errs, "no private key") {
		t.Errorf("-o for a device with its own key claims a private key: %q", errs)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go io.Copy(io.Discard, r)
	errs, code = runOut(t, w, "peer", "config", "alice", "-c", cfg)
	w.Close()
	if code != 0 || !strings.Contains(errs, "warning: this config holds alice/default's private key") {
		t.Errorf("private key to a pipe: code %d, stderr %q", code, errs)
	}
	var buf bytes.Buffer // a file the shell redirected to is not warned about; a buffer stands in
	if errs, _ := runOut(t, &buf, "peer", "config", "bob", "-c", cfg); strings.Contains(errs, "warning") {
		t.Errorf("no private key, still warned: %q", errs)
	}
}

// check opens every file up would, names bad entries with file:line, and
// refuses two configurations sharing one store.
func TestCheckFindsWhatUpWouldTripOver(t *testing.T) {
	dir := t.TempDir()
	block := filepath.Join(dir, "block.txt")
	doh := filepath.Join(dir, "doh.txt")
	os.WriteFile(block, []byte("ads.example\n# comment\nnot a name\n"), 0o644)
	os.WriteFile(doh, []byte("192.0.2.10\nbogus\n"), 0o644)
	qlog := filepath.Join(dir, "logs", "deep", "queries.log")
	cfg, _ := writeConfig(t, "enforce:\n  doh_ips_file: "+doh+"\n")
	data, _ := os.ReadFile(cfg)
	data = bytes.Replace(data, []byte("  search_domains: [corp.example]\n"),
		[]byte("  search_domains: [corp.example]\n  query_log: "+qlog+"\n  policy:\n    blocklist_file: "+block+"\n"), 1)
	os.WriteFile(cfg, data, 0o600)
	_, errs, code := run(t, "check", "-c", cfg)
	if code != 1 {
		t.Fatalf("check: code %d, want 1: %s", code, errs)
	}
	for _, want := range []string{"dns.policy.blocklist_file", block + ":3", "enforce.doh_ips_file", doh + ":2"} {
		if !strings.Contains(errs, want) {
			t.Errorf("check output lacks %q:\n%s", want, errs)
		}
	}
	if _, err := os.Stat(filepath.Dir(qlog)); err == nil {
		t.Errorf("check created the query log's directory: it must change nothing")
	}

	// A key file whose directory cannot exist.
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o600)
	bad, _ := writeConfig(t, "")
	data, _ = os.ReadFile(bad)
	data = bytes.Replace(data, []byte("private_key_file: "), []byte("private_key_file: "+blocker+"/sub/"), 1)
	data = bytes.Replace(data, []byte("  search_domains: [corp.example]\n"),
		[]byte("  search_domains: [corp.example]\n  query_log: "+blocker+"/q.log\n"), 1)
	os.WriteFile(bad, data, 0o600)
	_, errs, code = run(t, "check", "-c", bad)
	if code != 1 || !strings.Contains(errs, "interface.private_key_file") || !strings.Contains(errs, "dns.query_log") {
		t.Errorf("key and query log directories under a file: code %d, %s", code, errs)
	}
}

func TestCheckRefusesSharedStore(t *testing.T) {
	a, dir := writeConfig(t, "")
	data, _ := os.ReadFile(a)
	b := filepath.Join(t.TempDir(), "b.yaml")
	other := strings.NewReplacer("name: sltest0", "name: sltest1", filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "ctl1.sock"),
		filepath.Join(dir, "gw.key"), filepath.Join(dir, "gw1.key")).Replace(string(data))
	os.WriteFile(b, []byte(other), 0o600)
	if _, errs, code := run(t, "check", "-c", a); code != 0 {
		t.Fatalf("alone: %s", errs)
	}
	_, errs, code := run(t, "check", "-c", a, b)
	if code != 1 || !strings.Contains(errs, "peers.state_dir") || !strings.Contains(errs, "also used by "+b) {
		t.Errorf("two configs on one store: code %d, %s", code, errs)
	}
	// The installed directory is looked at without being named.
	useInstalled(t, filepath.Join(filepath.Dir(b), "sluice.yaml"))
	if _, errs, code := run(t, "check", "-c", a); code != 1 || !strings.Contains(errs, "also used by "+b) {
		t.Errorf("sibling in the installed directory: code %d, %s", code, errs)
	}
}

func TestConfigReferenceAndWarnings(t *testing.T) {
	out, _, code := run(t, "config", "reference")
	for _, want := range []string{"interface.mtu (integer)  default: 1420  allowed: 1280-9000", "dns.zones[].upstreams", "enforce.off_policy_dns", "duration"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("config reference lacks %q", want)
		}
	}
	help, _, _ := run(t, "check", "--help")
	if !strings.Contains(help, "dns.health.interval (duration)") {
		t.Error("check --help does not document the keys")
	}
	cfg, _ := writeConfig(t, "")
	data, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, bytes.Replace(data, []byte("  endpoint: 192.0.2.1:51820\n"), nil, 1), 0o600)
	out, errs, code := run(t, "check", "-c", cfg)
	if code != 0 || !strings.Contains(out, ": ok") || !strings.Contains(errs, "interface.endpoint: warning") || !strings.Contains(errs, "--endpoint") {
		t.Errorf("missing endpoint: code %d, out %q, stderr %q", code, out, errs)
	}
}

// With no daemon on the file's socket but one beside it, the command says so.
func TestPeerConfigNotesOtherDaemon(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	run(t, "peer", "add", "alice", "-c", cfg)
	fakeDaemon(t, filepath.Join(dir, "wg9.sock"), gateway.Status{Interface: gateway.InterfaceStatus{Name: "wg9", Mode: "full"}})
	out, errs, code := run(t, "peer", "config", "alice", "-c", cfg)
	if code != 0 || out == "" || !strings.Contains(errs, "one runs interface wg9 (full mode)") {
		t.Errorf("code %d, stderr %q", code, errs)
	}
}
