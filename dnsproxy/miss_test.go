package dnsproxy

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
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
