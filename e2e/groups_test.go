package e2e

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// contractorRoute is the contractors' only route: corp's first resolver
// (10.30.0.53) is inside, its second (10.30.0.54) is not.
const contractorRoute = "10.30.0.52/31"

// TestGroups: two real clients in different groups. The employee (default
// group) resolves corp.example and reaches all of 10.30.0.0/16; the
// contractor's group sees no internal zone and routes only 10.30.0.52/31.
// The contractor is refused the employee's cached answer (UDP, TCP, after a
// reload), its client config routes only its group's routes, and when it
// widens its AllowedIPs by hand the firewall still refuses what lies beyond
// them. Moving it between groups applies live.
func TestGroups(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)
	g := tp.newSluice(sluiceOpts{mode: "split", offPolicy: "redirect"})
	withGroups(t, g)
	g.start(t)

	aliceConf := g.addPeer(t, "alice", "laptop", "", "")
	g.mustCLI(t, "peer", "add", "bob", "--device", "laptop", "--group", "contractors")
	bobConf := g.mustCLI(t, "peer", "config", "bob/laptop")
	aips := allowedIPs(bobConf)
	for _, want := range []string{resolver4 + "/32", resolver6 + "/128", contractorRoute} {
		if !contains(aips, want) {
			t.Errorf("contractor config AllowedIPs %v lacks %s", aips, want)
		}
	}
	if contains(aips, "10.30.0.0/16") {
		t.Errorf("contractor config routes peers.routes, not its group's: %v", aips)
	}
	if list := g.mustCLI(t, "peer", "list"); !strings.Contains(list, "contractors") || !strings.Contains(list, "employees") {
		t.Errorf("peer list does not show the groups:\n%s", list)
	}
	// The contractor widens its routes by hand: only the gateway stops it now.
	bobConf = strings.Replace(bobConf, contractorRoute, "10.30.0.0/16", 1)

	alice, bob := tp.newClientNS("ga"), tp.newClientNS("gb")
	tp.wgQuickUp(t, alice, aliceConf)
	tp.wgQuickUp(t, bob, bobConf)
	mustPing(t, alice, resolver4, 5*time.Second)
	mustPing(t, bob, resolver4, 5*time.Second)

	refused := func(stage string) {
		t.Helper()
		if r := dig(alice, "@"+resolver4, internalFQ); !r.has(corpAnswer4) {
			t.Fatalf("%s: employee dig %s: %q %v:\n%s", stage, internalFQ, r.status, r.answers, r.out)
		}
		for _, proto := range []string{"+notcp", "+tcp"} {
			r := dig(bob, proto, "@"+resolver4, internalFQ)
			if r.status != "NXDOMAIN" || len(r.answers) != 0 || !strings.Contains(r.out, "EDE: 18") {
				t.Errorf("%s: contractor dig %s %s: want NXDOMAIN with EDE 18 (Prohibited), got %q %v:\n%s", stage, proto, internalFQ, r.status, r.answers, r.out)
			}
		}
	}
	t.Run("dns", func(t *testing.T) {
		refused("cached by the employee")
		if r := dig(bob, "@"+resolver4, publicFQ); !r.has(httpIP4) {
			t.Errorf("contractor dig %s: public names follow the default group; got %q %v", publicFQ, r.status, r.answers)
		}
		ok, _ := waitFor(3*time.Second, 100*time.Millisecond, func() (bool, string) {
			for _, q := range g.queries(t, internalFQ) {
				if q.str("peer") == "bob/laptop" && q.str("blocked") == "group_zone" && q.str("peer_group") == "contractors" && q.str("upstream") == "" {
					return true, ""
				}
			}
			return false, ""
		})
		if !ok {
			t.Errorf("query log has no group_zone record for bob/laptop:\n%s", tail(readFile(g.queryLog), 20))
		}
		g.mustCLI(t, "reload")
		refused("after reload")
		// A reload that lets contractors see corp.example applies at once,
		// cached answer included; taking it back refuses again.
		orig := readFile(g.cfgPath)
		if err := os.WriteFile(g.cfgPath, []byte(strings.Replace(orig, "zones: []", "zones: [corp.example]", 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		g.mustCLI(t, "reload")
		if r := dig(bob, "@"+resolver4, internalFQ); !r.has(corpAnswer4) {
			t.Errorf("contractor after a reload granting corp.example: %q %v:\n%s", r.status, r.answers, r.out)
		}
		if err := os.WriteFile(g.cfgPath, []byte(orig), 0o644); err != nil {
			t.Fatal(err)
		}
		g.mustCLI(t, "reload")
		refused("after the grant was taken back")
		if n := metricSum(g.metrics(t), "sluice_dns_blocked_total", `reason="group_zone"`); n < 4 {
			t.Errorf(`sluice_dns_blocked_total{reason="group_zone"} = %v, want >= 4`, n)
		}
	})

	t.Run("routes", func(t *testing.T) {
		if ok, out := ping(alice, corpDNS2); !ok {
			t.Errorf("employee cannot reach %s:\n%s", corpDNS2, out)
		}
		if ok, out := ping(bob, corpDNS1); !ok {
			t.Errorf("contractor cannot reach %s, inside its group's routes:\n%s", corpDNS1, out)
		}
		start := time.Now()
		if ok, out := ping(bob, corpDNS2); ok {
			t.Errorf("contractor reached %s, outside its group's routes:\n%s", corpDNS2, out)
		} else {
			t.Logf("contractor to %s refused after %v:\n%s", corpDNS2, time.Since(start).Round(time.Millisecond), out)
		}
		if n := g.firewallCounter(t, "group_route"); n < 1 {
			t.Errorf(`sluice_firewall_packets_total{reason="group_route"} = %v after a refused packet`, n)
			logFirewall(t, g, tp.gw)
		}
		// Counted per peer: the doctor names the contractor's refusals.
		out, err := g.cli("doctor", "--peer", "bob/laptop")
		if !strings.Contains(out, "contractors, routes "+contractorRoute) || strings.Contains(out, "; 0 packets beyond them refused") {
			t.Errorf("doctor --peer bob/laptop (err %v) does not report the refused packets:\n%s", err, out)
		}
	})

	t.Run("set-group live", func(t *testing.T) {
		out := g.mustCLI(t, "peer", "set-group", "bob/laptop", "employees")
		if !strings.Contains(out, "client config changed") {
			t.Errorf("set-group output does not say the client config changed:\n%s", out)
		}
		ok, last := waitFor(5*time.Second, 200*time.Millisecond, func() (bool, string) {
			r := dig(bob, "@"+resolver4, internalFQ)
			reach, _ := ping(bob, corpDNS2)
			return r.has(corpAnswer4) && reach, r.out
		})
		if !ok {
			t.Errorf("after set-group employees the contractor still cannot resolve %s or reach %s:\n%s", internalFQ, corpDNS2, last)
		}
		g.mustCLI(t, "peer", "set-group", "bob/laptop", "contractors")
		ok, last = waitFor(5*time.Second, 200*time.Millisecond, func() (bool, string) {
			r := dig(bob, "@"+resolver4, internalFQ)
			reach, _ := ping(bob, corpDNS2)
			return r.status == "NXDOMAIN" && !reach, r.out
		})
		if !ok {
			t.Errorf("back in contractors the peer still resolves %s or reaches %s:\n%s", internalFQ, corpDNS2, last)
		}
	})
}

// withGroups adds groups to the sluice configuration: employees (the
// default, no restriction) and contractors (no internal zone, one route).
func withGroups(t *testing.T, g *sluiceGW) {
	t.Helper()
	cfg := readFile(g.cfgPath)
	cfg = strings.Replace(cfg, "  routes: [10.30.0.0/16]\n", "  routes: [10.30.0.0/16]\n  default_group: employees\n", 1)
	cfg += "groups:\n  employees: {}\n  contractors:\n    zones: []\n    routes: [" + contractorRoute + "]\n"
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGroupsFullMode: in full mode both clients route everything; the
// contractor's group routes bound what internal prefixes it reaches, while
// its internet egress is untouched.
func TestGroupsFullMode(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)
	// The group rules alone: the egress gate (on by default in full mode)
	// has its own tests in egress_test.go.
	g := tp.newSluice(sluiceOpts{mode: "full", offPolicy: "reject", enforceYAML: "  egress: open\n"})
	withGroups(t, g)
	g.start(t)
	aliceConf := g.addPeer(t, "alice", "laptop", "", "")
	g.mustCLI(t, "peer", "add", "bob", "--device", "laptop", "--group", "contractors")
	bobConf := g.mustCLI(t, "peer", "config", "bob/laptop")
	if aips := allowedIPs(bobConf); !contains(aips, "0.0.0.0/0") || !contains(aips, "::/0") {
		t.Fatalf("full mode contractor config AllowedIPs %v, want everything", aips)
	}
	alice, bob := tp.newClientNS("fa"), tp.newClientNS("fb")
	tp.wgQuickUp(t, alice, aliceConf)
	tp.wgQuickUp(t, bob, bobConf)
	mustPing(t, alice, resolver4, 5*time.Second)
	mustPing(t, bob, resolver4, 5*time.Second)

	if ok, out := ping(alice, corpDNS2); !ok {
		t.Errorf("employee cannot reach %s:\n%s", corpDNS2, out)
	}
	if ok, out := ping(bob, corpDNS1); !ok {
		t.Errorf("contractor cannot reach %s, inside its group's routes:\n%s", corpDNS1, out)
	}
	if ok, out := ping(bob, corpDNS2); ok {
		t.Errorf("contractor reached %s, an internal address outside its group's routes:\n%s", corpDNS2, out)
	}
	if c := curl(bob, "http://"+net.JoinHostPort(httpIP4, "80")+"/"); c.err != nil || c.body != httpBody {
		t.Errorf("contractor's internet egress (full mode) refused: %q %v", c.body, c.err)
	}
	if r := dig(bob, "@"+resolver4, internalFQ); r.status != "NXDOMAIN" || !strings.Contains(r.out, "EDE: 18") {
		t.Errorf("contractor dig %s in full mode: %q:\n%s", internalFQ, r.status, r.out)
	}
	if r := dig(alice, "@"+resolver4, internalFQ); !r.has(corpAnswer4) {
		t.Errorf("employee dig %s in full mode: %q %v", internalFQ, r.status, r.answers)
	}
	if n := g.firewallCounter(t, "group_route"); n < 1 {
		t.Errorf(`sluice_firewall_packets_total{reason="group_route"} = %v in full mode`, n)
		logFirewall(t, g, tp.gw)
	}
}
