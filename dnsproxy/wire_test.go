package dnsproxy

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// bigTXT answers TXT queries with 40 records of 100 bytes (~4.5 KB) and
// records the EDNS size of the query it got.
func bigTXT(sizeSeen *atomic.Int64) func(w dns.ResponseWriter, r *dns.Msg) {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		if opt := r.IsEdns0(); opt != nil {
			sizeSeen.Store(int64(opt.UDPSize()))
		}
		m := new(dns.Msg)
		m.SetReply(r)
		for i := range 40 {
			m.Answer = append(m.Answer, mustRR(`%s 300 IN TXT "%02d%s"`, r.Question[0].Name, i, strings.Repeat("x", 98)))
		}
		w.WriteMsg(m)
	}
}

func TestTruncationAndEDNSClamp(t *testing.T) {
	var seen atomic.Int64
	up := startFake(t, bigTXT(&seen))
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	// Twice each: the first is a miss (slow path), the second a hit (fast path).
	for round := range 2 {
		r := ask(t, p, "udp", "big.example.", dns.TypeTXT, 0)
		if !r.Truncated || len(r.Answer) != 0 || r.Len() > 512 {
			t.Errorf("round %d no EDNS: TC=%v len=%d", round, r.Truncated, r.Len())
		}
		if r.IsEdns0() != nil || len(r.Question) != 1 || r.Question[0].Name != "big.example." {
			t.Errorf("round %d no EDNS: bad shape %v", round, r)
		}
		r = ask(t, p, "udp", "big.example.", dns.TypeTXT, 4096)
		if !r.Truncated || r.Len() > DefaultEDNSBufferSize {
			t.Errorf("round %d EDNS 4096 (clamped to 1232): TC=%v len=%d", round, r.Truncated, r.Len())
		}
		if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != DefaultEDNSBufferSize {
			t.Errorf("round %d: answer OPT %v, want size %d", round, opt, DefaultEDNSBufferSize)
		}
		r = ask(t, p, "tcp", "big.example.", dns.TypeTXT, 0)
		if r.Truncated || len(r.Answer) != 40 {
			t.Errorf("round %d tcp: TC=%v answers=%d", round, r.Truncated, len(r.Answer))
		}
	}
	if got := seen.Load(); got != DefaultEDNSBufferSize {
		t.Errorf("upstream query advertised EDNS %d, want %d", got, DefaultEDNSBufferSize)
	}
	// A big enough client buffer (and our own limit raised) gets everything over UDP.
	cfg := testConfig(up.addr)
	cfg.EDNSBufferSize = 8192 // clamped to 4096
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	r := ask(t, p, "udp", "big2.example.", dns.TypeTXT, 4096)
	if !r.Truncated || r.Len() > 4096 || r.IsEdns0().UDPSize() != 4096 {
		t.Errorf("4096: TC=%v len=%d", r.Truncated, r.Len())
	}
}

// TestCasePreserved: the answer's question has the client's exact case
// (0x20), on a miss and on a hit, over UDP and TCP.
func TestCasePreserved(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	for i, name := range []string{"WwW.ExAmPlE.CoM.", "www.EXAMPLE.com.", "WWW.example.COM."} {
		for _, network := range []string{"udp", "tcp"} {
			r := ask(t, p, network, name, dns.TypeA, 1232*(i%2))
			if r.Question[0].Name != name {
				t.Errorf("%s: question %q, want %q", network, r.Question[0].Name, name)
			}
			if firstA(t, r) != "10.30.0.53" {
				t.Errorf("%s: wrong answer", network)
			}
		}
	}
	if n := up.count("www.example.com."); n != 1 {
		t.Errorf("upstream saw %d", n)
	}
}

