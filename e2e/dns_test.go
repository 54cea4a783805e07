package e2e

import (
	"strings"
	"testing"
	"time"
)

// servfailWithin is DESIGN.md's bound for answering a zone whose whole
// resolver group is down: fast enough that the client does not fall back.
const servfailWithin = 2 * time.Second

// TestSplitDNS: a split-tunnel client resolves through the tunnel with
// the DNS= line of its generated configuration: internal names get the
// internal answer, public names the public one, the query log names the
// peer and the upstream; with both corp resolvers down the answer is a fast
// SERVFAIL and the public resolver never sees a corp.example query.
func TestSplitDNS(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)
	g := tp.newSluice(sluiceOpts{mode: "split", offPolicy: "redirect"})
	g.start(t)
	conf := g.addPeer(t, "alice", "laptop", "", "")
	aips := allowedIPs(conf)
	for _, want := range []string{resolver4 + "/32", resolver6 + "/128", "10.30.0.0/16"} {
		if !contains(aips, want) {
			t.Errorf("peer config AllowedIPs %v lacks %s (the resolver invariant)", aips, want)
		}
	}
	client := tp.newClientNS("cl")
	tp.wgQuickUp(t, client, conf)
	rc := resolvConf(t, client)
	if !strings.Contains(rc, "nameserver "+resolver4) || !strings.Contains(rc, "nameserver "+resolver6) {
		t.Fatalf("client resolv.conf after wg-quick up lacks the tunnel resolvers (DNS= line):\n%s", rc)
	}
	if !strings.Contains(rc, "corp.example") {
		t.Errorf("client resolv.conf lacks the search domain corp.example:\n%s", rc)
	}

	t.Run("internal name, internal answer", func(t *testing.T) {
		// The first query also brings the tunnel up: allow a retry.
		var r digResult
		waitFor(5*time.Second, 100*time.Millisecond, func() (bool, string) {
			r = dig(client, internalFQ)
			return r.status != "", r.out
		})
		if !r.has(corpAnswer4) || r.has(trapAnswer) {
			t.Fatalf("dig %s (resolv.conf): want %s, got %v:\n%s", internalFQ, corpAnswer4, r.answers, r.out)
		}
		if r := dig(client, "@"+resolver6, internalFQ, "AAAA"); !r.has(corpAnswer6) {
			t.Errorf("dig @%s %s AAAA: want %s, got %v:\n%s", resolver6, internalFQ, corpAnswer6, r.answers, r.out)
		}
		if r := dig(client, "+search", "git"); !r.has(corpAnswer4) {
			t.Errorf("dig +search git: want %s via the search domain, got %v:\n%s", corpAnswer4, r.answers, r.out)
		}
		q := g.waitQuery(t, internalFQ, "alice/laptop", isCorp)
		t.Logf("query log record: %v", q)
	})

	t.Run("public name, public answer", func(t *testing.T) {
		if r := dig(client, publicFQ); !r.has(httpIP4) {
			t.Errorf("dig %s: want %s, got %v:\n%s", publicFQ, httpIP4, r.answers, r.out)
		}
		if r := dig(client, "@"+resolver6, publicFQ, "AAAA"); !r.has(httpIP6) {
			t.Errorf("dig @%s %s AAAA: want %s, got %v:\n%s", resolver6, publicFQ, httpIP6, r.answers, r.out)
		}
		g.waitQuery(t, publicFQ, "alice/laptop", func(up string) bool { return strings.Contains(up, publicDNS4) })
	})

	t.Run("internal group down: fast SERVFAIL, no fallback", func(t *testing.T) {
		for _, u := range tp.corpDNS {
			u.stop(t)
		}
		// A name the proxy has never seen, so no cache can answer it.
		name := "wiki.corp.example"
		r := dig(client, "+time=5", name)
		if r.status != "SERVFAIL" {
			t.Fatalf("dig %s with corp resolvers down: want SERVFAIL, got %q in %v:\n%s", name, r.status, r.elapsed, r.out)
		}
		if r.elapsed > servfailWithin {
			t.Errorf("SERVFAIL for %s took %v, want under %v", name, r.elapsed, servfailWithin)
		}
		t.Logf("SERVFAIL for %s in %v", name, r.elapsed.Round(time.Millisecond))
		if r := dig(client, "+time=5", "@"+resolver6, "new-"+name, "AAAA"); r.status != "SERVFAIL" || r.elapsed > servfailWithin {
			t.Errorf("v6: want SERVFAIL under %v, got %q in %v:\n%s", servfailWithin, r.status, r.elapsed, r.out)
		}
		// The public resolver serves a different corp.example: it must
		// never have been asked, neither now nor before.
		time.Sleep(500 * time.Millisecond) // let any stray fallback arrive
		if log := tp.publicDNS.log(); strings.Contains(strings.ToLower(log), "corp.example") {
			t.Errorf("the public resolver saw a corp.example query (cross-zone fallback):\n%s", log)
		}
		if !strings.Contains(tp.publicDNS.log(), publicFQ) {
			t.Errorf("the public resolver's query log does not show %s: log-queries is not working and the check above proves nothing:\n%s", publicFQ, tp.publicDNS.log())
		}
		// Public names still work: only the corp group is down.
		if r := dig(client, publicFQ); !r.has(httpIP4) {
			t.Errorf("dig %s with corp down: want %s, got %v:\n%s", publicFQ, httpIP4, r.answers, r.out)
		}
	})
}
