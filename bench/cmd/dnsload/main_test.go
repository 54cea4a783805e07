//go:build linux

package main

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// serve answers on loopback with answer(r) (nil: no answer).
func serve(t *testing.T, answer func(r *dns.Msg) *dns.Msg) *net.UDPAddr {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if m := answer(r); m != nil {
			_ = w.WriteMsg(m)
		}
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().(*net.UDPAddr)
}

func queries(t *testing.T, n int) [][]byte {
	t.Helper()
	qs := make([][]byte, n)
	for i := range qs {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn("q"+string(rune('a'+i))+".bench"), dns.TypeA)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		qs[i] = b
	}
	return qs
}

func runOne(t *testing.T, addr *net.UDPAddr, d time.Duration) *loader {
	t.Helper()
	l, err := newLoader(addr.AddrPort(), queries(t, 5), 8, 4, 100*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.run(time.Now().Add(d))
	if l.err != nil {
		t.Fatal(l.err)
	}
	return l
}

// TestLoaderCountsAnswers: every answer to a query in flight counts, with
// the window kept full; none is lost or wrong.
func TestLoaderCountsAnswers(t *testing.T) {
	addr := serve(t, func(r *dns.Msg) *dns.Msg { m := new(dns.Msg); m.SetReply(r); return m })
	l := runOne(t, addr, 300*time.Millisecond)
	if l.completed < 100 || l.mismatched != 0 || l.lost != 0 {
		t.Fatalf("sent %d, completed %d, lost %d, mismatched %d", l.sent, l.completed, l.lost, l.mismatched)
	}
	if l.sent-l.completed > int64(l.window) {
		t.Fatalf("%d queries unanswered, more than the window of %d", l.sent-l.completed, l.window)
	}
}

// TestLoaderRejectsWrongAnswers: an answer with another question, an
// error RCODE or an ID not in flight is counted as mismatched, never as
// completed; queries never answered are counted lost after the timeout.
func TestLoaderRejectsWrongAnswers(t *testing.T) {
	cases := map[string]func(r *dns.Msg) *dns.Msg{
		"other question": func(r *dns.Msg) *dns.Msg {
			m := new(dns.Msg)
			m.SetReply(r)
			m.Question[0].Name = "other.bench."
			return m
		},
		"SERVFAIL": func(r *dns.Msg) *dns.Msg { m := new(dns.Msg); m.SetRcode(r, dns.RcodeServerFailure); return m },
		"wrong ID": func(r *dns.Msg) *dns.Msg { m := new(dns.Msg); m.SetReply(r); m.Id ^= 0x8000; return m },
	}
	for name, answer := range cases {
		t.Run(name, func(t *testing.T) {
			l := runOne(t, serve(t, answer), 300*time.Millisecond)
			if l.completed != 0 || l.mismatched == 0 || l.lost == 0 {
				t.Fatalf("sent %d, completed %d, lost %d, mismatched %d", l.sent, l.completed, l.lost, l.mismatched)
			}
		})
	}
	l := runOne(t, serve(t, func(*dns.Msg) *dns.Msg { return nil }), 300*time.Millisecond)
	if l.completed != 0 || l.lost == 0 {
		t.Fatalf("silent server: sent %d, completed %d, lost %d", l.sent, l.completed, l.lost)
	}
}
