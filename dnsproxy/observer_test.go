package dnsproxy

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeObserver is an AnswerObserver that remembers what it learned; block,
// when set, holds Learn until it is closed.
type fakeObserver struct {
	mu      sync.Mutex
	learned map[[2]netip.Addr]time.Duration // (peer, dst) -> ttl
	calls   int
	called  chan struct{} // one send per Learn call when not nil
	block   chan struct{}
}

func newFakeObserver() *fakeObserver {
	return &fakeObserver{learned: map[[2]netip.Addr]time.Duration{}}
}

func pick(v4, v6, d netip.Addr) netip.Addr {
	if d.Is4() {
		return v4
	}
	return v6
}

func (o *fakeObserver) Covered(v4, v6 netip.Addr, addrs []netip.Addr, ttl time.Duration) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, d := range addrs {
		if _, ok := o.learned[[2]netip.Addr{pick(v4, v6, d), d}]; !ok {
			return false
		}
	}
	return true
}

func (o *fakeObserver) Learn(ctx context.Context, v4, v6 netip.Addr, addrs []netip.Addr, ttl time.Duration) error {
	if o.called != nil {
		o.called <- struct{}{}
	}
	if o.block != nil {
		<-o.block
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	for _, d := range addrs {
		o.learned[[2]netip.Addr{pick(v4, v6, d), d}] = ttl
	}
	return nil
}

func (o *fakeObserver) has(peer, dst string) (time.Duration, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ttl, ok := o.learned[[2]netip.Addr{netip.MustParseAddr(peer), netip.MustParseAddr(dst)}]
	return ttl, ok
}

func (o *fakeObserver) nCalls() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.calls
}

// chainHandler answers A with a CNAME chain to two addresses and AAAA with
// one address.
func chainHandler(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	switch q.Qtype {
	case dns.TypeA:
		m.Answer = []dns.RR{
			mustRR("%s 300 IN CNAME edge.cdn.example.", q.Name),
			mustRR("edge.cdn.example. 60 IN CNAME e1.cdn.example."),
			mustRR("e1.cdn.example. 20 IN A 198.51.100.10"),
			mustRR("e1.cdn.example. 90 IN A 198.51.100.11"),
		}
	case dns.TypeAAAA:
		m.Answer = []dns.RR{mustRR("%s 120 IN AAAA 2001:db8::10", q.Name)}
	}
	w.WriteMsg(m)
}

// peerIdentity maps the test's loopback sources to one dual-stack peer.
func peerIdentity() IdentityMap {
	peer := &Peer{Name: "alice/laptop", V4: netip.MustParseAddr("10.20.0.2"), V6: netip.MustParseAddr("fd20::2")}
	return IdentityMap{netip.MustParseAddr("127.0.0.1"): peer, netip.MustParseAddr("::1"): peer}
}

// TestObserverLearnsAnswers: every A/AAAA of an answer (CNAME chains, both
// families, UDP and TCP) reaches the observer for the peer's address of the
// destination's family, with the longest TTL; a cache hit that is already
// covered stays on the fast path, one that is not goes through Learn.
func TestObserverLearnsAnswers(t *testing.T) {
	up := startFake(t, chainHandler)
	obs := newFakeObserver()
	p, _ := startProxy(t, testConfig(up.addr), Options{Identities: peerIdentity(), Observer: obs})

	r := ask(t, p, "udp", "www.example.", dns.TypeA, 0)
	if len(r.Answer) != 4 {
		t.Fatalf("answer %v", r)
	}
	for _, dst := range []string{"198.51.100.10", "198.51.100.11"} {
		if ttl, ok := obs.has("10.20.0.2", dst); !ok || ttl != 90*time.Second {
			t.Errorf("%s learned=%v ttl=%v, want the peer's v4 with ttl 90s", dst, ok, ttl)
		}
	}
	// AAAA asked over IPv4: learned for the peer's IPv6 address.
	ask(t, p, "tcp", "www.example.", dns.TypeAAAA, 0)
	if _, ok := obs.has("fd20::2", "2001:db8::10"); !ok {
		t.Error("AAAA over TCP not learned for the peer's v6 address")
	}
	calls := obs.nCalls()
	if calls != 2 {
		t.Errorf("%d Learn calls, want 2", calls)
	}

	// Cached and covered: no Learn.
	ask(t, p, "udp", "www.example.", dns.TypeA, 0)
	if obs.nCalls() != calls {
		t.Errorf("covered cache hit called Learn")
	}
	// Cached, not covered (the pairs expired): Learn again, no upstream query.
	obs.mu.Lock()
	clear(obs.learned)
	obs.mu.Unlock()
	ask(t, p, "udp", "www.example.", dns.TypeA, 0)
	if obs.nCalls() != calls+1 {
		t.Errorf("uncovered cache hit: %d Learn calls, want %d", obs.nCalls(), calls+1)
	}
	if _, ok := obs.has("10.20.0.2", "198.51.100.11"); !ok {
		t.Error("uncovered cache hit not learned")
	}
	if n := up.count("www.example."); n != 2 {
		t.Errorf("upstream asked %d times, want 2 (A and AAAA once each)", n)
	}
}

