package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// failFast is how quickly a blocked path must fail: a reject answers at
// once, so the application moves on instead of hanging on a timeout.
const failFast = time.Second

// TestEnforcement: the nftables table keeps peers from resolving around
// the gateway. One topology; first a split-mode sluice (off-policy DNS is
// redirected to the proxy), then a full-mode sluice with redirect and then
// reject. The internet's counting table proves that no peer packet to port
// 53 or 853, or to the DoH server, left the gateway in full mode.
func TestEnforcement(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)

	// Split mode first; its subtest-free setup fails the whole test when
	// the daemon does not come up.
	enforceSplit(t, tp)

	// Full tunnel: everything from the client goes through the gateway.
	// Egress open: this test is about resolver ports and lists (it reaches
	// the web server by address); egress_test.go covers the gate.
	g := tp.newSluice(sluiceOpts{mode: "full", offPolicy: "redirect", enforceYAML: "  egress: open\n"})
	g.start(t)
	conf := g.addPeer(t, "alice", "laptop", "", "")
	if aips := allowedIPs(conf); !contains(aips, "0.0.0.0/0") || !contains(aips, "::/0") {
		t.Fatalf("full-mode peer config AllowedIPs = %v, want 0.0.0.0/0 and ::/0", aips)
	}
	cl := tp.newClientNS("cf")
	wc := tp.wgQuickUp(t, cl, conf)
	mustPing(t, cl, resolver4, 5*time.Second)
	mustPing(t, cl, resolver6, 5*time.Second)
	before := tp.counters(t)

	t.Run("full redirect", func(t *testing.T) {
		for _, server := range []string{publicDNS4, publicDNS6} {
			for _, proto := range []string{"+notcp", "+tcp"} {
				r := dig(cl, proto, "@"+server, internalFQ)
				if r.has(trapAnswer) || !r.has(corpAnswer4) {
					t.Errorf("dig %s @%s %s: want the internal answer %s (redirected), got %q %v:\n%s", proto, server, internalFQ, corpAnswer4, r.status, r.answers, r.out)
				}
			}
		}
		g.waitQuery(t, internalFQ, "alice/laptop", isCorp)
		if n := g.firewallCounter(t, "dns_redirected"); n < 1 {
			t.Errorf(`sluice_firewall_packets_total{reason="dns_redirected"} = %v`, n)
		}
	})

	t.Run("DoT DoQ DoH blocked, HTTP works", func(t *testing.T) {
		for _, ip := range []string{dotIP4, dotIP6} {
			r := kdig(cl, "+tls", "@"+ip, publicFQ)
			if r.has(dotAnswer) || r.elapsed > failFast {
				t.Errorf("kdig +tls @%s: want a fast failure, got %v in %v:\n%s", ip, r.answers, r.elapsed, r.out)
			}
			u := udpProbe(t, cl, net.JoinHostPort(ip, "853"), 2*time.Second)
			if u.echoed || !u.refused() || u.elapsed > failFast {
				t.Errorf("udp %s:853 (DoQ): want a fast refusal, got echoed=%v err=%v in %v", ip, u.echoed, u.err, u.elapsed)
			}
		}
		for _, ip := range []string{dohIP4, dohIP6} {
			c := curl(cl, "https://"+net.JoinHostPort(ip, "443")+"/dns-query")
			if c.err == nil || c.elapsed > failFast {
				t.Errorf("https %s (DoH list): want a fast failure, got %v %q in %v", ip, c.err, c.body, c.elapsed)
			}
			u := udpProbe(t, cl, net.JoinHostPort(ip, "443"), 2*time.Second)
			if u.echoed || !u.refused() || u.elapsed > failFast {
				t.Errorf("udp %s:443 (DoH list, HTTP/3): want a fast refusal, got echoed=%v err=%v in %v", ip, u.echoed, u.err, u.elapsed)
			}
			// Full mode: every port of a known resolver, not only 443.
			if c := curl(cl, "http://"+net.JoinHostPort(ip, altPortTCP)+"/"); c.err == nil || c.elapsed > failFast {
				t.Errorf("tcp %s:%s (DoH list, other port): want a fast failure, got %v %q in %v", ip, altPortTCP, c.err, c.body, c.elapsed)
			}
			u = udpProbe(t, cl, net.JoinHostPort(ip, altPortUDP), 2*time.Second)
			if u.echoed || !u.refused() || u.elapsed > failFast {
				t.Errorf("udp %s:%s (DoH list, other port): want a fast refusal, got echoed=%v err=%v in %v", ip, altPortUDP, u.echoed, u.err, u.elapsed)
			}
		}
		for _, ip := range []string{httpIP4, httpIP6} {
			if c := curl(cl, "http://"+net.JoinHostPort(ip, "80")+"/"); c.err != nil || c.body != httpBody {
				t.Errorf("plain http %s through the full tunnel: %v %q", ip, c.err, c.body)
			}
		}
		for _, reason := range []string{"dot_rejected", "doq_rejected", "doh_rejected"} {
			if n := g.firewallCounter(t, reason); n < 1 {
				t.Errorf(`sluice_firewall_packets_total{reason=%q} = %v after blocked attempts`, reason, n)
			}
		}
	})

	t.Run("full reject", func(t *testing.T) {
		g.restart(t, sluiceOpts{mode: "full", offPolicy: "reject", enforceYAML: "  egress: open\n"})
		// The restarted gateway has no session with the client: bring the
		// client up again instead of waiting out WireGuard's rekey timer.
		wc.down(t, tp.dir)
		wc = tp.wgQuickUp(t, cl, conf)
		mustPing(t, cl, resolver4, 5*time.Second)
		for _, server := range []string{publicDNS4, publicDNS6} {
			for _, proto := range []string{"+notcp", "+tcp"} {
				r := dig(cl, proto, "@"+server, internalFQ)
				if len(r.answers) > 0 || r.elapsed > failFast {
					t.Errorf("dig %s @%s with reject: want a fast failure, got %q %v in %v:\n%s", proto, server, r.status, r.answers, r.elapsed, r.out)
				}
			}
		}
		if n := g.firewallCounter(t, "dns_rejected"); n < 1 {
			t.Errorf(`sluice_firewall_packets_total{reason="dns_rejected"} = %v after rejected queries`, n)
		}
		// The in-tunnel resolver itself still answers.
		if r := dig(cl, "@"+resolver4, internalFQ); !r.has(corpAnswer4) {
			t.Errorf("dig @%s %s with reject: want %s, got %v:\n%s", resolver4, internalFQ, corpAnswer4, r.answers, r.out)
		}
	})

	t.Run("nothing left the gateway", func(t *testing.T) {
		after := tp.counters(t)
		for _, c := range []string{"port53", "port853", "doh443"} {
			if after[c] != before[c] {
				t.Errorf("%d packets for %s arrived on the internet side from the gateway during the full-tunnel tests", after[c]-before[c], c)
			}
		}
		t.Logf("internet-side counters before %v after %v", before, after)
		if log := tp.publicDNS.log(); containsFold(log, "corp.example") {
			t.Errorf("the public resolver saw a corp.example query:\n%s", log)
		}
	})
	if t.Failed() {
		logFirewall(t, g, tp.gw)
	}
}

