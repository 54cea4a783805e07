package gateway

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-vpn/sluice/peers"
)

// A damaged peer store polled again and again is logged once, again when
// the damage changes, and once when it is repaired.
func TestDamagedStoreLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	st, err := peers.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	g := &Gateway{store: st, log: slog.New(slog.NewTextHandler(&buf, nil))}
	var latch errorLatch
	poll := func(n int) {
		for range n {
			latch.report(g.log, "sync peers", g.syncPeers())
		}
	}
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(dir, peers.StoreFile), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("{not json")
	poll(20)
	if n := strings.Count(buf.String(), "level=ERROR"); n != 1 {
		t.Fatalf("20 polls of a damaged store logged %d errors, want 1:\n%s", n, buf.String())
	}
	write(`{"version": 99, "peers": []}`)
	poll(20)
	if n := strings.Count(buf.String(), "level=ERROR"); n != 2 {
		t.Errorf("a different damage logged %d errors in total, want 2:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "peer store") {
		t.Errorf("log does not name the store:\n%s", buf.String())
	}
}
