package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// Addresses of the egress test's extra services.
const (
	unlistedDoH4   = "203.0.113.12" // a DoH server in no list
	unlistedDoH6   = "2001:db8:443::12"
	unlistedBody   = "unlisted-doh\n"
	altDNSPort     = "5353"       // the public resolver on a non-standard port
	uniqueDNS      = "10.30.0.55" // answers hN.egress.test with a fresh address each
	uniquePrefix   = "10.99"      // 10.99.0.0/16: every address is the internet's (AnyIP)
	uniquePort     = "8080"
	queryConnectN  = 10000 // query-then-connect iterations
	egressLogLine  = "refused: not resolved by the gateway"
	auditLogPrefix = "egress audit"
)

// startEgressServers adds what the egress test needs to the topology: the
// public resolver's view on port 5353 (UDP and TCP, both families), an
// HTTP server on an unlisted DoH address (port 443, both families), a TCP
// listener on every address of 10.99.0.0/16 in the internet namespace, and
// in corp a resolver that answers hN.egress.test with 10.99.x.y. It returns
// the number of queries the port-5353 resolver received.
func startEgressServers(t *testing.T, tp *topology) func() int64 {
	t.Helper()
	ipn(t, tp.inet, "addr", "add", unlistedDoH4+"/32", "dev", "lo")
	ipn(t, tp.inet, "addr", "add", unlistedDoH6+"/128", "dev", "lo", "nodad")
	ipn(t, tp.inet, "route", "add", "local", uniquePrefix+".0.0/16", "dev", "lo")
	ipn(t, tp.corp, "addr", "add", uniqueDNS+"/16", "dev", "gw0")

	var altQueries atomic.Int64
	trap := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		altQueries.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(trapAnswer)}}
		}
		_ = w.WriteMsg(m) // the client may be gone
	})
	unique := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		var n int
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			if _, err := fmt.Sscanf(r.Question[0].Name, "h%d.egress.test.", &n); err == nil && n >= 0 && n < 60000 {
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
					A: net.ParseIP(fmt.Sprintf("%s.%d.%d", uniquePrefix, n/250, n%250+1))}}
			}
		}
		_ = w.WriteMsg(m) // the client may be gone
	})

	var wg sync.WaitGroup
	var stops []func()
	serveDNS := func(ns *netnstest.NS, addr string, h dns.Handler) {
		for _, network := range []string{"udp", "tcp"} {
			srv := &dns.Server{Addr: addr, Net: network, Handler: h}
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			var err error
			if network == "udp" {
				err = ns.Do(func() error {
					pc, err := net.ListenPacket("udp", addr)
					srv.PacketConn = pc
					return err
				})
			} else {
				err = ns.Do(func() error {
					ln, err := net.Listen("tcp", addr)
					srv.Listener = ln
					return err
				})
			}
			if err != nil {
				t.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name, err)
			}
			wg.Add(1)
			go func() { defer wg.Done(); _ = srv.ActivateAndServe() }() // returns when shut down
			<-started
			stops = append(stops, func() { _ = srv.Shutdown() })
		}
	}
	serveHTTP := func(ns *netnstest.NS, addr, body string) {
		var ln net.Listener
		if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatalf("listen %s in %s: %v", addr, ns.Name, err)
		}
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, body)
		})}
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ln) }() // returns when closed
		stops = append(stops, func() { _ = srv.Close() })
	}
	serveDNS(tp.inet, net.JoinHostPort(publicDNS4, altDNSPort), trap)
	serveDNS(tp.inet, net.JoinHostPort(publicDNS6, altDNSPort), trap)
	serveDNS(tp.corp, net.JoinHostPort(uniqueDNS, "53"), unique)
	serveHTTP(tp.inet, net.JoinHostPort(unlistedDoH4, "443"), unlistedBody)
	serveHTTP(tp.inet, net.JoinHostPort(unlistedDoH6, "443"), unlistedBody)
	serveHTTP(tp.inet, "0.0.0.0:"+uniquePort, "unique\n")
	t.Cleanup(func() {
		for _, s := range stops {
			s()
		}
		wg.Wait()
	})
	return altQueries.Load
}

