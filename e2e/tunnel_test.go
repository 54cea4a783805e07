package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/syncbuf"
)

// liveApply is how fast a peer change made with the CLI must reach the
// running gateway; the client side (wg-quick, handshake, one ping) gets
// liveSlack on top.
const (
	liveApply = time.Second
	liveSlack = 2 * time.Second
)

var allowedIPsRE = regexp.MustCompile(`(?m)^\s*AllowedIPs\s*=\s*(.*)$`)

// allowedIPs returns the AllowedIPs entries of a wg-quick configuration.
func allowedIPs(conf string) []string {
	var out []string
	for _, m := range allowedIPsRE.FindAllStringSubmatch(conf, -1) {
		for _, p := range strings.Split(m[1], ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestClientTunnel: sluice up, peer add, peer config, wg-quick up in a
// client namespace; the handshake shows in `sluice status`; pings cross the
// tunnel on both families; a device added while the daemon runs works at
// once, and a removed one stops working while the first keeps going.
func TestClientTunnel(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)
	// The tunnel prefixes are routed too, so that the client reaches the
	// gateway's own tunnel addresses (split mode routes only peers.routes
	// and the resolver addresses by default).
	g := tp.newSluice(sluiceOpts{mode: "split", offPolicy: "redirect", routes: []string{"10.30.0.0/16", "10.20.0.0/24", "fd20::/64"}})
	g.start(t)

	conf := g.addPeer(t, "alice", "laptop", "", "")
	aips := allowedIPs(conf)
	for _, want := range []string{"10.30.0.0/16", "10.20.0.0/24", "fd20::/64"} {
		if !contains(aips, want) {
			t.Errorf("peer config AllowedIPs %v lacks %s", aips, want)
		}
	}
	laptopNS := tp.newClientNS("cl")
	laptop := tp.wgQuickUp(t, laptopNS, conf)

	t.Run("handshake and pings", func(t *testing.T) {
		for _, a := range []string{gwTunnel4, gwTunnel6, resolver4, resolver6, corpDNS1} {
			mustPing(t, laptopNS, a, 5*time.Second)
		}
		if hs := laptop.latestHandshake(t); hs.IsZero() {
			t.Errorf("client %s: no handshake", laptop.ifname)
		}
		hs, ok := g.handshake(t, "alice/laptop")
		if !ok || hs.IsZero() {
			t.Errorf("sluice status: peer alice/laptop present=%v handshake=%v\n%s", ok, hs, g.mustCLI(t, "status"))
		}
	})

	var phoneNS = tp.newClientNS("ph")
	var phone *wgClient
	t.Run("device added live", func(t *testing.T) {
		priv, pub := wgKeyPair(t)
		start := time.Now()
		phoneConf := g.addPeer(t, "alice", "phone", pub, priv)
		added := time.Since(start)
		phone = tp.wgQuickUp(t, phoneNS, phoneConf)
		upStart := time.Now()
		ok, out := waitFor(liveApply+liveSlack, 50*time.Millisecond, func() (bool, string) { return ping(phoneNS, gwTunnel4) })
		if !ok {
			t.Fatalf("new device alice/phone: no ping through the tunnel within %v of wg-quick up:\n%s", liveApply+liveSlack, out)
		}
		t.Logf("alice/phone: peer add+config took %v; first ping %v after wg-quick up", added.Round(time.Millisecond), time.Since(upStart).Round(time.Millisecond))
		mustPing(t, phoneNS, gwTunnel6, time.Second)
		if hs, ok := g.handshake(t, "alice/phone"); !ok || hs.IsZero() {
			t.Errorf("sluice status: peer alice/phone present=%v handshake=%v", ok, hs)
		}
		list := g.mustCLI(t, "peer", "list")
		if !strings.Contains(list, "laptop") || !strings.Contains(list, "phone") {
			t.Errorf("peer list lacks a device:\n%s", list)
		}
	})

	t.Run("device removed live", func(t *testing.T) {
		if phone == nil {
			t.Skip("no phone device")
		}
		g.mustCLI(t, "peer", "remove", "alice/phone")
		removed := time.Now()
		// One ping may still be in flight; after liveApply none may pass.
		ok, _ := waitFor(liveApply+time.Second, 10*time.Millisecond, func() (bool, string) {
			ok, out := pingWait(phoneNS, gwTunnel4, "0.2")
			return !ok, out
		})
		if !ok {
			t.Fatalf("removed device alice/phone still pings the gateway %v after peer remove", time.Since(removed))
		}
		t.Logf("alice/phone: pings stopped %v after peer remove (incl. one 0.2 s ping timeout)", time.Since(removed).Round(time.Millisecond))
		for i := range 3 {
			if ok, out := ping(phoneNS, gwTunnel4); ok {
				t.Fatalf("removed device alice/phone pinged the gateway again (attempt %d):\n%s", i, out)
			}
		}
		if _, ok := g.handshake(t, "alice/phone"); ok {
			t.Errorf("sluice status still lists alice/phone after remove")
		}
		for _, a := range []string{gwTunnel4, gwTunnel6} {
			if ok, out := ping(laptopNS, a); !ok {
				t.Errorf("alice/laptop lost the tunnel when alice/phone was removed: ping %s:\n%s", a, out)
			}
		}
	})

	t.Run("status and doctor", func(t *testing.T) {
		st := g.status(t)
		if st.Interface.Name != g.ifname || st.Interface.Mode != "split" {
			t.Errorf("status interface = %+v, want %s in split mode", st.Interface, g.ifname)
		}
		// The laptop has only pinged so far: a live session without DNS
		// is what a device using another resolver looks like.
		out, err := g.cli("doctor", "--peer", "alice/laptop")
		t.Logf("sluice doctor --peer alice/laptop before any query (err %v):\n%s", err, out)
		if err == nil || !strings.Contains(out, "its device uses another resolver") {
			t.Errorf("doctor --peer did not flag a peer that handshakes but sends no DNS (err %v)", err)
		}
		// `sluice peer trace` shows the laptop's queries as they happen.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		trace := exec.CommandContext(ctx, "ip", "netns", "exec", tp.gw.Name, sluiceBin, "peer", "trace", "alice/laptop", "--json", "-c", g.cfgPath)
		var traced syncbuf.Buffer
		trace.Stdout = &traced
		if err := trace.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); _ = trace.Wait() }()
		// The trace starts asynchronously: ask until it shows a query.
		ok, _ := waitFor(5*time.Second, 100*time.Millisecond, func() (bool, string) {
			if r := dig(laptopNS, "@"+resolver4, internalFQ, "A"); !r.has(corpAnswer4) {
				t.Fatalf("laptop: dig @%s %s = %s %v\n%s", resolver4, internalFQ, r.status, r.answers, r.out)
			}
			return strings.Contains(traced.String(), `"name":"`+internalFQ+`."`), ""
		})
		if !ok {
			t.Errorf("sluice peer trace alice/laptop showed no query for %s:\n%s", internalFQ, traced.String())
		} else {
			line := strings.SplitN(traced.String(), "\n", 2)[0]
			t.Logf("sluice peer trace: %s", line)
			for _, want := range []string{`"peer":"alice/laptop"`, `"rcode":"NOERROR"`, `"group":"corp.example"`} {
				if !strings.Contains(line, want) {
					t.Errorf("trace line lacks %s: %s", want, line)
				}
			}
		}
		out, err = g.cli("doctor", "--peer", "alice/laptop")
		t.Logf("sluice doctor --peer alice/laptop (err %v):\n%s", err, out)
		if err != nil {
			t.Errorf("sluice doctor on a healthy gateway failed: %v", err)
		}
		if !strings.Contains(out, "packets to the proxy") {
			t.Errorf("doctor --peer does not report the peer's DNS counters")
		}
	})
}
