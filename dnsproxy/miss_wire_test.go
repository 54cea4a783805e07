package dnsproxy

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestReadAnswerLikeMessageRules: what the miss path reads from an answer's
// bytes is what the general path computes from the unpacked message: the
// cache TTL (cacheTTL), the addresses with their longest TTL
// (answerAddrs), the answer names other than the question (otherZones),
// and the answers it must leave to the general path.
func TestReadAnswerLikeMessageRules(t *testing.T) {
	answer := func(rcode int, rrs ...[]string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("www.Example.com.", dns.TypeA)
		m.Response, m.Rcode = true, rcode
		for i, sec := range rrs {
			for _, s := range sec {
				rr := mustRR("%s", s)
				switch i {
				case 0:
					m.Answer = append(m.Answer, rr)
				case 1:
					m.Ns = append(m.Ns, rr)
				default:
					m.Extra = append(m.Extra, rr)
				}
			}
		}
		return m
	}
	soa := "example.com. 300 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60"
	for _, tc := range []struct {
		name      string
		msg       *dns.Msg
		edns      bool
		cacheable bool
	}{
		{"a", answer(dns.RcodeSuccess, []string{"www.example.com. 300 IN A 192.0.2.1", "www.example.com. 20 IN A 192.0.2.2"}), true, true},
		{"cname chain", answer(dns.RcodeSuccess, []string{"www.example.com. 300 IN CNAME e.cdn.example.net.",
			"e.cdn.example.net. 60 IN AAAA 2001:db8::1", "e.cdn.example.net. 90 IN A 198.51.100.9"}, nil,
			[]string{"ns.example.net. 10 IN A 192.0.2.53"}), false, true},
		{"nxdomain", answer(dns.RcodeNameError, nil, []string{soa}), true, true},
		{"nodata", answer(dns.RcodeSuccess, nil, []string{soa}), false, true},
		{"nxdomain without soa", answer(dns.RcodeNameError), true, false},
		{"servfail", answer(dns.RcodeServerFailure), true, false},
		{"refused", answer(dns.RcodeRefused), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.msg
			if tc.edns {
				m.SetEdns0(1232, false)
			}
			wire, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			f, ok := readAnswer(wire)
			if ok != tc.cacheable {
				t.Fatalf("readAnswer ok=%v, want %v", ok, tc.cacheable)
			}
			if !ok {
				return
			}
			if want := cacheTTL(m, time.Hour*24*365, 0); time.Duration(f.ttl)*time.Second != want {
				t.Errorf("ttl %ds, cacheTTL %v", f.ttl, want)
			}
			addrs, addrTTL := answerAddrs(m.Answer)
			if !slices.Equal(f.addrs, addrs) || time.Duration(f.addrTTL)*time.Second != addrTTL {
				t.Errorf("addrs %v ttl %ds, answerAddrs %v %v", f.addrs, f.addrTTL, addrs, addrTTL)
			}
			var names, want []string
			for _, off := range f.names {
				n, _, err := dns.UnpackDomainName(wire, int(off))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.EqualFold(n, m.Question[0].Name) { // a name written out in full
					names = append(names, n)
				}
			}
			for _, rr := range m.Answer {
				if !strings.EqualFold(rr.Header().Name, m.Question[0].Name) {
					want = append(want, rr.Header().Name)
				}
			}
			if !slices.Equal(names, want) {
				t.Errorf("names %v, want %v", names, want)
			}
		})
	}
	// Truncated, an extended rcode in the OPT, and a compressed question
	// are the general path's.
	tcMsg := answer(dns.RcodeSuccess, []string{"www.example.com. 300 IN A 192.0.2.1"})
	tcMsg.Truncated = true
	ext := answer(dns.RcodeSuccess, []string{"www.example.com. 300 IN A 192.0.2.1"})
	ext.SetEdns0(1232, false)
	ext.Rcode = dns.RcodeBadCookie
	for name, m := range map[string]*dns.Msg{"truncated": tcMsg, "extended rcode": ext} {
		wire, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := readAnswer(wire); ok {
			t.Errorf("%s: readAnswer took it", name)
		}
	}
	wire, _ := answer(dns.RcodeSuccess, []string{"www.example.com. 300 IN A 192.0.2.1"}).Pack()
	compressed := append(append([]byte{}, wire[:headerLen]...), 0xC0, byte(headerLen))
	if _, ok := readAnswer(append(compressed, wire[headerLen+17:]...)); ok {
		t.Error("compressed question: readAnswer took it")
	}
}

