//go:build linux

package main

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestForwarderRelays: queries from two clients reach the upstream and
// each client gets the answer to its own query back, with the goroutines
// waiting in Go's poller and in the kernel; close ends serve either way.
func TestForwarderRelays(t *testing.T) {
	for _, wait := range []string{"poller", "kernel"} {
		t.Run(wait, func(t *testing.T) { testRelays(t, wait == "kernel") })
	}
}

func testRelays(t *testing.T, kernel bool) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 192.0.2.7")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	f, err := newForwarder(netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort(pc.LocalAddr().String()))
	if err != nil {
		t.Fatal(err)
	}
	addr := f.lc.LocalAddr().String()
	serve, stop := f.serve, f.close
	if kernel {
		k, err := kernelWait(f)
		if err != nil {
			t.Fatal(err)
		}
		serve, stop = k.serve, k.close
	}
	done := make(chan struct{})
	go func() { serve(); close(done) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("serve did not return after close")
		}
	})
	for i, name := range []string{"one.example.", "two.example."} {
		c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		q.Id = uint16(100 + i)
		r, _, err := c.Exchange(q, addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Id != q.Id || len(r.Answer) != 1 || r.Answer[0].Header().Name != name {
			t.Errorf("%s: got %v", name, r)
		}
	}
}
