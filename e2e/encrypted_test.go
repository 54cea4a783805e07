package e2e

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// encryptedServerName is the DoT/DoH server name of the e2e gateway.
const encryptedServerName = "dns.corp.example"

// encryptedYAML is the dns.encrypted block of opts ("" when off).
func encryptedYAML(opts sluiceOpts) string {
	if !opts.encrypted {
		return ""
	}
	return "  encrypted: [dot, doh]\n  tls:\n    server_name: " + encryptedServerName + "\n"
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// dotFailFast bounds a refused DoT attempt (a TCP reset, not a timeout).
const dotFailFast = 2 * time.Second

// TestEncryptedDNS: a peer asks the in-tunnel resolver over DoT and DoH
// (kdig, certificate verified against `sluice ca` for the server name) on
// both resolver addresses; the answers are the split-horizon ones, the
// query log names the peer and the transport, metrics count by transport.
// DoT to any other address still fails fast; with enforce.dot: redirect an
// opportunistic DoT client aimed elsewhere is answered by sluice while a
// strict one fails fast.
func TestEncryptedDNS(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)
	g := tp.newSluice(sluiceOpts{mode: "split", offPolicy: "redirect", encrypted: true})
	g.start(t)
	conf := g.addPeer(t, "alice", "phone", "", "")
	client := tp.newClientNS("ec")
	tp.wgQuickUp(t, client, conf)
	caFile := filepath.Join(g.dir, "dns-ca.pem")
	if err := os.WriteFile(caFile, []byte(g.mustCLI(t, "ca")), 0o644); err != nil {
		t.Fatal(err)
	}
	verify := []string{"+tls-ca=" + caFile, "+tls-hostname=" + encryptedServerName}

	// The first query brings the tunnel up: allow a retry.
	waitFor(5*time.Second, 100*time.Millisecond, func() (bool, string) {
		r := dig(client, "@"+resolver4, publicFQ)
		return r.status != "", r.out
	})

	for _, res := range []string{resolver4, resolver6} {
		r := kdig(client, append([]string{"+tls", "@" + res, internalFQ}, verify...)...)
		if !r.has(corpAnswer4) || r.has(trapAnswer) {
			t.Errorf("kdig +tls @%s %s: want %s, got %v:\n%s", res, internalFQ, corpAnswer4, r.answers, r.out)
		}
		r = kdig(client, append([]string{"+https", "@" + res, publicFQ}, verify...)...)
		if !r.has(httpIP4) {
			t.Errorf("kdig +https @%s %s: want %s, got %v:\n%s", res, publicFQ, httpIP4, r.answers, r.out)
		}
		r = kdig(client, append([]string{"+https-get", "@" + res, internalFQ, "AAAA"}, verify...)...)
		if !r.has(corpAnswer6) {
			t.Errorf("kdig +https-get @%s %s AAAA: want %s, got %v:\n%s", res, internalFQ, corpAnswer6, r.answers, r.out)
		}
		// The server name itself resolves to the resolvers (Android's Private DNS looks it up).
		if r := kdig(client, append([]string{"+tls", "@" + res, encryptedServerName}, verify...)...); !r.has(resolver4) {
			t.Errorf("kdig +tls @%s %s: want %s, got %v:\n%s", res, encryptedServerName, resolver4, r.answers, r.out)
		}
	}
	// Policy holds over DoH as over UDP: the canary is NXDOMAIN.
	if r := kdig(client, append([]string{"+https", "@" + resolver4, "use-application-dns.net"}, verify...)...); r.status != "NXDOMAIN" {
		t.Errorf("canary over DoH: want NXDOMAIN, got %q:\n%s", r.status, r.out)
	}
	// A CA that did not issue the certificate is refused: verification is real.
	otherCA := filepath.Join(g.dir, "other-ca.pem")
	other, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Certificate[0]}), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := kdig(client, "+tls", "@"+resolver4, publicFQ, "+tls-ca="+otherCA, "+tls-hostname="+encryptedServerName); r.status != "" {
		t.Errorf("kdig +tls with a foreign CA got an answer:\n%s", r.out)
	}

	// The query log names peer and transport.
	for _, want := range []struct{ name, transport string }{{internalFQ, "dot"}, {publicFQ, "doh"}} {
		ok, _ := waitFor(3*time.Second, 100*time.Millisecond, func() (bool, string) {
			for _, q := range g.queries(t, want.name) {
				if q.str("peer") == "alice/phone" && q.str("transport") == want.transport {
					return true, ""
				}
			}
			return false, ""
		})
		if !ok {
			t.Errorf("query log: no %s record for %s from alice/phone; log:\n%s", want.transport, want.name, tail(readFile(g.queryLog), 20))
		}
	}
	m := g.metrics(t)
	for _, tr := range []string{"dot", "doh"} {
		if v := metricSum(m, "sluice_dns_requests_total", `transport="`+tr+`"`); v < 2 {
			t.Errorf("sluice_dns_requests_total{transport=%q} = %v, want at least 2", tr, v)
		}
	}
	if v := metricSum(m, "sluice_dns_tls_cert_expiry_timestamp_seconds"); v < float64(time.Now().Add(300*24*time.Hour).Unix()) {
		t.Errorf("certificate expiry metric %v", v)
	}
	if out, _ := g.cli("doctor"); !strings.Contains(out, "PASS  dns tls certificate") || !strings.Contains(out, "PASS  dot "+resolver4+":853") {
		t.Errorf("doctor:\n%s", out)
	}

	g.stop() // the full-mode gateway takes over the namespace

	// Full tunnel: every address is routed through the gateway, so DoT to
	// another address meets the firewall. It still fails fast; the
	// resolvers' DoT is accepted.
	full := sluiceOpts{mode: "full", offPolicy: "reject", encrypted: true}
	g = tp.newSluice(full)
	g.start(t)
	cl := tp.newClientNS("ef")
	tp.wgQuickUp(t, cl, g.addPeer(t, "alice", "laptop", "", ""))
	mustPing(t, cl, resolver4, 5*time.Second)
	caFile = filepath.Join(g.dir, "dns-ca.pem")
	if err := os.WriteFile(caFile, []byte(g.mustCLI(t, "ca")), 0o644); err != nil {
		t.Fatal(err)
	}
	verify = []string{"+tls-ca=" + caFile, "+tls-hostname=" + encryptedServerName}
	before := tp.counters(t)["port853"]
	for _, res := range []string{resolver4, resolver6} {
		if r := kdig(cl, append([]string{"+tls", "@" + res, internalFQ}, verify...)...); !r.has(corpAnswer4) {
			t.Errorf("full mode: kdig +tls @%s: want %s, got %v:\n%s", res, corpAnswer4, r.answers, r.out)
		}
	}
	for _, ip := range []string{dotIP4, dotIP6} {
		r := kdig(cl, "+tls", "@"+ip, internalFQ)
		if r.status != "" || r.has(dotAnswer) || r.elapsed > dotFailFast {
			t.Errorf("full mode: kdig +tls @%s: want a fast failure, got %q %v in %v:\n%s", ip, r.status, r.answers, r.elapsed, r.out)
		}
	}

	// enforce.dot: redirect sends DoT aimed elsewhere to sluice's DoT: an
	// opportunistic client gets sluice's answer, a strict one fails fast.
	// (Applied by a reload: the firewall and listeners change in place.)
	full.dot = "redirect"
	g.writeConfig(t, full)
	if out := g.mustCLI(t, "reload"); !strings.Contains(strings.ToLower(out), "applied") && !strings.Contains(out, "reloaded") {
		t.Logf("reload: %s", out)
	}
	for _, ip := range []string{dotIP4, dotIP6} {
		if r := kdig(cl, "+tls", "@"+ip, internalFQ); !r.has(corpAnswer4) {
			t.Errorf("opportunistic kdig +tls @%s with enforce.dot redirect: want sluice's answer %s, got %v:\n%s", ip, corpAnswer4, r.answers, r.out)
		}
		r := kdig(cl, "+tls", "@"+ip, internalFQ, "+tls-ca="+caFile, "+tls-hostname=dns.quad9.net")
		if r.status != "" || r.elapsed > dotFailFast {
			t.Errorf("strict kdig +tls @%s for another name: want a fast failure, got %q in %v:\n%s", ip, r.status, r.elapsed, r.out)
		}
	}
	if n := g.firewallCounter(t, "dns_redirected"); n < 1 {
		t.Errorf(`sluice_firewall_packets_total{reason="dns_redirected"} = %v after redirected DoT`, n)
	}
	if after := tp.counters(t)["port853"]; after != before {
		t.Errorf("DoT left the gateway towards the internet: port853 counter %d -> %d", before, after)
	}
}