// TestObserverBeforeAnswer: the answer is not written until Learn returns.
func TestObserverBeforeAnswer(t *testing.T) {
	up := startFake(t, chainHandler)
	obs := newFakeObserver()
	obs.called, obs.block = make(chan struct{}, 1), make(chan struct{})
	p, _ := startProxy(t, testConfig(up.addr), Options{Observer: obs})
	for _, network := range []string{"udp", "tcp"} {
		obs.mu.Lock()
		clear(obs.learned) // both networks get the same addresses: learn them anew
		obs.mu.Unlock()
		done := make(chan *dns.Msg, 1)
		go func() {
			m := new(dns.Msg)
			m.SetQuestion(network+".example.", dns.TypeA)
			c := &dns.Client{Net: network, Timeout: 5 * time.Second}
			r, _, _ := c.Exchange(m, proxyAddr(t, p, network))
			done <- r
		}()
		<-obs.called
		select {
		case <-done:
			t.Fatalf("%s: answer arrived while Learn was still running", network)
		default:
		}
		obs.block <- struct{}{}
		if r := <-done; r == nil || len(r.Answer) != 4 {
			t.Errorf("%s: answer %v", network, r)
		}
		// Without identities the source stands for itself.
		if _, ok := obs.has("127.0.0.1", "198.51.100.10"); !ok {
			t.Errorf("%s: not learned for the source address", network)
		}
	}
}

// TestFastPathZeroAllocsObserved: a covered cache hit with an observer
// still allocates nothing.
func TestFastPathZeroAllocsObserved(t *testing.T) {
	obs := newFakeObserver()
	obs.learned[[2]netip.Addr{netip.MustParseAddr("10.20.0.2"), netip.MustParseAddr("10.30.0.53")}] = time.Hour
	p, pkt := hotProxyWith(t, Options{Identities: peerIdentity(), Observer: obs})
	ls := newLoopState(0)
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	if resp, slow := p.handlePacket(ls, pkt, src); slow || resp == nil {
		t.Fatalf("covered hit not on the fast path (slow=%v)", slow)
	}
	allocs := testing.AllocsPerRun(1000, func() { p.handlePacket(ls, pkt, src) })
	if allocs != 0 {
		t.Errorf("observed fast path allocates %v per hit, want 0", allocs)
	}
	clear(obs.learned)
	if _, slow := p.handlePacket(ls, pkt, src); !slow {
		t.Error("uncovered hit stayed on the fast path")
	}
}

// TestAnswerAddrs extracts A/AAAA from a CNAME chain and ignores the rest.
func TestAnswerAddrs(t *testing.T) {
	addrs, ttl := answerAddrs([]dns.RR{
		mustRR("a.example. 300 IN CNAME b.example."),
		mustRR("b.example. 30 IN A 192.0.2.1"),
		mustRR("b.example. 40 IN AAAA 2001:db8::1"),
		mustRR("b.example. 500 IN TXT \"x\""),
		mustRR("b.example. 50 IN AAAA ::ffff:192.0.2.9"),
	})
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.9")}
	if !slices.Equal(addrs, want) || ttl != 50*time.Second {
		t.Errorf("answerAddrs = %v %v, want %v 50s", addrs, ttl, want)
	}
}

// TestRateLimitPerPeer: a dual-stack peer's v4 and v6 addresses share one
// budget.
func TestRateLimitPerPeer(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	cfg := testConfig(up.addr)
	cfg.AllowedSources = append(cfg.AllowedSources, netip.MustParsePrefix("10.20.0.0/24"), netip.MustParsePrefix("fd20::/64"))
	cfg.Limits.PeerQPS, cfg.Limits.PeerBurst = 1, 2
	peer := &Peer{Name: "alice/laptop", V4: netip.MustParseAddr("10.20.0.2"), V6: netip.MustParseAddr("fd20::2")}
	other := &Peer{Name: "bob/phone", V4: netip.MustParseAddr("10.20.0.3"), V6: netip.MustParseAddr("fd20::3")}
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	p, _ := startProxy(t, cfg, Options{Now: clock.Now, Identities: IdentityMap{
		peer.V4: peer, peer.V6: peer, other.V4: other, other.V6: other,
	}})
	rcode := func(src string) int {
		m := new(dns.Msg)
		m.SetQuestion("rl.example.", dns.TypeA)
		r, err := p.Exchange(context.Background(), m, netip.MustParseAddr(src))
		if err != nil {
			t.Fatal(err)
		}
		return r.Rcode
	}
	for i, src := range []string{"10.20.0.2", "fd20::2"} {
		if rc := rcode(src); rc != dns.RcodeSuccess {
			t.Fatalf("query %d from %s: %s within the burst", i, src, dns.RcodeToString[rc])
		}
	}
	for _, src := range []string{"fd20::2", "10.20.0.2"} {
		if rc := rcode(src); rc != dns.RcodeRefused {
			t.Errorf("from %s after the shared burst: %s, want REFUSED", src, dns.RcodeToString[rc])
		}
	}
	if rc := rcode("fd20::3"); rc != dns.RcodeSuccess {
		t.Errorf("another peer: %s, want its own budget", dns.RcodeToString[rc])
	}
}