// TestEgress: full mode with `egress: resolved` from a real wg-quick
// full-tunnel client. A resolver on another port, an unlisted DoH server
// and an IP literal are refused fast; a name resolved by the gateway is
// reachable at once (10,000 times in a row); egress_allow opens an address
// on reload without dropping learned pairs; learned pairs survive a
// restart; the egress side cannot reach a peer; audit lets everything
// through and logs it.
func TestEgress(t *testing.T) {
	requireSluice(t)
	tp := newTopology(t)
	altQueries := startEgressServers(t, tp)
	opts := sluiceOpts{mode: "full", offPolicy: "reject",
		// The query-then-connect loop asks as fast as it can: no rate limit.
		zonesYAML: "    - name: egress.test\n      upstreams: [" + uniqueDNS + "]\n  limits:\n    peer_qps: 0\n"}
	g := tp.newSluice(opts)
	g.start(t)
	conf := g.addPeer(t, "alice", "laptop", "", "")
	cl := tp.newClientNS("ce")
	wc := tp.wgQuickUp(t, cl, conf)
	mustPing(t, cl, resolver4, 5*time.Second)
	mustPing(t, cl, resolver6, 5*time.Second)
	defer func() {
		if t.Failed() {
			logFirewall(t, g, tp.gw)
			t.Logf("sluice log:\n%s", tail(g.p.out.String(), 60))
		}
	}()

	// `sluice peer trace` runs while the refusals happen.
	traceOut := make(chan string, 1)
	go func() {
		out, err := g.cli("peer", "trace", "alice/laptop", "--for", "8s")
		traceOut <- fmt.Sprintf("%s (err %v)", out, err)
	}()
	time.Sleep(time.Second) // the trace subscribes before the refusals; a late one only misses lines

	t.Run("resolver on another port refused", func(t *testing.T) {
		for _, server := range []string{publicDNS4, publicDNS6} {
			for _, proto := range []string{"+notcp", "+tcp"} {
				r := dig(cl, proto, "-p", altDNSPort, "@"+server, internalFQ)
				if len(r.answers) > 0 || r.elapsed > failFast {
					t.Errorf("dig %s -p %s @%s: want a fast refusal, got %q %v in %v:\n%s", proto, altDNSPort, server, r.status, r.answers, r.elapsed, r.out)
				}
			}
		}
		if n := altQueries(); n != 0 {
			t.Errorf("the resolver on port %s received %d queries from the tunnel", altDNSPort, n)
		}
	})
	t.Run("unlisted DoH and IP literals refused", func(t *testing.T) {
		for _, url := range []string{
			"http://" + net.JoinHostPort(unlistedDoH4, "443") + "/dns-query",
			"http://" + net.JoinHostPort(unlistedDoH6, "443") + "/dns-query",
			"http://" + net.JoinHostPort(httpIP4, "80") + "/", // no lookup yet
		} {
			if c := curl(cl, url); c.err == nil || c.elapsed > failFast {
				t.Errorf("%s: want a fast refusal, got %v %q in %v", url, c.err, c.body, c.elapsed)
			}
		}
	})
	t.Run("resolved then connect", func(t *testing.T) {
		for _, q := range []struct{ qtype, addr, url string }{
			{"A", httpIP4, "http://" + httpIP4 + "/"},
			{"AAAA", httpIP6, "http://[" + httpIP6 + "]/"},
		} {
			if r := dig(cl, "www.example.com", q.qtype); !r.has(q.addr) {
				t.Fatalf("dig www.example.com %s: want %s, got %v:\n%s", q.qtype, q.addr, r.answers, r.out)
			}
			if c := curl(cl, q.url); c.err != nil || c.body != httpBody {
				t.Errorf("%s after resolving it: %v %q", q.url, c.err, c.body)
			}
		}
	})
	t.Run("visibility", func(t *testing.T) {
		if n := g.firewallCounter(t, "egress_unresolved"); n < 5 {
			t.Errorf(`sluice_firewall_packets_total{reason="egress_unresolved"} = %v, want >= 5`, n)
		}
		if st := g.mustCLI(t, "status"); !strings.Contains(st, "egress: resolved") || !strings.Contains(st, "egress_unresolved") {
			t.Errorf("sluice status shows no egress line:\n%s", st)
		}
		doc, _ := g.cli("doctor", "--peer", "alice/laptop") // exits non-zero on failed checks
		if !strings.Contains(doc, "egress") || !strings.Contains(doc, "did not resolve") {
			t.Errorf("doctor --peer says nothing about refused egress:\n%s", doc)
		}
		// More refusals while the trace still runs, then its output.
		for range 4 {
			curl(cl, "http://"+net.JoinHostPort(unlistedDoH4, "443")+"/")
			time.Sleep(500 * time.Millisecond)
		}
		out := <-traceOut
		if !strings.Contains(out, egressLogLine) || !strings.Contains(out, net.JoinHostPort(unlistedDoH4, "443")) {
			t.Errorf("peer trace has no %q line for %s:443:\n%s", egressLogLine, unlistedDoH4, out)
		}
	})
	t.Run("query then connect", func(t *testing.T) {
		refusedN, otherN, done := queryConnect(t, cl, queryConnectN)
		t.Logf("%d query-then-connect iterations: %d refused, %d other errors", done, refusedN, otherN)
		if done != queryConnectN || refusedN != 0 || otherN != 0 {
			t.Errorf("query then connect: %d of %d done, %d refused, %d other errors; want every first SYN through", done, queryConnectN, refusedN, otherN)
		}
	})
	t.Run("reload with egress_allow", func(t *testing.T) {
		url := "http://" + net.JoinHostPort(unlistedDoH4, "443") + "/"
		opts.enforceYAML = "  egress_allow: [" + unlistedDoH4 + "]\n"
		g.writeConfig(t, opts)
		g.mustCLI(t, "reload")
		if c := curl(cl, url); c.err != nil || c.body != unlistedBody {
			t.Errorf("%s after egress_allow: %v %q", url, c.err, c.body)
		}
		if c := curl(cl, "http://"+httpIP4+"/"); c.err != nil || c.body != httpBody {
			t.Errorf("learned pair after reload: %v %q", c.err, c.body)
		}
	})
	t.Run("restart keeps learned pairs", func(t *testing.T) {
		g.restart(t, opts)
		wc.down(t, tp.dir)
		wc = tp.wgQuickUp(t, cl, conf)
		mustPing(t, cl, resolver4, 5*time.Second)
		if c := curl(cl, "http://["+httpIP6+"]/"); c.err != nil || c.body != httpBody {
			t.Errorf("learned pair after restart, no new lookup: %v %q", c.err, c.body)
		}
	})
	t.Run("egress side cannot reach a peer", func(t *testing.T) {
		ipn(t, tp.inet, "route", "add", "10.20.0.0/24", "via", "203.0.113.1")
		ipn(t, tp.inet, "-6", "route", "add", "fd20::/64", "via", "2001:db8:1::1")
		for _, peer := range []string{"10.20.0.2", "fd20::2"} {
			if ok, out := pingWait(tp.inet, peer, "1"); ok {
				t.Errorf("ping %s from the internet side answered:\n%s", peer, out)
			}
		}
		if n := g.firewallCounter(t, "inbound_dropped"); n < 2 {
			t.Errorf(`sluice_firewall_packets_total{reason="inbound_dropped"} = %v, want >= 2`, n)
		}
		// The tunnel itself still works both ways.
		mustPing(t, cl, resolver4, 5*time.Second)
	})
	t.Run("audit", func(t *testing.T) {
		opts.enforceYAML = "  egress: audit\n"
		g.writeConfig(t, opts)
		g.mustCLI(t, "reload")
		r := dig(cl, "+notcp", "-p", altDNSPort, "@"+publicDNS4, internalFQ)
		if !r.has(trapAnswer) {
			t.Errorf("audit: dig -p %s @%s: want it through (the trap answer), got %v:\n%s", altDNSPort, publicDNS4, r.answers, r.out)
		}
		if c := curl(cl, "http://"+net.JoinHostPort(unlistedDoH6, "443")+"/"); c.err != nil || c.body != unlistedBody {
			t.Errorf("audit: unlisted DoH over IPv6: %v %q", c.err, c.body)
		}
		ok, _ := waitFor(5*time.Second, 100*time.Millisecond, func() (bool, string) {
			return strings.Contains(g.p.out.String(), auditLogPrefix) && strings.Contains(g.p.out.String(), publicDNS4), ""
		})
		if !ok {
			t.Errorf("audit: no %q log line for %s", auditLogPrefix, publicDNS4)
		}
	})
}