func TestParseQuery(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("Mixed.Case.Example.", dns.TypeAAAA)
	m.CheckingDisabled = true
	m.SetEdns0(1400, true)
	wire, _ := m.Pack()
	var q query
	var key [keyMax]byte
	n, ok := parseQuery(wire, &q, &key)
	if !ok {
		t.Fatal("parseQuery rejected a plain query")
	}
	var want [keyMax]byte
	var name [maxNameWire]byte
	wn, _, _ := msgKey(m, &want, &name)
	if string(key[:n]) != string(want[:wn]) {
		t.Errorf("fast key %q != slow key %q", key[:n], want[:wn])
	}
	if !q.edns || !q.do || q.udpSize != 1400 || q.qtype != dns.TypeAAAA || q.id != m.Id {
		t.Errorf("parsed %+v", q)
	}
	for name, b := range map[string][]byte{
		"short":    wire[:10],
		"response": append([]byte{0, 1, 0x80, 0}, wire[4:]...),
		"trailing": append(append([]byte(nil), wire...), 0),
		"cut":      wire[:len(wire)-3],
	} {
		if _, ok := parseQuery(b, &q, &key); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestTTLOffsets(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	m.Response = true
	m.Answer = []dns.RR{mustRR("a.example. 10 IN CNAME b.example."), mustRR("b.example. 20 IN A 192.0.2.1")}
	m.Ns = []dns.RR{mustRR("example. 30 IN NS ns.example.")}
	m.Extra = []dns.RR{mustRR("ns.example. 40 IN AAAA 2001:db8::1")}
	m.Compress = true
	wire, _ := m.Pack()
	offs, ok := ttlOffsets(wire)
	if !ok || len(offs) != 4 {
		t.Fatalf("ttlOffsets = %v, %v", offs, ok)
	}
	for i, off := range offs {
		if got := uint32(wire[off])<<24 | uint32(wire[off+1])<<16 | uint32(wire[off+2])<<8 | uint32(wire[off+3]); got != uint32(10*(i+1)) {
			t.Errorf("offset %d reads TTL %d", off, got)
		}
	}
}

// TestFormErr: malformed packets get FORMERR (when they have a header) or
// are dropped; responses are never answered.
func TestFormErr(t *testing.T) {
	p, err := New(testConfig("127.0.0.1:1"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	src := netip.MustParseAddrPort("127.0.0.1:5353")
	if r := p.slowPacket(t.Context(), []byte{1, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 99}, src, 0); len(r) != 12 || r[3]&0xF != dns.RcodeFormatError || r[0] != 1 || r[1] != 2 {
		t.Errorf("FORMERR answer %x", r)
	}
	if r := p.slowPacket(t.Context(), []byte{1, 2, 0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0, 99}, src, 0); r != nil {
		t.Errorf("answered a response: %x", r)
	}
	if r := p.slowPacket(t.Context(), []byte{1, 2}, src, 0); r != nil {
		t.Errorf("answered a runt: %x", r)
	}
	m := new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	wire, _ := m.Pack()
	r := new(dns.Msg)
	if err := r.Unpack(p.slowPacket(t.Context(), wire, src, 0)); err != nil || r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %v %v", r, err)
	}
	opt := new(dns.Msg)
	opt.SetQuestion("a.example.", dns.TypeA)
	opt.SetEdns0(1232, false)
	opt.IsEdns0().SetVersion(1)
	wire, _ = opt.Pack()
	if err := r.Unpack(p.slowPacket(t.Context(), wire, src, 0)); err != nil || r.Rcode != dns.RcodeBadVers {
		t.Errorf("EDNS version 1: %v %v", r, err)
	}
}

// TestFoldCopy compares the eight-bytes-at-a-time folding with the byte
// loop it replaced, on every byte value in every position and on random
// lengths.
func TestFoldCopy(t *testing.T) {
	ref := func(src []byte) []byte {
		out := make([]byte, len(src))
		for i, c := range src {
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			out[i] = c
		}
		return out
	}
	check := func(src []byte) {
		t.Helper()
		got := make([]byte, len(src))
		foldCopy(got, src)
		if want := ref(src); !bytes.Equal(got, want) {
			t.Fatalf("foldCopy(%x) = %x, want %x", src, got, want)
		}
	}
	for c := range 256 {
		for pos := range 9 {
			src := bytes.Repeat([]byte{'M'}, 9)
			src[pos] = byte(c)
			check(src)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		src := make([]byte, rng.IntN(260))
		for i := range src {
			src[i] = byte(rng.UintN(256))
		}
		check(src)
	}
}

// TestKeyAndName: the name keyAndName gives is wireName's for every name
// parseQuery accepts, escapes and the longest names included, and the key
// is key's bytes.
func TestKeyAndName(t *testing.T) {
	wire := func(labels ...string) []byte {
		var b []byte
		for _, l := range labels {
			b = append(append(b, byte(len(l))), l...)
		}
		return append(b, 0)
	}
	long := func(n int) []string { // labels of 63 and one shorter, n wire bytes in all
		var ls []string
		for n > 1 {
			l := min(63, n-2)
			ls = append(ls, strings.Repeat("a", l))
			n -= l + 1
		}
		return ls
	}
	names := [][]byte{
		{0},
		wire("www", "Example", "COM"),
		wire("_dns", "resolver", "arpa"),
		wire("a b", "example"),
		wire("a.b", "example"),
		wire(`a\b`, "example"),
		wire("a@b;c(d)e\"f'g", "example"),
		wire("x\x00y", "example"),
		wire("caf\xc3\xa9", "example"),
		wire("tab\t", "example"),
		wire("~-_*+!#$%&", "example"),
		wire(long(255)...),
		wire(long(256)...),
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		var ls []string
		for range 1 + rng.IntN(4) {
			l := make([]byte, 1+rng.IntN(12))
			for i := range l {
				l[i] = byte(rng.IntN(256))
				if rng.IntN(4) != 0 {
					l[i] = 'a' + byte(rng.IntN(26))
				}
			}
			ls = append(ls, string(l))
		}
		names = append(names, wire(ls...))
	}
	for _, qname := range names {
		key := append(bytes.ToLower(qname), 0, 1, 0, 1, 0)
		k, name := keyAndName(key, qname)
		if want := wireName(qname); name != want {
			t.Errorf("name of %q: %q, want %q (wireName)", qname, name, want)
		}
		if k != string(key) {
			t.Errorf("key of %q: %q, want %q", qname, k, key)
		}
	}
	// A plain name costs one allocation for both strings.
	qname := wire("www", "example", "com")
	key := append(bytes.ToLower(qname), 0, 1, 0, 1, 0)
	if n := testing.AllocsPerRun(100, func() { keyAndName(key, qname) }); n != 1 {
		t.Errorf("keyAndName of a plain name: %v allocations, want 1", n)
	}
	if _, ok := appendPlainName(nil, wire(long(256)...)); ok {
		t.Error("appendPlainName writes a 256-octet name, which miekg/dns refuses")
	}
	if b, ok := appendPlainName(nil, wire(long(255)...)); !ok || len(b) != 254 {
		t.Errorf("appendPlainName of a 255-octet name: %d bytes, %v; want 254 bytes", len(b), ok)
	}
}
