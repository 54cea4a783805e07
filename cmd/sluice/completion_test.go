package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-vpn/sluice/peers"
)

// complete runs cobra's completion entry point (what the bash, zsh and fish
// scripts call) and returns the candidates and the directive line.
func complete(t *testing.T, args ...string) ([]string, string) {
	t.Helper()
	out, errOut, code := run(t, append([]string{"__complete"}, args...)...)
	if code != 0 {
		t.Fatalf("__complete %v: exit %d: %s", args, code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[:len(lines)-1], lines[len(lines)-1]
}

// TestCompletion: shell completion offers the store's peers for the peer
// commands and --peer, the formats for --format, and creates nothing while
// there is no store yet.
func TestCompletion(t *testing.T) {
	cfg, dir := writeConfig(t, "")
	state := filepath.Join(dir, "state")

	got, directive := complete(t, "-c", cfg, "peer", "show", "")
	if len(got) != 0 || directive != ":4" {
		t.Errorf("no store yet: got %q %s, want nothing and no file completion (:4)", got, directive)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("completion created the state directory: %v", err)
	}

	for _, args := range [][]string{{"alice", "--device", "laptop"}, {"alice", "--device", "phone"}, {"bob"}} {
		if out, errOut, code := run(t, append([]string{"-c", cfg, "peer", "add"}, args...)...); code != 0 {
			t.Fatalf("peer add %v: %s%s", args, out, errOut)
		}
	}
	ids := []string{"alice", "alice/laptop", "alice/phone", "bob", "bob/default"}
	for _, cmd := range [][]string{{"peer", "show"}, {"peer", "remove"}, {"peer", "config"}, {"peer", "trace"}, {"doctor", "--peer"}} {
		got, directive := complete(t, append(append([]string{"-c", cfg}, cmd...), "")...)
		if !slices.Equal(got, ids) || directive != ":4" {
			t.Errorf("%v: got %q %s, want %q :4", cmd, got, directive, ids)
		}
	}
	if got, _ := complete(t, "-c", cfg, "peer", "add", ""); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Errorf("peer add: got %q, want the users", got)
	}
	if got, _ := complete(t, "-c", cfg, "peer", "show", "alice/laptop", ""); len(got) != 0 {
		t.Errorf("second argument: got %q, want nothing", got)
	}
	if got, _ := complete(t, "peer", "config", "alice/laptop", "--format", ""); !slices.Equal(got, peers.Formats()) {
		t.Errorf("--format: got %q, want %q", got, peers.Formats())
	}
	if got, _ := complete(t, "status", "--log-format", ""); !slices.Equal(got, []string{"text", "json"}) {
		t.Errorf("--log-format: got %q", got)
	}
	// The generated scripts call back into the same entry point.
	for _, shell := range []string{"bash", "zsh", "fish"} {
		out, errOut, code := run(t, "completion", shell)
		if code != 0 || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: exit %d, script without __complete: %s", shell, code, errOut)
		}
	}
}
