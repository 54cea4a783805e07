package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
// (sluice sends READY=1 and WATCHDOG=1), SIGHUP reload, only the two
// capabilities sluice needs, and write access exactly where it writes.
// systemd-analyze verify checks the rest when it is installed.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../examples/sluice.service")
	if err != nil {
		t.Fatal(err)
	}
	u := unitDirectives(t, string(b))
	for key, want := range map[string]string{
		"Service.Type":                  "notify",
		"Service.NotifyAccess":          "main",
		"Service.ExecReload":            "/bin/kill -HUP $MAINPID",
		"Service.CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
		"Service.AmbientCapabilities":   "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
		"Service.NoNewPrivileges":       "yes",
		"Service.ProtectSystem":         "strict",
		"Service.StateDirectory":        "sluice",
		"Service.RuntimeDirectory":      "sluice",
		"Install.WantedBy":              "multi-user.target",
	} {
		if got := u[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if w := u["Service.WatchdogSec"]; len(w) != 1 || w[0] == "0" {
		t.Errorf("WatchdogSec = %q: sluice pings the watchdog, the unit should ask for it", w)
	}
	rw := strings.Fields(strings.Join(u["Service.ReadWritePaths"], " "))
	for _, p := range []string{"/var/lib/sluice", "/run/sluice", "/run/wireguard"} {
		if !slices.Contains(rw, p) {
			t.Errorf("ReadWritePaths %v lacks %s", rw, p)
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
	if out, err := exec.Command(analyze, "verify", unit).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