// TestAnswerMatchesWire: the ID, QR and the question (name in any case,
// type, class) must all repeat the query's.
func TestAnswerMatchesWire(t *testing.T) {
	qname := []byte("\x03www\x07example\x03com\x00")
	uq := &upQuery{name: "www.example.com.", qtype: dns.TypeA, qclass: dns.ClassINET}
	uq.wire = appendUpQuery(nil, qname, dns.TypeA, dns.ClassINET, false, false, 1232)
	uq.setID(0x4242)
	reply := func(edit func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion("WWW.example.COM.", dns.TypeA)
		m.Id, m.Response = 0x4242, true
		m.Answer = []dns.RR{mustRR("www.example.com. 60 IN A 192.0.2.1")}
		edit(m)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if !answerMatchesWire(uq, reply(func(*dns.Msg) {})) {
		t.Error("the matching answer (question in another case) was refused")
	}
	for name, edit := range map[string]func(m *dns.Msg){
		"id":    func(m *dns.Msg) { m.Id++ },
		"qr":    func(m *dns.Msg) { m.Response = false },
		"name":  func(m *dns.Msg) { m.Question[0].Name = "www.example.net." },
		"type":  func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA },
		"class": func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS },
		"none":  func(m *dns.Msg) { m.Question = nil },
	} {
		if answerMatchesWire(uq, reply(edit)) {
			t.Errorf("an answer with another %s matched", name)
		}
	}
	if answerMatchesWire(uq, []byte{0x42, 0x42, 0x80}) {
		t.Error("a short answer matched")
	}
	// The query itself: its question section, RD, and our OPT.
	m := new(dns.Msg)
	if err := m.Unpack(uq.wire); err != nil {
		t.Fatal(err)
	}
	if m.Id != 0x4242 || !m.RecursionDesired || m.Question[0].Name != "www.example.com." || m.IsEdns0() == nil ||
		m.IsEdns0().UDPSize() != 1232 {
		t.Errorf("upstream query %v", m)
	}
}

// FuzzReadAnswer: any bytes an upstream sends are read without panicking,
// and what readAnswer takes, cacheWire keeps, with every TTL offset inside
// the entry and capped.
func FuzzReadAnswer(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	m.Response = true
	m.Answer = []dns.RR{mustRR("www.example.com. 300 IN CNAME e.example.net."), mustRR("e.example.net. 60 IN A 192.0.2.1")}
	m.SetEdns0(1232, false)
	b, _ := m.Pack()
	f.Add(b)
	m.Answer, m.Rcode = nil, dns.RcodeNameError
	m.Ns = []dns.RR{mustRR("example.com. 300 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60")}
	b, _ = m.Pack()
	f.Add(b)
	qname := []byte("\x03www\x07example\x03com\x00")
	uq := &upQuery{name: "www.example.com.", qtype: dns.TypeA, qclass: dns.ClassINET}
	uq.wire = appendUpQuery(nil, qname, dns.TypeA, dns.ClassINET, false, false, 1232)
	f.Fuzz(func(t *testing.T, raw []byte) {
		answerMatchesWire(uq, raw)
		facts, ok := readAnswer(raw)
		if !ok {
			return
		}
		for _, off := range facts.names {
			dns.UnpackDomainName(raw, int(off)) //nolint:errcheck // must not panic
		}
		limit := max(facts.ttl, 1)
		wire, offs, ok := cacheWire(append([]byte(nil), raw...), limit)
		if !ok {
			t.Fatalf("readAnswer took %x, cacheWire did not", raw)
		}
		for _, off := range offs {
			if int(off)+4 > len(wire) || binary.BigEndian.Uint32(wire[off:]) > limit {
				t.Fatalf("TTL offset %d past %d bytes or its TTL above %d", off, len(wire), limit)
			}
		}
	})
}

// TestMissesConcurrentOnShared: 200 different misses at once, answered by
// the upstream out of order after random delays, each reach their own
// client with their own answer; no source port carries more than
// spareMaxUses queries, and no two queries in flight on one port share an
// ID (the miss path's carriers, carrier_linux.go).
func TestMissesConcurrentOnShared(t *testing.T) {
	type flightKey struct {
		port int
		id   uint16
	}
	var mu sync.Mutex
	inFlight := map[flightKey]bool{}
	perPort := map[int]int{}
	var problems []string
	addr := rawUDPFrom(t, func(q *dns.Msg, from *net.UDPAddr, send func([]byte)) {
		k := flightKey{from.Port, q.Id}
		mu.Lock()
		if inFlight[k] {
			problems = append(problems, fmt.Sprintf("ID %d in flight twice on port %d", q.Id, from.Port))
		}
		inFlight[k] = true
		perPort[from.Port]++
		mu.Unlock()
		name := q.Question[0].Name
		var i int
		fmt.Sscanf(name, "c%d.", &i)
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = []dns.RR{mustRR("%s 60 IN A 10.30.%d.%d", name, i/250, i%250+1)}
		b := pack(t, r)
		go func() {
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			mu.Lock()
			delete(inFlight, k)
			mu.Unlock()
			send(b)
		}()
	})
	p, _ := startProxy(t, testConfig(addr), Options{})
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("c%d.example.", i), dns.TypeA)
			c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
			r, _, err := c.Exchange(m, proxyAddr(t, p, "udp"))
			if err != nil {
				errs <- fmt.Sprintf("query %d: %v", i, err)
				return
			}
			want := fmt.Sprintf("10.30.%d.%d", i/250, i%250+1)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != want || r.Question[0].Name != m.Question[0].Name {
				errs <- fmt.Sprintf("query %d: answer %v, want %s", i, r.Answer, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, pr := range problems {
		t.Error(pr)
	}
	for port, k := range perPort {
		if k > spareMaxUses {
			t.Errorf("source port %d carried %d queries, want at most %d", port, k, spareMaxUses)
		}
	}
}
