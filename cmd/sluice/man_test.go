package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestManPages: `sluice man` writes one page per visible command, each with
// its name, synopsis, options and the commands around it, and nothing a
// roff parser reads as a request in the middle of text.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := run(t, "man", "--dir", dir)
	if code != 0 {
		t.Fatalf("sluice man: exit %d\n%s%s", code, out, errOut)
	}
	want := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.IsAvailableCommand() || !c.HasParent() {
			want[manName(c)+".1"] = true
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRoot()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	walk(root)
	files, err := filepath.Glob(filepath.Join(dir, "*.1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(want) {
		t.Errorf("wrote %d pages, want %d (%v)", len(files), len(want), want)
	}
	for _, name := range []string{"sluice.1", "sluice-up.1", "sluice-peer-add.1", "sluice-peer-config.1", "sluice-reload.1"} {
		if !want[name] {
			t.Errorf("no command for %s", name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "sluice-man.1")); err == nil {
		t.Error("the hidden man command has a page")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		page := string(b)
		name := strings.TrimSuffix(filepath.Base(f), ".1")
		if !want[filepath.Base(f)] {
			t.Errorf("unexpected page %s", f)
		}
		for _, s := range []string{".TH \"" + strings.ToUpper(name) + "\" 1", ".SH NAME\n" + strings.ReplaceAll(name, "-", `\-`) + ` \- `, ".SH SYNOPSIS", ".SH DESCRIPTION"} {
			if !strings.Contains(page, s) {
				t.Errorf("%s lacks %q", name, s)
			}
		}
		for i, line := range strings.Split(page, "\n") {
			if strings.HasPrefix(line, ".") && !isRoffRequest(line) {
				t.Errorf("%s:%d: text line read as a roff request: %q", name, i+1, line)
			}
		}
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "sluice-peer-config.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`\fB\-f\fR, \fB\-\-format\fR`, "mobileconfig", ".SH EXAMPLES", `sluice peer config alice/laptop > alice.conf`, ".BR sluice\\-peer (1)", ".SH GLOBAL OPTIONS", `\fB\-\-config\fR`} {
		if !strings.Contains(string(cfg), s) {
			t.Errorf("sluice-peer-config.1 lacks %q", s)
		}
	}
	// groff, where installed, must read every page without a warning.
	if groff, err := exec.LookPath("groff"); err == nil {
		for _, f := range files {
			out, err := exec.Command(groff, "-K", "utf8", "-ww", "-z", "-man", f).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("groff %s: %v\n%s", filepath.Base(f), err, out)
			}
		}
	}
}

// isRoffRequest reports whether a line is one of the requests and comments
// writeManPage emits.
func isRoffRequest(line string) bool {
	for _, p := range []string{`.\"`, ".TH ", ".SH ", ".PP", ".TP", ".B ", ".BR ", ".I ", ".nf", ".fi", ".RS", ".RE"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}
