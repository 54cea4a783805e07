package main

import (
	"net"
	"net/netip"
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
