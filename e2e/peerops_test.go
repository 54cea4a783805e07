package e2e

import (
	"strings"
	"testing"
	"time"
)

// hasSeries reports whether the metrics text has a sample of name for
// user/device.
func hasSeries(text, name, user, device string) bool {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, `user="`+user+`"`) && strings.Contains(line, `device="`+device+`"`) {
			return true
		}
	}
	return false
}

// pingsStop waits until ns no longer reaches addr through the tunnel.
func pingsStop(t *testing.T, what string, ns interface {
	Exec(...string) (string, error)
}, addr string, within time.Duration) {
	t.Helper()
	start := time.Now()
	ok, _ := waitFor(within, 10*time.Millisecond, func() (bool, string) {
		out, err := ns.Exec("ping", "-n", "-c", "1", "-W", "0.2", addr)
		return err != nil, out
	})
	if !ok {
		t.Fatalf("%s: the device still pings %s %v later", what, addr, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("%s: pings stopped after %v", what, time.Since(start).Round(time.Millisecond))
}

// TestPeerRotateDisableExpire: after `peer rotate` the old key no longer
// handshakes and the new config does, with the same address; `peer
// disable` takes the device off at once and `peer enable` brings it back
// (once the device handshakes again);
// an expiry a few seconds ahead removes the device when it passes, without
// any further change to the store. The per-peer metrics follow the device.
func TestPeerRotateDisableExpire(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)
	g := tp.newSluice(sluiceOpts{mode: "split", offPolicy: "redirect", routes: []string{"10.30.0.0/16", "10.20.0.0/24", "fd20::/64"}})
	g.start(t)

	oldConf := g.addPeer(t, "alice", "laptop", "", "")
	oldNS := tp.newClientNS("old")
	old := tp.wgQuickUp(t, oldNS, oldConf)
	mustPing(t, oldNS, gwTunnel4, 5*time.Second)
	if hs := old.latestHandshake(t); hs.IsZero() {
		t.Fatal("old key: no handshake before rotation")
	}
	m := g.metrics(t)
	if !hasSeries(m, "sluice_peer_handshake_age_seconds", "alice", "laptop") || metricSum(m, "sluice_peer_receive_bytes_total", `user="alice"`) == 0 {
		t.Errorf("per-peer metrics missing after a handshake:\n%s", grepLines(m, "sluice_peer_"))
	}

	newConf := g.mustCLI(t, "peer", "rotate", "alice/laptop")
	if !strings.Contains(newConf, "[Interface]") || newConf == oldConf {
		t.Fatalf("peer rotate printed no new config:\n%s", redactKey(newConf))
	}
	if allowedIPs(newConf)[0] != allowedIPs(oldConf)[0] {
		t.Errorf("rotation changed the routes: %v vs %v", allowedIPs(newConf), allowedIPs(oldConf))
	}
	// The old key is dead at once: its session goes with the peer.
	pingsStop(t, "old key after rotate", oldNS, gwTunnel4, liveApply+time.Second)
	for i := range 3 {
		if ok, out := ping(oldNS, gwTunnel4); ok {
			t.Fatalf("the old key pinged through the tunnel after rotation (attempt %d):\n%s", i, out)
		}
	}
	oldHS := old.latestHandshake(t)

	newNS := tp.newClientNS("new")
	fresh := tp.wgQuickUp(t, newNS, newConf)
	mustPing(t, newNS, gwTunnel4, liveApply+liveSlack)
	mustPing(t, newNS, gwTunnel6, time.Second)
	if hs := fresh.latestHandshake(t); hs.IsZero() {
		t.Error("new key: no handshake")
	}
	if hs := old.latestHandshake(t); !hs.Equal(oldHS) {
		t.Errorf("the old key completed a new handshake after rotation (%v → %v)", oldHS, hs)
	}

	// Disable and enable, live.
	g.mustCLI(t, "peer", "disable", "alice")
	pingsStop(t, "disabled", newNS, gwTunnel4, liveApply+time.Second)
	if m := g.metrics(t); hasSeries(m, "sluice_peer_receive_bytes_total", "alice", "laptop") {
		t.Errorf("a disabled peer still has metrics:\n%s", grepLines(m, "sluice_peer_"))
	}
	if list := g.mustCLI(t, "peer", "list"); !strings.Contains(list, "disabled") {
		t.Errorf("peer list does not show the disabled peer:\n%s", list)
	}
	g.mustCLI(t, "peer", "enable", "alice")
	// The gateway forgot the session with the peer: the device notices when
	// its packets get no answer (WireGuard's keepalive plus rekey timeouts,
	// 15 s) and handshakes again with the same config.
	mustPing(t, newNS, gwTunnel4, 20*time.Second)

	// An expiry passes with no further store change: the daemon notices.
	g.mustCLI(t, "peer", "expire", "alice/laptop", "3s")
	mustPing(t, newNS, gwTunnel4, time.Second)
	pingsStop(t, "expired", newNS, gwTunnel4, 3*time.Second+liveApply+time.Second)
	if show := g.mustCLI(t, "peer", "show", "alice"); !strings.Contains(show, "state: expired") {
		t.Errorf("peer show does not say expired:\n%s", show)
	}
}

func grepLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
