package dnsproxy

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// countingIdentities counts Lookup calls.
type countingIdentities struct {
	m IdentityMap
	n atomic.Int64
}

func (c *countingIdentities) Lookup(src netip.Addr) (*Peer, bool) {
	c.n.Add(1)
	return c.m.Lookup(src)
}

// everythingOnProxy is an unstarted proxy with groups, an answer observer
// (which has learned the cached answer's address for the peer) and a
// per-peer rate limit, all of which ask who the source is; its cache holds
// www.example.com/A. It returns the proxy, a query packet for the cached
// name and the peer's source address.
func everythingOnProxy(tb testing.TB, ids Identities) (*Proxy, []byte, netip.AddrPort) {
	tb.Helper()
	up := startFakeTB(tb, answerA("10.30.0.53", 3600))
	cfg := testConfig(up)
	cfg.Limits.PeerQPS = 1 << 30
	cfg.Limits.PeerBurst = 1 << 30
	cfg.Groups = []PeerGroup{{Name: "employees", AllZones: true}, {Name: "contractors"}}
	cfg.DefaultGroup = "contractors"
	obs := newFakeObserver()
	obs.learned[[2]netip.Addr{netip.MustParseAddr("10.20.0.2"), netip.MustParseAddr("10.30.0.53")}] = time.Hour
	p, err := New(cfg, Options{Registerer: prometheus.NewRegistry(), Identities: ids, Observer: obs})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	src := netip.MustParseAddr("127.0.0.1")
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	if r, err := p.Exchange(tb.Context(), m, src); err != nil || len(r.Answer) != 1 {
		tb.Fatalf("warm cache: %v %v", r, err)
	}
	m.SetEdns0(1232, false)
	pkt, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return p, pkt, netip.AddrPortFrom(src, 40000)
}

func employeeIdentity() IdentityMap {
	peer := &Peer{Name: "alice/laptop", Group: "employees", V4: netip.MustParseAddr("10.20.0.2")}
	return IdentityMap{netip.MustParseAddr("127.0.0.1"): peer}
}

// TestFastPathOneIdentityLookup: a cache hit with groups, egress learning
// and the per-peer rate limit on asks Identities once, not once per check,
// and still allocates nothing.
func TestFastPathOneIdentityLookup(t *testing.T) {
	ids := &countingIdentities{m: employeeIdentity()}
	p, pkt, src := everythingOnProxy(t, ids)
	ls := newLoopState(0)
	ids.n.Store(0)
	resp, slow := p.handlePacket(ls, pkt, src)
	if slow || resp == nil {
		t.Fatalf("not a fast-path hit (slow=%v)", slow)
	}
	r := new(dns.Msg)
	if err := r.Unpack(resp); err != nil || len(r.Answer) != 1 {
		t.Fatalf("fast-path answer %v %v", r, err)
	}
	if n := ids.n.Load(); n != 1 {
		t.Errorf("a cache hit looked up the source's identity %d times, want 1", n)
	}
	if allocs := testing.AllocsPerRun(1000, func() { p.handlePacket(ls, pkt, src) }); allocs != 0 {
		t.Errorf("fast path with groups and egress allocates %v per hit, want 0", allocs)
	}
	// The same hit for a peer whose group sees no zone leaves the fast path.
	ids.m[src.Addr()] = &Peer{Name: "bob/laptop", Group: "contractors", V4: netip.MustParseAddr("10.20.0.3")}
	if resp, slow := p.handlePacket(ls, pkt, src); resp != nil || !slow {
		t.Error("a hit outside the peer's group was answered on the fast path")
	}
}

// BenchmarkCacheHitEverything is BenchmarkCacheHit with groups, egress
// learning (a covered hit) and the per-peer rate limit, each of which needs
// the source's identity.
func BenchmarkCacheHitEverything(b *testing.B) {
	p, pkt, src := everythingOnProxy(b, employeeIdentity())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ls := newLoopState(int(time.Now().UnixNano()))
		for pb.Next() {
			if resp, _ := p.handlePacket(ls, pkt, src); resp == nil {
				b.Fatal("miss")
			}
		}
	})
}

