package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// runIn executes the CLI in-process with stdin and returns stdout, stderr
// and the exit status main would use.
func runIn(t *testing.T, stdin io.Reader, args ...string) (string, string, int) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(stdin)
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		if _, ok := err.(exitError); !ok {
			errb.WriteString(err.Error())
		}
	}
	return out.String(), errb.String(), exitCodeOf(err)
}

func runC(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runIn(t, strings.NewReader(""), args...)
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := runC(t, args...)
	if code != 0 {
		t.Fatalf("sluice %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func decodePeers(t *testing.T, out string) []peerJSON {
	t.Helper()
	var v []peerJSON
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("not a JSON array of peers: %v\n%s", err, out)
	}
	return v
}

func TestPeerShowAndRemoveEveryDevice(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	for _, id := range []string{"alice/laptop", "alice/phone", "bob/laptop"} {
		mustRun(t, "peer", "add", id, "-c", cfg)
	}
	out := mustRun(t, "peer", "show", "alice", "-c", cfg)
	if !strings.Contains(out, "peer: alice/laptop") || !strings.Contains(out, "peer: alice/phone") || strings.Contains(out, "bob") {
		t.Errorf("show alice:\n%s", out)
	}
	v := decodePeers(t, mustRun(t, "peer", "show", "alice/phone", "--json", "-c", cfg))
	if len(v) != 1 || v[0].ID != "alice/phone" || v[0].State != "active" || v[0].IPv4 == "" {
		t.Errorf("show alice/phone --json = %+v", v)
	}
	if _, _, code := runC(t, "peer", "show", "carol", "-c", cfg); code != exitNotFound {
		t.Errorf("show carol: exit %d, want %d", code, exitNotFound)
	}
	if _, _, code := runC(t, "peer", "show", "Alice", "-c", cfg); code != exitUsage {
		t.Errorf("show Alice (invalid name): exit %d, want %d", code, exitUsage)
	}

	// Removing a whole user without a terminal needs --yes.
	_, errs, code := runC(t, "peer", "remove", "alice", "-c", cfg)
	if code != exitUsage || !strings.Contains(errs, "--yes") {
		t.Errorf("remove alice without --yes: exit %d, %q", code, errs)
	}
	if v := decodePeers(t, mustRun(t, "peer", "list", "--json", "-c", cfg)); len(v) != 3 {
		t.Fatalf("a refused remove removed peers: %+v", v)
	}
	v = decodePeers(t, mustRun(t, "peer", "remove", "alice", "--yes", "--json", "-c", cfg))
	if len(v) != 2 || v[0].ID != "alice/laptop" || v[1].ID != "alice/phone" {
		t.Errorf("remove alice --yes --json = %+v", v)
	}
	if v := decodePeers(t, mustRun(t, "peer", "list", "--json", "-c", cfg)); len(v) != 1 || v[0].ID != "bob/laptop" {
		t.Errorf("after remove alice: %+v", v)
	}
	if _, _, code := runC(t, "peer", "remove", "alice", "--yes", "-c", cfg); code != exitNotFound {
		t.Errorf("remove alice again: exit %d, want %d", code, exitNotFound)
	}
	// One device needs no confirmation, as before.
	mustRun(t, "peer", "remove", "bob/laptop", "-c", cfg)
}

func TestPeerDisableEnable(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	mustRun(t, "peer", "add", "alice/laptop", "-c", cfg)
	mustRun(t, "peer", "add", "alice/phone", "-c", cfg)
	v := decodePeers(t, mustRun(t, "peer", "disable", "alice", "--json", "-c", cfg))
	if len(v) != 2 || v[0].State != "disabled" || v[1].State != "disabled" {
		t.Fatalf("disable alice = %+v", v)
	}
	list := mustRun(t, "peer", "list", "-c", cfg)
	if strings.Count(list, "disabled") != 2 {
		t.Errorf("list does not show disabled peers:\n%s", list)
	}
	v = decodePeers(t, mustRun(t, "peer", "enable", "alice/phone", "--json", "-c", cfg))
	if len(v) != 1 || v[0].State != "active" {
		t.Errorf("enable alice/phone = %+v", v)
	}
	if _, _, code := runC(t, "peer", "disable", "nobody", "-c", cfg); code != exitNotFound {
		t.Errorf("disable nobody: exit %d", code)
	}
}

func TestPeerExpires(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	v := decodePeers(t, mustRun(t, "peer", "add", "alice", "--expires", "90d", "--json", "-c", cfg))
	if len(v) != 1 || v[0].ExpiresInSeconds == nil || v[0].Expires == nil {
		t.Fatalf("add --expires 90d --json = %+v", v)
	}
	if s := *v[0].ExpiresInSeconds; s < 90*86400-60 || s > 90*86400 {
		t.Errorf("expires_in_seconds = %d, want about %d", s, 90*86400)
	}
	v = decodePeers(t, mustRun(t, "peer", "expire", "alice", "never", "--json", "-c", cfg))
	if v[0].Expires != nil || v[0].ExpiresInSeconds != nil {
		t.Errorf("expire never = %+v", v[0])
	}
	mustRun(t, "peer", "expire", "alice", "2001-01-01T00:00:00Z", "-c", cfg)
	v = decodePeers(t, mustRun(t, "peer", "show", "alice", "--json", "-c", cfg))
	if v[0].State != "expired" || *v[0].ExpiresInSeconds >= 0 {
		t.Errorf("after expiring in the past: %+v", v[0])
	}
	for _, bad := range []string{"soon", "-3d", "0d"} {
		if _, _, code := runC(t, "peer", "expire", "alice", bad, "-c", cfg); code != exitUsage {
			t.Errorf("expire %q: exit %d, want %d", bad, code, exitUsage)
		}
	}
	if _, _, code := runC(t, "peer", "add", "bob", "--expires", "tomorrow", "-c", cfg); code != exitUsage {
		t.Errorf("add --expires tomorrow: exit %d", code)
	}
}

func TestPeerRename(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	a := decodePeers(t, mustRun(t, "peer", "add", "alice/laptop", "--json", "-c", cfg))[0]
	mustRun(t, "peer", "add", "bob/laptop", "-c", cfg)
	v := decodePeers(t, mustRun(t, "peer", "rename", "alice/laptop", "alice/work", "--json", "-c", cfg))
	if len(v) != 1 || v[0].ID != "alice/work" || v[0].PublicKey != a.PublicKey || v[0].IPv4 != a.IPv4 {
		t.Errorf("rename = %+v", v)
	}
	if _, _, code := runC(t, "peer", "rename", "alice", "bob/x", "-c", cfg); code != exitUsage {
		t.Errorf("rename user to device: exit %d", code)
	}
	if _, _, code := runC(t, "peer", "rename", "alice/work", "bob/laptop", "-c", cfg); code != exitConflict {
		t.Errorf("rename onto bob/laptop: exit %d, want %d", code, exitConflict)
	}
	if _, _, code := runC(t, "peer", "rename", "zed", "zz", "-c", cfg); code != exitNotFound {
		t.Errorf("rename zed: exit %d", code)
	}
	mustRun(t, "peer", "rename", "alice", "alice.smith", "-c", cfg)
	if v := decodePeers(t, mustRun(t, "peer", "show", "alice.smith", "--json", "-c", cfg)); v[0].ID != "alice.smith/work" {
		t.Errorf("after renaming the user: %+v", v)
	}
}

func TestPeerRotate(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	old := decodePeers(t, mustRun(t, "peer", "add", "alice/laptop", "--json", "-c", cfg))[0]
	conf := filepath.Join(dir, "alice.conf")
	if err := os.WriteFile(conf, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := runC(t, "peer", "rotate", "alice/laptop", "-o", conf, "-c", cfg)
	if code != 0 {
		t.Fatalf("rotate: exit %d %s", code, errs)
	}
	fi, err := os.Stat(conf)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("rotated config mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	data, _ := os.ReadFile(conf)
	now := decodePeers(t, mustRun(t, "peer", "show", "alice/laptop", "--json", "-c", cfg))[0]
	if now.PublicKey == old.PublicKey || now.IPv4 != old.IPv4 {
		t.Errorf("rotate: key %s → %s, address %s → %s", old.PublicKey, now.PublicKey, old.IPv4, now.IPv4)
	}
	var priv string
	for _, l := range strings.Split(string(data), "\n") {
		if k, ok := strings.CutPrefix(l, "PrivateKey = "); ok {
			priv = k
		}
	}
	k, err := wgtypes.ParseKey(priv)
	if err != nil || k.PublicKey().String() != now.PublicKey {
		t.Errorf("the written config's private key does not belong to the new public key:\n%s", data)
	}
	// Printed to stdout without -o.
	out := mustRun(t, "peer", "rotate", "alice/laptop", "-c", cfg)
	if !strings.Contains(out, "[Interface]") || !strings.Contains(out, "PrivateKey = ") {
		t.Errorf("rotate without -o:\n%s", out)
	}
	// A device with its own key pair must give its new public key.
	own, _ := wgtypes.GeneratePrivateKey()
	mustRun(t, "peer", "add", "bob", "--public-key", own.PublicKey().String(), "-c", cfg)
	if _, errs, code := runC(t, "peer", "rotate", "bob", "-c", cfg); code != exitUsage || !strings.Contains(errs, "own public key") {
		t.Errorf("rotate own-key peer without --public-key: exit %d %q", code, errs)
	}
	own2, _ := wgtypes.GeneratePrivateKey()
	v := decodePeers(t, mustRun(t, "peer", "rotate", "bob", "--public-key", own2.PublicKey().String(), "--json", "-c", cfg))
	if v[0].PublicKey != own2.PublicKey().String() || !v[0].OwnKey {
		t.Errorf("rotate bob --public-key = %+v", v[0])
	}
	if _, _, code := runC(t, "peer", "rotate", "carol", "-c", cfg); code != exitNotFound {
		t.Errorf("rotate carol: exit %d", code)
	}
}

func TestPeerImportExport(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	mustRun(t, "peer", "add", "bob", "-c", cfg)
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	psk, _ := wgtypes.GenerateKey()
	server := fmt.Sprintf(`[Interface]
PrivateKey = %s
ListenPort = 51820

[Peer]
# Name = alice/laptop
PublicKey = %s
PresharedKey = %s
AllowedIPs = 10.20.0.77/32, fd20::77/128

[Peer]
PublicKey = %s
AllowedIPs = 10.20.0.78/32
`, k1, k1.PublicKey(), psk, k2.PublicKey())
	wg0 := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(wg0, []byte(server), 0o600); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "peer", "import", wg0, "-c", cfg)
	if !strings.Contains(out, "added alice/laptop: 10.20.0.77, fd20::77") || !strings.Contains(out, "added peer-2/default: 10.20.0.78") {
		t.Errorf("import:\n%s", out)
	}
	var res importJSON
	if err := json.Unmarshal([]byte(mustRun(t, "peer", "import", wg0, "--json", "-c", cfg)), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Added) != 0 || len(res.Unchanged) != 2 {
		t.Errorf("second import = %+v, want everything unchanged", res)
	}
	// A conflict: bob's address in another peer.
	bob := decodePeers(t, mustRun(t, "peer", "show", "bob", "--json", "-c", cfg))[0]
	k3, _ := wgtypes.GeneratePrivateKey()
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte(fmt.Sprintf("[Peer]\nPublicKey = %s\nAllowedIPs = %s/32\n", k3.PublicKey(), bob.IPv4)), 0o600)
	if _, errs, code := runC(t, "peer", "import", bad, "-c", cfg); code != exitConflict || !strings.Contains(errs, "already used by bob/default") {
		t.Errorf("conflicting import: exit %d %q", code, errs)
	}

	wg := mustRun(t, "peer", "export", "--format", "wg", "-c", cfg)
	if strings.Contains(wg, k1.String()) || !strings.Contains(wg, "# Name = alice/laptop") || !strings.Contains(wg, "PresharedKey = "+psk.String()) {
		t.Errorf("export --format wg:\n%s", wg)
	}
	mustRun(t, "peer", "disable", "peer-2", "-c", cfg)
	if wg := mustRun(t, "peer", "export", "--format", "wg", "-c", cfg); strings.Contains(wg, "peer-2") {
		t.Errorf("export without --all lists a disabled peer:\n%s", wg)
	}
	if wg := mustRun(t, "peer", "export", "--format", "wg", "--all", "-c", cfg); !strings.Contains(wg, "peer-2") {
		t.Errorf("export --all lacks the disabled peer:\n%s", wg)
	}
	v := decodePeers(t, mustRun(t, "peer", "export", "--json", "-c", cfg))
	if len(v) != 3 {
		t.Errorf("export --json = %+v", v)
	}
	jsonOut := mustRun(t, "peer", "export", "-c", cfg)
	if strings.Contains(jsonOut, "private") || strings.Contains(jsonOut, "preshared") {
		t.Errorf("JSON export holds secrets:\n%s", jsonOut)
	}
	if _, _, code := runC(t, "peer", "export", "--format", "xml", "-c", cfg); code != exitUsage {
		t.Errorf("export --format xml: exit %d", code)
	}
}

func TestPeerUsageExitCodes(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	for _, args := range [][]string{
		{"peer", "show"},
		{"peer", "show", "a", "b"},
		{"peer", "list", "--frobnicate"},
		{"peer", "rename", "a"},
		{"peer", "remove", "bad/Name"},
	} {
		if _, _, code := runC(t, append(args, "-c", cfg)...); code != exitUsage {
			t.Errorf("sluice %s: exit %d, want %d", strings.Join(args, " "), code, exitUsage)
		}
	}
	broken, _ := writeConfig(t, "enforce:\n  dot: maybe\n")
	if _, _, code := runC(t, "peer", "list", "-c", broken); code != exitUsage {
		t.Errorf("peer list with an invalid config: exit %d, want %d", code, exitUsage)
	}
	out, _, _ := runC(t, "peer", "--help")
	if !strings.Contains(out, "Exit status: 0 ok, 1 failure, 2 usage") {
		t.Errorf("peer --help does not document exit codes:\n%s", out)
	}
}

func TestPeerConfigPlatform(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	mustRun(t, "peer", "add", "alice/mac", "-c", cfg)
	for _, plat := range []string{"ios", "macos"} {
		out := mustRun(t, "peer", "config", "alice/mac", "--format", "mobileconfig", "--platform", plat, "-c", cfg)
		if !strings.Contains(out, "<string>com.wireguard."+plat+"</string>") {
			t.Errorf("--platform %s: profile lacks com.wireguard.%s", plat, plat)
		}
	}
	if _, _, code := runC(t, "peer", "config", "alice/mac", "--format", "mobileconfig", "--platform", "tvos", "-c", cfg); code == 0 {
		t.Error("--platform tvos accepted")
	}
}

func TestAddressQuarantineConfig(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	data, _ := os.ReadFile(cfg)
	set := func(v string) {
		t.Helper()
		out := strings.Replace(string(data), "  routes: [10.30.0.0/16]\n", "  routes: [10.30.0.0/16]\n  address_quarantine: "+v+"\n", 1)
		if err := os.WriteFile(cfg, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set("soon")
	if _, errs, code := runC(t, "peer", "list", "-c", cfg); code != exitUsage || !strings.Contains(errs, "peers.address_quarantine") {
		t.Errorf("invalid address_quarantine: exit %d %q", code, errs)
	}
	set("1h")
	a := decodePeers(t, mustRun(t, "peer", "add", "alice", "--json", "-c", cfg))[0]
	mustRun(t, "peer", "remove", "alice/default", "-c", cfg)
	b := decodePeers(t, mustRun(t, "peer", "add", "bob", "--json", "-c", cfg))[0]
	if a.IPv4 == b.IPv4 || a.IPv6 == b.IPv6 {
		t.Errorf("bob got removed alice's address %s %s", b.IPv4, b.IPv6)
	}
}

func TestExitCodeDaemonNotRunning(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	if _, errs, code := runC(t, "status", "-c", cfg); code != exitNotRunning {
		t.Errorf("status without a daemon: exit %d, want %d (%s)", code, exitNotRunning, errs)
	}
}

func TestExitCodesOfAddAndConfig(t *testing.T) {
	cfg, _ := writeConfig(t, "")
	if _, _, code := runC(t, "peer", "add", "Bad Name", "-c", cfg); code != exitUsage {
		t.Errorf("add with an invalid name: exit %d, want %d", code, exitUsage)
	}
	mustRun(t, "peer", "add", "alice", "-c", cfg)
	if _, _, code := runC(t, "peer", "add", "alice", "-c", cfg); code != exitConflict {
		t.Errorf("add alice twice: exit %d, want %d", code, exitConflict)
	}
	if _, errs, code := runC(t, "peer", "config", "carol", "-c", cfg); code != exitNotFound || !strings.Contains(errs, "not found") {
		t.Errorf("config of a missing peer: exit %d, want %d (%s)", code, exitNotFound, errs)
	}
}