// logFirewall logs `sluice firewall show` and the kernel's view of the
// gateway's nftables ruleset, to debug a failure.
func logFirewall(t *testing.T, g *sluiceGW, gw *netnstest.NS) {
	out, err := g.cli("firewall", "show")
	t.Logf("sluice firewall show (err %v):\n%s", err, out)
	rs, _ := gw.Exec("nft", "list", "ruleset") // for the record only
	t.Logf("nft list ruleset in the gateway namespace:\n%s", rs)
}

// enforceSplit: a split-mode client's plain DNS to an address in a routed
// prefix that runs no resolver is redirected to the proxy (UDP and TCP),
// answered with the internal view and logged with the peer's name.
func enforceSplit(t *testing.T, tp *topology) {
	g := tp.newSluice(sluiceOpts{mode: "split", offPolicy: "redirect"})
	g.start(t)
	defer g.stop() // the full-mode sluice takes over the namespace
	cl := tp.newClientNS("cs")
	tp.wgQuickUp(t, cl, g.addPeer(t, "alice", "laptop", "", ""))
	mustPing(t, cl, resolver4, 5*time.Second)
	// 10.30.0.99 is in the routed corp prefix but runs no resolver:
	// only the redirect to the proxy can answer.
	for _, proto := range []string{"+notcp", "+tcp"} {
		r := dig(cl, proto, "@10.30.0.99", internalFQ)
		if !r.has(corpAnswer4) {
			t.Errorf("dig %s @10.30.0.99 %s: want the proxy's internal answer %s, got %q %v:\n%s", proto, internalFQ, corpAnswer4, r.status, r.answers, r.out)
		}
	}
	q := g.waitQuery(t, internalFQ, "alice/laptop", isCorp)
	t.Logf("redirected query logged: %v", q)
	if n := g.firewallCounter(t, "dns_redirected"); n < 1 {
		t.Errorf(`sluice_firewall_packets_total{reason="dns_redirected"} = %v after a redirected query`, n)
	}
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
