package dnsproxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// rawExchange sends pkt to the proxy over UDP and returns the raw answer.
func rawExchange(t *testing.T, p *Proxy, pkt []byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", proxyAddr(t, p, "udp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return buf[:n]
}

// TestMissAnsweredLikeHit: a miss is answered from the entry it puts in the
// cache (no message copy, finish and pack), so its bytes are those of the
// cache hit that follows: the client's ID and question case, our OPT, RD
// mirrored, TTLs as cached. With and without EDNS, and with a client
// buffer too small for the answer (TC on both).
func TestMissAnsweredLikeHit(t *testing.T) {
	big := func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		for i := range 10 {
			m.Answer = append(m.Answer, mustRR("%s 300 IN TXT \"record %d of a long answer that will not fit in 512 bytes\"", r.Question[0].Name, i))
		}
		w.WriteMsg(m)
	}
	small := startFake(t, answerA("10.30.0.53", 300))
	large := startFake(t, big)
	clock := &fakeClock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(small.addr)
	cfg.Zones = []Zone{{Name: "big.example", Upstreams: MustParseUpstreams(large.addr)}}
	p, _ := startProxy(t, cfg, Options{Now: clock.Now})
	for _, tc := range []struct {
		name  string
		qtype uint16
		edns  uint16
		tc    bool
	}{
		{"Miss.Example.", dns.TypeA, 1232, false},
		{"plain.example.", dns.TypeA, 0, false},
		{"Many.Big.Example.", dns.TypeTXT, 0, true},
		{"many2.big.example.", dns.TypeTXT, 1232, false},
	} {
		m := new(dns.Msg)
		m.SetQuestion(tc.name, tc.qtype)
		m.Id = 0x5151
		if tc.edns > 0 {
			m.SetEdns0(tc.edns, false)
		}
		pkt, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		miss := rawExchange(t, p, pkt)
		hit := rawExchange(t, p, pkt)
		if !bytes.Equal(miss, hit) {
			t.Errorf("%s: miss and hit answers differ:\nmiss %x\nhit  %x", tc.name, miss, hit)
		}
		r := new(dns.Msg)
		if err := r.Unpack(miss); err != nil {
			t.Fatalf("%s: unpack miss answer: %v", tc.name, err)
		}
		if r.Id != m.Id || !r.Response || !r.RecursionDesired || len(r.Question) != 1 || r.Question[0] != m.Question[0] {
			t.Errorf("%s: answer header or question %v", tc.name, r)
		}
		if (r.IsEdns0() != nil) != (tc.edns > 0) {
			t.Errorf("%s: OPT in answer %v, in query %v", tc.name, r.IsEdns0() != nil, tc.edns > 0)
		}
		if r.Truncated != tc.tc || (!tc.tc && len(r.Answer) == 0) {
			t.Errorf("%s: TC=%v with %d answers, want TC=%v", tc.name, r.Truncated, len(r.Answer), tc.tc)
		}
	}
	if s := p.Stats(); s.CacheMisses != 4 || s.CacheHits != 4 {
		t.Errorf("stats %d misses %d hits, want 4 and 4", s.CacheMisses, s.CacheHits)
	}
}

