package main

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestParseTargets(t *testing.T) {
	ts, err := parseTargets("direct=127.0.0.1:5300,sluice=127.0.0.1:5401")
	if err != nil || len(ts) != 2 || ts[1].Name != "sluice" || ts[1].Addr != "127.0.0.1:5401" {
		t.Fatalf("parseTargets = %v, %v", ts, err)
	}
	for _, bad := range []string{"", "127.0.0.1:53", "=127.0.0.1:53", "x="} {
		if _, err := parseTargets(bad); err == nil {
			t.Errorf("parseTargets(%q) accepted", bad)
		}
	}
}

// TestQuery runs query against a real UDP server on loopback that answers
// A 192.0.2.1 for everything, once with a stray packet first.
func TestQuery(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		if r.Question[0].Name == "stray.bench." {
			stray := new(dns.Msg)
			stray.SetReply(r)
			stray.Id = r.Id + 1
			_ = w.WriteMsg(stray)
		}
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == "refused.bench." {
			m.Rcode = dns.RcodeRefused
		} else {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })

	raddr := pc.LocalAddr().(*net.UDPAddr)
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := rxStamped(c); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, dns.MaxMsgSize)
	want := netip.MustParseAddr("192.0.2.1")
	for _, name := range []string{"a.bench.", "stray.bench."} {
		rtt, err := query(c, name, want, time.Second, buf)
		if err != nil || rtt <= 0 {
			t.Errorf("query %s = %v, %v", name, rtt, err)
		}
	}
	if _, err := query(c, "refused.bench.", want, time.Second, buf); err == nil {
		t.Error("REFUSED answer counted as success")
	}
	if _, err := query(c, "a.bench.", netip.MustParseAddr("192.0.2.99"), time.Second, buf); err == nil {
		t.Error("answer without the wanted address counted as success")
	}
}

// TestRunConcurrent keeps 8 queries in flight against two in-process
// servers on loopback and checks that every query is answered and recorded
// once, that no name repeats (unique mode) and that warm-up queries are not
// recorded. No timing is asserted.
func TestRunConcurrent(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		mu.Lock()
		seen[r.Question[0].Name]++
		mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
		_ = w.WriteMsg(m)
	})
	var targets []*target
	for i := range 2 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &dns.Server{PacketConn: pc, Handler: mux}
		go func() { _ = srv.ActivateAndServe() }()
		t.Cleanup(func() { _ = srv.Shutdown() })
		c, err := net.DialUDP("udp", nil, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, &target{Name: fmt.Sprintf("s%d", i), Addr: pc.LocalAddr().String(), conn: c})
	}
	const count, slice, inflight = 700, 300, 8
	nameFor := func(ti, i int) string { return fmt.Sprintf("x-t%d-%d.bench.", ti, i) }
	if err := runConcurrent(targets, inflight, count, slice, nameFor, netip.MustParseAddr("192.0.2.1"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		if len(tg.rtts) != count || tg.errs != 0 {
			t.Errorf("target %s: %d round trips, %d errors; want %d, 0", tg.Name, len(tg.rtts), tg.errs, count)
		}
		s := summarize(tg)
		if s.Count != count || s.P50us <= 0 || s.P99us < s.P50us {
			t.Errorf("summary %+v", s)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := 2 * (warmupQueries + count); len(seen) != want {
		t.Errorf("servers saw %d distinct names, want %d", len(seen), want)
	}
	for name, n := range seen {
		if n != 1 || !strings.HasPrefix(name, "x-t") {
			t.Errorf("name %s asked %d times", name, n)
		}
	}
}

// TestBurstErrors: queries to a server that never answers count as errors,
// not as round trips, and the burst still ends (every query times out).
func TestBurstErrors(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close() // bound but never read: no answers
	var conns []*net.UDPConn
	for range 4 {
		c, err := net.DialUDP("udp", nil, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	rtts, errs, last := burst(conns, 0, 8, func(i int) string { return fmt.Sprintf("q%d.bench.", i) }, netip.Addr{}, 50*time.Millisecond)
	if len(rtts) != 0 || errs != 8 || last == nil {
		t.Errorf("burst = %d round trips, %d errors, %v; want 0, 8, an error", len(rtts), errs, last)
	}
}