// queryConnect resolves hN.egress.test through the gateway and connects to
// the answer at once, n times, from ns; it counts refused connects and other
// failures.
func queryConnect(t *testing.T, ns *netnstest.NS, n int) (refused, other, done int) {
	t.Helper()
	var firstErr string
	defer func() {
		if firstErr != "" {
			t.Logf("first failure: %s", firstErr)
		}
	}()
	fail := func(format string, args ...any) {
		other++
		if firstErr == "" {
			firstErr = fmt.Sprintf(format, args...)
		}
	}
	deadline := time.Now().Add(5 * time.Minute)
	err := ns.Do(func() error {
		c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
		d := net.Dialer{Timeout: 2 * time.Second}
		for i := 0; i < n && time.Now().Before(deadline); i++ {
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("h%d.egress.test.", i), dns.TypeA)
			r, _, err := c.Exchange(m, net.JoinHostPort(resolver4, "53"))
			if err != nil || len(r.Answer) != 1 {
				fail("query %d: %v %v", i, err, r)
				continue
			}
			a, ok := r.Answer[0].(*dns.A)
			if !ok {
				fail("query %d: answer %v", i, r.Answer[0])
				continue
			}
			conn, err := d.Dial("tcp", net.JoinHostPort(a.A.String(), uniquePort))
			switch {
			case err == nil:
				conn.Close()
			case errors.Is(err, syscall.ECONNREFUSED):
				refused++
			default:
				fail("connect %d: %v", i, err)
			}
			done++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return refused, other, done
}
