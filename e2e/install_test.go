package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstallPrefix: `make install` honours DESTDIR, PREFIX and
// UNITDIR the way a package build uses them: every file under DESTDIR, the
// unit and man pages pointing at PREFIX's binary, nothing started.
func TestMakeInstallPrefix(t *testing.T) {
	requireSluice(t)
	dest := t.TempDir()
	bin := filepath.Join(t.TempDir(), "sluice")
	out := makeInstallArgs(t, dest, bin, "PREFIX=/usr", "UNITDIR=/usr/lib/systemd/system")
	if strings.Contains(out, "systemctl daemon-reload") {
		t.Errorf("make install with DESTDIR ran systemctl:\n%s", out)
	}
	for _, f := range []string{
		"usr/bin/sluice",
		"usr/lib/systemd/system/sluice.service",
		"etc/sluice/sluice.yaml",
		"etc/logrotate.d/sluice",
		"usr/share/man/man1/sluice.1",
		"usr/share/man/man1/sluice-peer-config.1",
		"usr/share/bash-completion/completions/sluice",
		"usr/share/zsh/site-functions/_sluice",
		"usr/share/fish/vendor_completions.d/sluice.fish",
	} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	unit, err := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/sluice.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStartPre=/usr/bin/sluice check -c /etc/sluice/sluice.yaml",
		"ExecStart=/usr/bin/sluice up -c /etc/sluice/sluice.yaml",
		"ExecReload=/usr/bin/sluice reload -c /etc/sluice/sluice.yaml",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("installed unit lacks %q", want)
		}
	}
	if strings.Contains(string(unit), "/usr/local") {
		t.Error("installed unit still names /usr/local")
	}
	// The completion scripts call the installed program by name.
	if b, err := os.ReadFile(filepath.Join(dest, "usr/share/bash-completion/completions/sluice")); err != nil || !strings.Contains(string(b), "__start_sluice") {
		t.Errorf("bash completion for sluice: %v", err)
	}
}
