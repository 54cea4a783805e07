package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// The installed paths, as `make install` (PREFIX=/usr/local) puts them.
const (
	installedBin    = "/usr/local/bin/sluice"
	installedConfig = "/etc/sluice/sluice.yaml"
)

// TestSystemdUnitBoot proves the shipped unit under a real systemd: a
// minimal Debian 12 root (debootstrap, cached) booted with systemd-nspawn
// (private network, /dev/net/tun, CAP_NET_ADMIN), sluice installed with
// `make install` as the README says, then enable --now, READY, reload (and
// a refused reload of a broken file), logrotate's postrotate, a live peer
// add, a reboot (the enabled unit starts at boot), stop (interface and
// table gone, /run/wireguard kept) and disable.
// The old unit failed here at enable --now with status=226/NAMESPACE.
func TestSystemdUnitBoot(t *testing.T) {
	netnstest.RequirePrivileged(t, "debootstrap", "systemd-nspawn", "nsenter", "nft", "make")
	requireSluice(t) // the module builds: make install rebuilds it with make's flags
	root := overlayRoot(t, debianRoot(t))

	// Install as the README says, into the machine's root.
	bin := filepath.Join(t.TempDir(), "sluice")
	makeInstall(t, root, bin)
	example, err := os.ReadFile("../examples/split.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(root, installedConfig)
	if got, err := os.ReadFile(cfgPath); err != nil || string(got) != string(example) {
		t.Fatalf("make install did not install examples/split.yaml as %s: %v", installedConfig, err)
	}
	for path, want := range map[string]os.FileMode{
		installedBin:                                             0o755,
		installedConfig:                                          0o600,
		"/etc/sluice":                                            0o700,
		"/etc/systemd/system/sluice.service":                     0o644,
		"/etc/logrotate.d/sluice":                                0o644,
		"/usr/local/share/man/man1/sluice.1":                     0o644,
		"/usr/local/share/man/man1/sluice-up.1":                  0o644,
		"/usr/local/share/bash-completion/completions/sluice":    0o644,
		"/usr/local/share/zsh/site-functions/_sluice":            0o644,
		"/usr/local/share/fish/vendor_completions.d/sluice.fish": 0o644,
	} {
		if got := fileMode(t, filepath.Join(root, path)); got != want {
			t.Errorf("%s: mode %o, want %o", path, got, want)
		}
	}
	// The operator edits the config: resolvers of the test network instead
	// of public ones (nothing leaves the machine's private network anyway)
	// and the query log on.
	edited := operatorEdits(t, string(example))
	if err := os.WriteFile(cfgPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	// A second install (an upgrade) keeps the operator's file.
	if out := makeInstall(t, root, bin); !strings.Contains(out, "kept ") {
		t.Errorf("second make install did not say it kept the config:\n%s", out)
	}
	if got, _ := os.ReadFile(cfgPath); string(got) != edited {
		t.Fatal("second make install overwrote the operator's config")
	}

	m := bootMachine(t, root)

	m.run("systemctl", "daemon-reload")
	if out, err := m.exec(machineCmdTimeout, "systemctl", "enable", "--now", "sluice"); err != nil {
		t.Fatalf("systemctl enable --now sluice: %v\n%s%s", err, out, m.diagnostics())
	}
	// READY: Type=notify is active only after READY=1.
	if got := m.unitProps("ActiveState", "SubState", "NRestarts"); got != "ActiveState=active SubState=running NRestarts=0" {
		t.Fatalf("after enable --now: %s, want active, running, no restart%s", got, m.diagnostics())
	}
	if out, err := m.netExec("ip", "-o", "link", "show", "wg0"); err != nil || !strings.Contains(out, ",UP") {
		t.Errorf("wg0 not up: %v %s", err, out)
	}
	if out, err := m.netExec("nft", "list", "table", "inet", "sluice"); err != nil {
		t.Errorf("nft table inet sluice missing while running: %v %s", err, out)
	}
	m.run("test", "-S", "/run/wireguard/wg0.sock") // the UAPI socket `wg show` uses
	mainPID := m.unitProps("MainPID")

	// Reload through the control socket: applied, same process.
	m.run("systemctl", "reload", "sluice")
	if got := m.unitProps("MainPID"); got != mainPID {
		t.Errorf("reload restarted the daemon: MainPID %s -> %s", mainPID, got)
	}
	// A broken file: the reload job fails with the file's error, the daemon
	// keeps running on the old configuration.
	broken := edited + "bogus_key: 1\n"
	if err := os.WriteFile(cfgPath, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := m.exec(machineCmdTimeout, "systemctl", "reload", "sluice"); err == nil {
		t.Errorf("systemctl reload of a broken config succeeded:\n%s", out)
	}
	// journald reads the command's output asynchronously: wait for it.
	if ok, journal := waitFor(10*time.Second, 200*time.Millisecond, func() (bool, string) {
		j := m.run("journalctl", "--no-pager", "--unit=sluice.service", "--output=cat")
		return strings.Contains(j, "reload refused") && strings.Contains(j, "bogus_key"), j
	}); !ok {
		t.Errorf("the refused reload (naming bogus_key) is not in the unit's journal:\n%s", tail(journal, 20))
	}
	if got := m.unitProps("ActiveState", "MainPID"); got != "ActiveState=active "+mainPID {
		t.Errorf("after a refused reload: %s, want active and %s", got, mainPID)
	}
	if err := os.WriteFile(cfgPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}

	// logrotate: rotate the query log; postrotate's reload makes sluice
	// open a new file (logrotate itself creates none: nocreate).
	m.run("sh", "-c", `echo '{"rotation":"test"}' >> /var/log/sluice/queries.jsonl`)
	m.run("logrotate", "--force", "/etc/logrotate.d/sluice")
	m.run("test", "-s", "/var/log/sluice/queries.jsonl.1")
	m.run("test", "-f", "/var/log/sluice/queries.jsonl")

	// A peer added with the CLI is applied live.
	out := m.run(installedBin, "-c", installedConfig, "peer", "add", "alice", "--device", "laptop")
	if !strings.Contains(out, "applied to the running gateway") {
		t.Errorf("peer add did not reach the daemon:\n%s", out)
	}
	key := ""
	if _, rest, ok := strings.Cut(out, "public key "); ok {
		key = strings.Fields(rest)[0]
	}
	if status := m.run(installedBin, "-c", installedConfig, "status", "--json"); key == "" || !strings.Contains(status, key) {
		t.Errorf("peer alice/laptop (key %q) is not on the running interface:\n%s", key, status)
	}

	// The installed bash completion offers the new peer (and the formats).
	for _, c := range []struct{ words, want string }{
		{"sluice -c /etc/sluice/sluice.yaml peer config al", "alice alice/laptop"},
		{"sluice peer config alice/laptop --format mo", "mobileconfig"},
	} {
		// compopt only works inside a real completion: a no-op here.
		script := `. /usr/share/bash-completion/bash_completion
compopt() { :; }
. /usr/local/share/bash-completion/completions/sluice
COMP_WORDS=(` + c.words + `); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9
__start_sluice
echo "${COMPREPLY[*]}"`
		if got := strings.TrimSpace(m.run("bash", "-c", script)); got != c.want {
			t.Errorf("bash completion of %q: %q, want %q", c.words, got, c.want)
		}
	}

	// Power off and boot again: the enabled unit starts on a fresh boot
	// (empty /run), with the peer added before.
	m.shutdown()
	m = bootMachine(t, root)
	if got := m.unitProps("ActiveState", "SubState", "NRestarts"); got != "ActiveState=active SubState=running NRestarts=0" {
		t.Fatalf("after a reboot: %s, want active, running, no restart%s", got, m.diagnostics())
	}
	if out, err := m.netExec("ip", "-o", "link", "show", "wg0"); err != nil || !strings.Contains(out, ",UP") {
		t.Errorf("wg0 not up after a reboot: %v %s", err, out)
	}
	if status := m.run(installedBin, "-c", installedConfig, "status", "--json"); !strings.Contains(status, key) {
		t.Errorf("peer alice/laptop is not on the interface after a reboot:\n%s", status)
	}

	// Stop: interface, table and sockets gone; the shared /run/wireguard stays.
	m.run("systemctl", "stop", "sluice")
	if out, _ := m.exec(machineCmdTimeout, "systemctl", "is-active", "sluice"); strings.TrimSpace(out) != "inactive" {
		t.Errorf("after stop: is-active %q", out)
	}
	if out, err := m.netExec("ip", "link", "show", "wg0"); err == nil {
		t.Errorf("wg0 still exists after stop:\n%s", out)
	}
	if out, err := m.netExec("nft", "list", "table", "inet", "sluice"); err == nil {
		t.Errorf("nft table inet sluice still exists after stop:\n%s", out)
	}
	m.run("test", "-d", "/run/wireguard")
	if out, err := m.exec(machineCmdTimeout, "ls", "-A", "/run/wireguard", "/run/sluice"); err != nil || strings.Contains(out, ".sock") {
		t.Errorf("sockets left after stop: %v\n%s", err, out)
	}

	m.run("systemctl", "disable", "sluice")
	if out, _ := m.exec(machineCmdTimeout, "systemctl", "is-enabled", "sluice"); strings.TrimSpace(out) != "disabled" {
		t.Errorf("after disable: is-enabled %q", out)
	}
}

// unitProps returns sluice.service's properties as "Key=value ..." in the
// order asked (systemctl show prints them in its own order).
func (m *machine) unitProps(keys ...string) string {
	m.t.Helper()
	args := []string{"systemctl", "show", "sluice.service"}
	for _, k := range keys {
		args = append(args, "--property="+k)
	}
	got := map[string]string{}
	for _, line := range strings.Split(m.run(args...), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = v
		}
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + "=" + got[k]
	}
	return strings.Join(out, " ")
}

// operatorEdits turns examples/split.yaml into the test's configuration:
// the default group's public upstreams become the test network's resolver,
// and the query log is switched on.
func operatorEdits(t *testing.T, example string) string {
	t.Helper()
	public := regexp.MustCompile(`(?m)^(\s*)upstreams: \[.*(9\.9\.9\.9|1\.1\.1\.1|8\.8\.8\.8|quad9).*\]`)
	edited := public.ReplaceAllString(example, "${1}upstreams: [198.51.100.53]")
	if edited == example {
		t.Fatal("examples/split.yaml has no public default upstreams any more: update operatorEdits")
	}
	const qlog = "query_log: /var/log/sluice/queries.jsonl"
	commented := regexp.MustCompile(`(?m)^(\s*)#\s*query_log:.*$`)
	if commented.MatchString(edited) {
		return commented.ReplaceAllString(edited, "${1}"+qlog)
	}
	if strings.Contains(edited, "query_log:") {
		t.Fatal("examples/split.yaml sets a query_log: update operatorEdits")
	}
	return strings.Replace(edited, "\ndns:\n", "\ndns:\n  "+qlog+"\n", 1)
}
