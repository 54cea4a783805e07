package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfigsValid: every shipped example passes `sluice check`.
func TestExampleConfigsValid(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		out, errOut, code := run(t, "check", "-c", f)
		if code != 0 || !strings.Contains(out, ": ok (") {
			t.Errorf("sluice check %s: exit %d\n%s%s", f, code, out, errOut)
		}
	}
}

// unitDirectives parses a systemd unit into section.key → values.
func unitDirectives(t *testing.T, text string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("sluice.service line %d: %q is not key=value in a section", i+1, line)
			}
			out[section+"."+k] = append(out[section+"."+k], v)
		}
	}
	return out
}

// TestSystemdUnit checks the example unit: Type=notify with a watchdog
// (sluice sends READY=1 and WATCHDOG=1), reload through the control socket
// (no kill(1), which is procps on Debian), only the two capabilities sluice
// needs, and write access exactly where it writes, through directories
// systemd creates itself: a ReadWritePaths= entry that does not exist yet
// fails the unit on a fresh boot (status=226/NAMESPACE), and so does one an
// ExecStartPre=+ would create (the sandboxed check runs first).
// systemd-analyze verify checks the rest when it is installed; the boot
// test in e2e/systemd_test.go runs it under a real systemd.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../examples/sluice.service")
	if err != nil {
		t.Fatal(err)
	}
	u := unitDirectives(t, string(b))
	for key, want := range map[string]string{
		"Service.Type":                     "notify",
		"Service.NotifyAccess":             "main",
		"Service.ExecReload":               "/usr/local/bin/sluice reload -c /etc/sluice/sluice.yaml",
		"Service.CapabilityBoundingSet":    "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
		"Service.AmbientCapabilities":      "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
		"Service.NoNewPrivileges":          "yes",
		"Service.ProtectSystem":            "strict",
		"Service.StateDirectory":           "sluice",
		"Service.LogsDirectory":            "sluice",
		"Service.RuntimeDirectory":         "sluice wireguard",
		"Service.RuntimeDirectoryPreserve": "yes",
		"Install.WantedBy":                 "multi-user.target",
	} {
		if got := u[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if w := u["Service.WatchdogSec"]; len(w) != 1 || w[0] == "0" {
		t.Errorf("WatchdogSec = %q: sluice pings the watchdog, the unit should ask for it", w)
	}
	for _, p := range strings.Fields(strings.Join(u["Service.ReadWritePaths"], " ")) {
		if !strings.HasPrefix(p, "-") {
			t.Errorf("ReadWritePaths names %s: a path that may not exist at start must be optional (-) or a systemd-created directory", p)
		}
	}
	for _, key := range []string{"Service.ExecStartPre", "Service.ExecStart", "Service.ExecReload", "Service.ExecStop"} {
		for _, line := range u[key] {
			if strings.Contains(line, "kill") || strings.Contains(line, "mkdir") {
				t.Errorf("%s=%s: use the control socket and systemd's directories instead", key, line)
			}
		}
	}
	if start := strings.Join(u["Service.ExecStart"], " "); !strings.Contains(start, "sluice up -c /etc/sluice/sluice.yaml") {
		t.Errorf("ExecStart = %q", start)
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: syntax checked by this test only")
		return
	}
	// verify wants the binaries to exist: point them at this test binary.
	unit := filepath.Join(t.TempDir(), "sluice.service")
	text := strings.ReplaceAll(string(b), "/usr/local/bin/sluice", os.Args[0])
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	// verify also opens the man pages Documentation= names: the generated ones.
	man := filepath.Join(t.TempDir(), "man")
	if _, errOut, code := run(t, "man", "--dir", filepath.Join(man, "man1")); code != 0 {
		t.Fatalf("sluice man: %s", errOut)
	}
	verify := exec.Command(analyze, "verify", unit)
	verify.Env = append(os.Environ(), "MANPATH="+man)
	if out, err := verify.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestLogrotateFile: the shipped logrotate file rotates the unit's
// LogsDirectory and reloads sluice afterwards (a reload reopens the query
// log), without creating the new file itself.
func TestLogrotateFile(t *testing.T) {
	b, err := os.ReadFile("../../examples/sluice.logrotate")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{"/var/log/sluice/", "postrotate", "systemctl reload sluice.service", "endscript", "nocreate", "missingok"} {
		if !strings.Contains(text, want) {
			t.Errorf("examples/sluice.logrotate lacks %q", want)
		}
	}
	if open, closed := strings.Count(text, "{"), strings.Count(text, "}"); open != 1 || closed != 1 {
		t.Errorf("examples/sluice.logrotate: %d '{' and %d '}', want one block", open, closed)
	}
}