// TestCacheWireLikeNewCacheEntry: an entry made from the upstream's bytes
// (cacheWire) renders the same records, TTLs, flags and rcode as one packed
// from the message, for positive, negative, chained and EDNS answers; odd
// shapes are refused so that the message path handles them.
func TestCacheWireLikeNewCacheEntry(t *testing.T) {
	g := &group{label: "default"}
	q := new(dns.Msg)
	q.SetQuestion("Www.Example.com.", dns.TypeA)
	q.SetEdns0(1232, true)
	mk := func(f func(m *dns.Msg)) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(q)
		m.RecursionAvailable = true
		m.Compress = true
		f(m)
		return m
	}
	cases := map[string]*dns.Msg{
		"a with opt": mk(func(m *dns.Msg) {
			m.Answer = []dns.RR{mustRR("www.example.com. 300 IN A 192.0.2.1"), mustRR("www.example.com. 90 IN A 192.0.2.2")}
			m.SetEdns0(1232, true)
		}),
		"chain no opt": mk(func(m *dns.Msg) {
			m.Answer = []dns.RR{mustRR("www.example.com. 3600 IN CNAME e.cdn.example."), mustRR("e.cdn.example. 20 IN A 198.51.100.10")}
		}),
		"nxdomain": mk(func(m *dns.Msg) {
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{mustRR("example.com. 3600 IN SOA ns.example.com. h.example.com. 1 2 3 4 60")}
			m.SetEdns0(1232, false)
		}),
	}
	for name, resp := range cases {
		raw, err := resp.Pack()
		if err != nil {
			t.Fatal(err)
		}
		msg := new(dns.Msg)
		if err := msg.Unpack(raw); err != nil {
			t.Fatal(err)
		}
		clampNegativeSOA(msg)
		ttl := cacheTTL(msg, time.Hour, 0)
		want, ok := newCacheEntry("k", msg, ttl, 0, g)
		if !ok {
			t.Fatalf("%s: newCacheEntry refused", name)
		}
		got, ok := newCacheEntryWire("k", raw, msg, ttl, 0, g)
		if !ok {
			t.Fatalf("%s: newCacheEntryWire refused", name)
		}
		qpkt, _ := q.Pack()
		var qi query
		var key [keyMax]byte
		if _, ok := parseQuery(qpkt, &qi, &key); !ok {
			t.Fatal("parse query")
		}
		render := func(e *cacheEntry) *dns.Msg {
			b := writeHit(nil, e, qpkt[headerLen:headerLen+qi.nameLen], &qi, int64(5*time.Second), 1232, 65535)
			m := new(dns.Msg)
			if err := m.Unpack(b); err != nil {
				t.Fatalf("%s: unpack rendered entry: %v", name, err)
			}
			m.Compress = false
			return m
		}
		w, g2 := render(want), render(got)
		if w.String() != g2.String() {
			t.Errorf("%s: entries render differently:\nmessage path:\n%v\nwire path:\n%v", name, w, g2)
		}
		if got.rcode != want.rcode || got.addrTTL != want.addrTTL || len(got.addrs) != len(want.addrs) {
			t.Errorf("%s: rcode %d/%d addrTTL %v/%v addrs %v/%v", name, got.rcode, want.rcode, got.addrTTL, want.addrTTL, got.addrs, want.addrs)
		}
	}
	// Shapes left to the message path.
	base := cases["a with opt"]
	optFirst := base.Copy()
	optFirst.Extra = append([]dns.RR{optFirst.Extra[0]}, mustRR("ns.example.com. 60 IN A 192.0.2.53"))
	b, _ := optFirst.Pack()
	if _, _, ok := cacheWire(b, 60); ok {
		t.Error("cacheWire took an OPT record that is not last")
	}
	b, _ = base.Pack()
	if _, _, ok := cacheWire(append(b, 0), 60); ok {
		t.Error("cacheWire took trailing bytes")
	}
	ptr := append([]byte(nil), b[:headerLen]...)
	ptr = append(ptr, 0xC0, 0x0C, 0, 1, 0, 1)
	binary.BigEndian.PutUint16(ptr[6:], 0)
	binary.BigEndian.PutUint16(ptr[8:], 0)
	binary.BigEndian.PutUint16(ptr[10:], 0)
	if _, _, ok := cacheWire(ptr, 60); ok {
		t.Error("cacheWire took a compressed question name")
	}
}

// BenchmarkMissConcurrent keeps 64 misses in flight through loopback UDP
// against a fake upstream (64 clients, each one query at a time, every
// name new); ns/op is per answered miss, the p50-µs metric the median
// round trip a client saw.
func BenchmarkMissConcurrent(b *testing.B) {
	const clients = 64
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
	addr := p.Addrs()[0].String()
	var next atomic.Int64
	lats := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("udp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			q := new(dns.Msg)
			q.SetQuestion(fmt.Sprintf("c%d.miss.example.", c), dns.TypeA)
			pkt, _ := q.Pack()
			buf := make([]byte, 4096)
			for next.Add(1) <= int64(b.N) {
				start := time.Now()
				conn.Write(pkt)
				conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := conn.Read(buf); err != nil {
					b.Error(err)
					return
				}
				lats[c] = append(lats[c], time.Since(start))
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	if len(all) > 0 {
		slices.Sort(all)
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	}
}

// TestMissFlightJoinersKeepTheirAnswer: queries that join a flight the
// wire miss path leads read its answer after the leader's miss is over;
// that miss must not be recycled for another while they do (its flight
// lives inside it). Rounds of a slow name with joiners, each beside a
// stream of quick misses that recycles the path's state; every joiner
// checks that the address it got is its own name's.
func TestMissFlightJoinersKeepTheirAnswer(t *testing.T) {
	addrOf := func(name string) string {
		var n int
		fmt.Sscanf(name, "slow%d.", &n)
		return fmt.Sprintf("10.31.%d.%d", n/256, n%256)
	}
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		name := r.Question[0].Name
		ip := "10.30.0.53"
		if bytes.HasPrefix([]byte(name), []byte("slow")) {
			time.Sleep(30 * time.Millisecond)
			ip = addrOf(name)
		}
		answerA(ip, 300)(w, r)
	})
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	addr := proxyAddr(t, p, "udp")
	ask := func(name string) (string, error) {
		c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			return "", err
		}
		if len(r.Answer) != 1 {
			return "", fmt.Errorf("%d answers", len(r.Answer))
		}
		return r.Answer[0].(*dns.A).A.String(), nil
	}
	for round := range 20 {
		name := fmt.Sprintf("slow%d.example.", round)
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				got, err := ask(name)
				if err != nil || got != addrOf(name) {
					t.Errorf("%s: %s, %v; want %s", name, got, err, addrOf(name))
				}
			})
		}
		wg.Go(func() {
			for i := range 30 {
				if _, err := ask(fmt.Sprintf("quick%d-%d.example.", round, i)); err != nil {
					t.Errorf("quick miss: %v", err)
				}
			}
		})
		wg.Wait()
	}
	if n := up.count("slow0.example."); n != 1 {
		t.Errorf("upstream saw %d queries for slow0.example., want 1 (the others joined)", n)
	}
}
