package dnsproxy

import (
	"net"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// hotProxy returns an unstarted proxy whose cache holds www.example.com/A,
// with the rate limiter on (high limit) so the fast path pays for it.
func hotProxy(tb testing.TB) (*Proxy, []byte) {
	return hotProxyWith(tb, Options{})
}

// hotProxyWith is hotProxy with the given options (Registerer is set).
func hotProxyWith(tb testing.TB, opts Options) (*Proxy, []byte) {
	tb.Helper()
	up := startFakeTB(tb, answerA("10.30.0.53", 3600))
	cfg := testConfig(up)
	cfg.Limits.PeerQPS = 1 << 30
	cfg.Limits.PeerBurst = 1 << 30
	opts.Registerer = prometheus.NewRegistry()
	p, err := New(cfg, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	if r, err := p.Exchange(tb.Context(), m, netip.MustParseAddr("127.0.0.1")); err != nil || len(r.Answer) != 1 {
		tb.Fatalf("warm cache: %v %v", r, err)
	}
	q := new(dns.Msg)
	q.SetQuestion("WWW.Example.com.", dns.TypeA)
	q.SetEdns0(1232, false)
	pkt, _ := q.Pack()
	return p, pkt
}

// startFakeTB is startFake for benchmarks (testing.TB).
func startFakeTB(tb testing.TB, h func(w dns.ResponseWriter, r *dns.Msg)) string {
	tb.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(h)}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ActivateAndServe()
	}()
	<-started
	tb.Cleanup(func() {
		s.Shutdown()
		<-done
	})
	return pc.LocalAddr().String()
}

// TestFastPathZeroAllocs proves a UDP cache hit allocates nothing.
func TestFastPathZeroAllocs(t *testing.T) {
	p, pkt := hotProxy(t)
	ls := newLoopState(0)
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	resp, slow := p.handlePacket(ls, pkt, src)
	if slow || resp == nil {
		t.Fatalf("not a fast-path hit (slow=%v)", slow)
	}
	r := new(dns.Msg)
	if err := r.Unpack(resp); err != nil || r.Question[0].Name != "WWW.Example.com." || len(r.Answer) != 1 {
		t.Fatalf("fast-path answer %v %v", r, err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		p.handlePacket(ls, pkt, src)
	})
	if allocs != 0 {
		t.Errorf("fast path allocates %v per hit, want 0", allocs)
	}
}

// BenchmarkCacheHit is the UDP fast path without the socket: parse, ACL,
// rate limit, cache lookup, answer rewrite, metrics.
func BenchmarkCacheHit(b *testing.B) {
	p, pkt := hotProxy(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ls := newLoopState(int(time.Now().UnixNano()))
		src := netip.MustParseAddrPort("127.0.0.1:40000")
		for pb.Next() {
			if resp, _ := p.handlePacket(ls, pkt, src); resp == nil {
				b.Fatal("miss")
			}
		}
	})
}

// BenchmarkCacheHitUDP is a cache hit through real loopback sockets, one
// query in flight (so it measures latency, not throughput).
func BenchmarkCacheHitUDP(b *testing.B) {
	up := startFakeTB(b, answerA("10.30.0.53", 3600))
	p, err := New(testConfig(up), Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Start(b.Context()); err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("udp", p.Addrs()[0].String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion("www.example.com.", dns.TypeA)
	pkt, _ := q.Pack()
	buf := make([]byte, 4096)
	c.Write(pkt)
	c.Read(buf)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c.Write(pkt)
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMiss measures a cache miss over loopback UDP against a fake
// upstream, and the same query sent straight to the upstream; the
// difference of the p50s is the latency the proxy adds on a miss.
func BenchmarkMiss(b *testing.B) {
	up := startFakeTB(b, answerA("10.30.0.53", 3600))
	cfg := testConfig(up)
	cfg.Cache.Size = 0 // every query is a miss
	p, err := New(cfg, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Start(b.Context()); err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	run := func(b *testing.B, addr string) {
		c, err := net.Dial("udp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		q := new(dns.Msg)
		q.SetQuestion("miss.example.com.", dns.TypeA)
		pkt, _ := q.Pack()
		buf := make([]byte, 4096)
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			start := time.Now()
			c.Write(pkt)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(buf); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	}
	b.Run("direct", func(b *testing.B) { run(b, up) })
	b.Run("proxy", func(b *testing.B) { run(b, p.Addrs()[0].String()) })
}