// BenchmarkCacheHitPeers is the fast path of a cache hit with 10 groups and
// n peer identities (an IdentityMap, the same map the gateway's index
// holds), the source cycling over every peer so that each hit looks up a
// different peer and a different rate-limit bucket, as a busy gateway
// does: the proxy's peer-lookup cost at scale. 1000 shows the cost with
// the peers' state in the CPU caches, 50000 without.
func BenchmarkCacheHitPeers(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmtName("%d", n), func(b *testing.B) {
			up := startFakeTB(b, answerA("10.30.0.53", 3600))
			cfg := testConfig(up)
			cfg.AllowedSources = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
			cfg.Limits.PeerQPS = 1 << 30
			cfg.Limits.PeerBurst = 1 << 30
			cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(up)}}
			for i := range 10 {
				cfg.Groups = append(cfg.Groups, PeerGroup{Name: fmtName("g%d", i), Zones: []string{"corp.example"}})
			}
			cfg.DefaultGroup = "g0"
			ids := IdentityMap{}
			srcs := make([]netip.AddrPort, 0, n)
			a := netip.MustParseAddr("10.40.0.2")
			for i := range n {
				ids[a] = &Peer{Name: fmtName("u%d/default", i), Group: fmtName("g%d", i%10), V4: a}
				srcs = append(srcs, netip.AddrPortFrom(a, 40000))
				a = a.Next()
			}
			p, err := New(cfg, Options{Registerer: prometheus.NewRegistry(), Identities: ids})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.Close() })
			m := new(dns.Msg)
			m.SetQuestion("git.corp.example.", dns.TypeA)
			if r, err := p.Exchange(b.Context(), m, srcs[0].Addr()); err != nil || len(r.Answer) != 1 {
				b.Fatalf("warm cache: %v %v", r, err)
			}
			m.SetEdns0(1232, false)
			pkt, _ := m.Pack()
			ls := newLoopState(0)
			// Every peer asks once first: the steady state is measured, not
			// the rate limiter learning n new sources.
			for _, src := range srcs {
				if resp, _ := p.handlePacket(ls, pkt, src); resp == nil {
					b.Fatal("miss")
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if resp, _ := p.handlePacket(ls, pkt, srcs[i%n]); resp == nil {
					b.Fatal("miss")
				}
			}
		})
	}
}

// expiringObserver learns pairs until now+ttl on its clock and calls a
// pair covered only while it has at least ttl left, as the firewall does.
type expiringObserver struct {
	mu     sync.Mutex
	now    func() time.Time
	exp    map[netip.Addr]time.Time
	learns int
}

func (o *expiringObserver) Covered(v4, v6 netip.Addr, addrs []netip.Addr, ttl time.Duration) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, a := range addrs {
		if exp, ok := o.exp[a]; !ok || exp.Sub(o.now()) < ttl {
			return false
		}
	}
	return true
}

func (o *expiringObserver) Learn(ctx context.Context, v4, v6 netip.Addr, addrs []netip.Addr, ttl time.Duration) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.learns++
	for _, a := range addrs {
		o.exp[a] = o.now().Add(ttl)
	}
	return nil
}

// TestHitCoveredWithRemainingTTL: a cache hit asks the observer to cover
// the TTL the answer carries now, not the one the entry was stored with,
// so a pair learned with the miss keeps every later hit on the fast path
// (before, every hit after the first second went to the slow path and
// learned the pair again).
func TestHitCoveredWithRemainingTTL(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	obs := &expiringObserver{now: clock.Now, exp: map[netip.Addr]time.Time{}}
	up := startFakeTB(t, answerA("10.30.0.53", 300))
	p, err := New(testConfig(up), Options{Registerer: prometheus.NewRegistry(), Identities: employeeIdentity(),
		Observer: obs, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	pkt, _ := m.Pack()
	ls := newLoopState(0)
	if _, slow := p.handlePacket(ls, pkt, src); !slow {
		t.Fatal("first query not a miss")
	}
	if out := p.slowPacket(t.Context(), pkt, src, 0); out == nil {
		t.Fatal("miss not answered")
	}
	if obs.learns != 1 {
		t.Fatalf("%d Learn calls after the miss, want 1", obs.learns)
	}
	for _, step := range []time.Duration{100 * time.Second, 150 * time.Second} {
		clock.Advance(step)
		resp, slow := p.handlePacket(ls, pkt, src)
		if slow || resp == nil {
			t.Fatalf("hit %v later left the fast path", step)
		}
		r := new(dns.Msg)
		if err := r.Unpack(resp); err != nil || len(r.Answer) != 1 {
			t.Fatalf("hit answer %v %v", r, err)
		}
		if exp := obs.exp[netip.MustParseAddr("10.30.0.53")]; clock.Now().Add(time.Duration(r.Answer[0].Header().Ttl) * time.Second).After(exp) {
			t.Errorf("answer TTL %d outlives the learned pair (expires %v, now %v)", r.Answer[0].Header().Ttl, exp, clock.Now())
		}
	}
	if obs.learns != 1 {
		t.Errorf("%d Learn calls, want 1", obs.learns)
	}
}
