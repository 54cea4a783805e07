package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Loopback sources standing for two peers (all of 127/8 is local on Linux).
var (
	employeeSrc   = netip.MustParseAddr("127.0.0.2")
	contractorSrc = netip.MustParseAddr("127.0.0.3")
	ghostSrc      = netip.MustParseAddr("127.0.0.4") // a group the config does not know
)

func groupIdentities() IdentityMap {
	return IdentityMap{
		employeeSrc:   {Name: "alice/laptop", Group: "employees", V4: employeeSrc},
		contractorSrc: {Name: "bob/laptop", Group: "contractors", V4: contractorSrc},
		ghostSrc:      {Name: "carol/laptop", Group: "ghosts", V4: ghostSrc},
	}
}

// groupSetup is a proxy with zones corp.example and hr.corp.example and
// groups employees (every zone, the default) and contractors (corp.example
// only, plus a blocklist naming secret.corp.example).
type groupSetup struct {
	p               *Proxy
	cfg             Config
	corp, hr, inet  *fakeServer
	contractorBlock string
}

func newGroupSetup(t *testing.T) *groupSetup {
	t.Helper()
	return newGroupSetupWith(t, answerA("10.30.0.10", 300))
}

// newGroupSetupWith is newGroupSetup with the corp.example resolver's handler.
func newGroupSetupWith(t *testing.T, corp func(w dns.ResponseWriter, r *dns.Msg)) *groupSetup {
	t.Helper()
	s := &groupSetup{
		corp: startFake(t, corp),
		hr:   startFake(t, answerA("10.30.9.10", 300)),
		inet: startFake(t, answerA("198.51.100.7", 300)),
	}
	s.contractorBlock = filepath.Join(t.TempDir(), "contractors-block.txt")
	if err := os.WriteFile(s.contractorBlock, []byte("secret.corp.example # not for contractors\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.cfg = testConfig(s.inet.addr)
	s.cfg.Zones = []Zone{
		{Name: "corp.example", Upstreams: MustParseUpstreams(s.corp.addr)},
		{Name: "HR.corp.example.", Upstreams: MustParseUpstreams(s.hr.addr)},
	}
	s.cfg.Groups = []PeerGroup{
		{Name: "employees", AllZones: true},
		{Name: "contractors", Zones: []string{"corp.example"}, BlocklistFile: s.contractorBlock},
	}
	s.cfg.DefaultGroup = "employees"
	s.p, _ = startProxy(t, s.cfg, Options{Identities: groupIdentities()})
	return s
}

// askFrom sends one query from src over network ("udp" or "tcp").
func askFrom(t testing.TB, p *Proxy, network string, src netip.Addr, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	d := &net.Dialer{Timeout: 3 * time.Second}
	if network == "udp" {
		d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	} else {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second, Dialer: d}
	var addr string
	for _, a := range p.Addrs() {
		if a.Network() == network {
			addr = a.String()
		}
	}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

func mustAskFrom(t *testing.T, p *Proxy, network string, src netip.Addr, name string) *dns.Msg {
	t.Helper()
	r, err := askFrom(t, p, network, src, name, dns.TypeA)
	if err != nil {
		t.Fatalf("%s query for %s from %s: %v", network, name, src, err)
	}
	return r
}

// wantProhibited checks the answer is the group refusal: NXDOMAIN, no
// answer records, EDE 18.
func wantProhibited(t *testing.T, what string, r *dns.Msg) {
	t.Helper()
	if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
		t.Errorf("%s: rcode %s with %d answers, want NXDOMAIN and none:\n%v", what, dns.RcodeToString[r.Rcode], len(r.Answer), r)
		return
	}
	e := ede(r)
	if e == nil || e.InfoCode != dns.ExtendedErrorCodeProhibited || !strings.Contains(e.ExtraText, "contractors") {
		t.Errorf("%s: EDE %v, want 18 (Prohibited) naming the group", what, e)
	}
}

// The cache case: an employee asks first (the answer is cached), a
// contractor asks the same name second — over UDP (fast path), TCP and
// after a reload — and is refused every time; the name is never forwarded
// for the contractor.
func TestGroupCachedAnswerNeverCrossesGroups(t *testing.T) {
	s := newGroupSetup(t)
	const name = "payroll.hr.corp.example."
	check := func(stage string) {
		for _, network := range []string{"udp", "tcp"} {
			r := mustAskFrom(t, s.p, network, employeeSrc, name)
			if got := firstA(t, r); got != "10.30.9.10" {
				t.Fatalf("%s: employee over %s got %s", stage, network, got)
			}
			for range 2 { // the second one finds the entry hot on the fast path
				wantProhibited(t, stage+" contractor over "+network, mustAskFrom(t, s.p, network, contractorSrc, name))
			}
		}
	}
	check("first")
	if hits := s.p.Stats().CacheHits; hits == 0 {
		t.Fatal("the employee's answers were not cached: the test proves nothing")
	}
	if err := s.p.Reload(s.cfg); err != nil {
		t.Fatal(err)
	}
	check("after reload")
	// Mixed case is the same name.
	wantProhibited(t, "mixed case", mustAskFrom(t, s.p, "udp", contractorSrc, "PayRoll.HR.corp.EXAMPLE."))
	if n := s.hr.count(name); n != 1 {
		t.Errorf("hr resolver saw %d queries, want 1 (the employee's; contractors are never forwarded)", n)
	}
	// What contractors may see they get, from the cache too.
	for range 2 {
		if got := firstA(t, mustAskFrom(t, s.p, "udp", contractorSrc, "wiki.corp.example.")); got != "10.30.0.10" {
			t.Errorf("contractor, corp zone: %s", got)
		}
		if got := firstA(t, mustAskFrom(t, s.p, "udp", contractorSrc, "www.example.net.")); got != "198.51.100.7" {
			t.Errorf("contractor, public name: %s", got)
		}
	}
	// A source that is no peer belongs to the default group (employees).
	if got := firstA(t, mustAskFrom(t, s.p, "udp", netip.MustParseAddr("127.0.0.1"), name)); got != "10.30.9.10" {
		t.Errorf("no identity (default group): %s", got)
	}
	// A peer of a group the config does not know sees no internal zone.
	if r := mustAskFrom(t, s.p, "udp", ghostSrc, "wiki.corp.example."); r.Rcode != dns.RcodeNameError {
		t.Errorf("unknown group, corp zone: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if got := firstA(t, mustAskFrom(t, s.p, "udp", ghostSrc, "www.example.net.")); got != "198.51.100.7" {
		t.Errorf("unknown group, public name: %s", got)
	}
}

// A group's blocklist also holds on the fast path, for a name another group
// cached; the global allowlist still wins.
func TestGroupBlocklist(t *testing.T) {
	s := newGroupSetup(t)
	for _, name := range []string{"secret.corp.example.", "a.secret.corp.example."} {
		for range 2 {
			if got := firstA(t, mustAskFrom(t, s.p, "udp", employeeSrc, name)); got != "10.30.0.10" {
				t.Fatalf("employee %s: %s", name, got)
			}
		}
		for _, network := range []string{"udp", "udp", "tcp"} {
			r := mustAskFrom(t, s.p, network, contractorSrc, name)
			e := ede(r)
			if r.Rcode != dns.RcodeNameError || e == nil || e.InfoCode != dns.ExtendedErrorCodeBlocked {
				t.Errorf("contractor %s over %s: rcode %s, EDE %v; want NXDOMAIN, EDE 15", name, network, dns.RcodeToString[r.Rcode], e)
			}
		}
	}
	cfg := s.cfg
	cfg.Policy.Allowlist = []string{"a.secret.corp.example"}
	if err := s.p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if r := mustAskFrom(t, s.p, "udp", contractorSrc, "a.secret.corp.example."); r.Rcode != dns.RcodeSuccess {
			t.Errorf("allowlisted name blocked for the group: %v", r)
		}
	}
	if r := mustAskFrom(t, s.p, "udp", contractorSrc, "secret.corp.example."); r.Rcode != dns.RcodeNameError {
		t.Errorf("blocked name answered after an unrelated allowlist entry: %v", r)
	}
}

// The refusal names its reason and the peer's group in the query log and trace.
func TestGroupRefusalInTrace(t *testing.T) {
	s := newGroupSetup(t)
	recs, stop := s.p.Tap([]netip.Addr{contractorSrc, employeeSrc}, 16)
	defer stop()
	mustAskFrom(t, s.p, "udp", employeeSrc, "x.hr.corp.example.")
	mustAskFrom(t, s.p, "udp", contractorSrc, "x.hr.corp.example.")
	want := []struct{ group, blocked string }{{"employees", ""}, {"contractors", reasonGroupZone}}
	for i, w := range want {
		select {
		case r := <-recs:
			if r.PeerGroup != w.group || r.Blocked != w.blocked {
				t.Errorf("record %d: peer_group %q blocked %q, want %q %q", i, r.PeerGroup, r.Blocked, w.group, w.blocked)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("record %d not traced", i)
		}
	}
}

// Under concurrent load from both groups, over UDP and TCP, with reloads in
// between, no contractor ever gets the hr answer and no employee is refused.
func TestGroupCacheConcurrent(t *testing.T) {
	s := newGroupSetup(t)
	names := []string{"a.hr.corp.example.", "b.hr.corp.example.", "c.hr.corp.example.", "wiki.corp.example."}
	const workers, rounds = 8, 60
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var reloads sync.WaitGroup
	reloads.Add(1)
	go func() {
		defer reloads.Done()
		for i := 0; i < 5 && ctx.Err() == nil; i++ {
			time.Sleep(20 * time.Millisecond)
			if err := s.p.Reload(s.cfg); err != nil {
				t.Error(err)
			}
		}
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	leaks, refused, answered := 0, 0, 0
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src, network := employeeSrc, "udp"
			if w%2 == 1 {
				src = contractorSrc
			}
			if w%4 >= 2 {
				network = "tcp"
			}
			for i := range rounds {
				name := names[(i+w)%len(names)]
				r, err := askFrom(t, s.p, network, src, name, dns.TypeA)
				if err != nil {
					t.Errorf("%s %s: %v", network, name, err)
					return
				}
				hr := strings.HasSuffix(name, ".hr.corp.example.")
				mu.Lock()
				switch {
				case src == contractorSrc && hr && (r.Rcode != dns.RcodeNameError || len(r.Answer) > 0):
					leaks++
				case src == employeeSrc && r.Rcode != dns.RcodeSuccess:
					refused++
				default:
					answered++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	cancel()
	reloads.Wait()
	if leaks != 0 || refused != 0 {
		t.Errorf("%d hr answers reached contractors, %d employee queries refused (of %d)", leaks, refused, workers*rounds)
	}
	if answered != workers*rounds {
		t.Errorf("answered %d of %d", answered, workers*rounds)
	}
	if s.p.Stats().CacheHits == 0 {
		t.Error("no cache hits: the load never exercised the cache")
	}
}

func TestGroupConfigErrors(t *testing.T) {
	up := startFake(t, answerA("198.51.100.1", 60))
	base := testConfig(up.addr)
	base.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(up.addr)}}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"unknown zone", func(c *Config) {
			c.Groups = []PeerGroup{{Name: "a", Zones: []string{"hr.example"}}}
			c.DefaultGroup = "a"
		}, `zone "hr.example" is not configured`},
		{"no default", func(c *Config) { c.Groups = []PeerGroup{{Name: "a"}} }, `default group "" is not configured`},
		{"default unknown", func(c *Config) {
			c.Groups = []PeerGroup{{Name: "a"}}
			c.DefaultGroup = "b"
		}, `default group "b" is not configured`},
		{"duplicate", func(c *Config) {
			c.Groups = []PeerGroup{{Name: "a"}, {Name: "a"}}
			c.DefaultGroup = "a"
		}, "duplicate"},
		{"default without groups", func(c *Config) { c.DefaultGroup = "a" }, "no groups configured"},
		{"missing blocklist", func(c *Config) {
			c.Groups = []PeerGroup{{Name: "a", BlocklistFile: "/nonexistent/block.txt"}}
			c.DefaultGroup = "a"
		}, "blocklist"},
	} {
		cfg := base
		tc.mod(&cfg)
		p, err := New(cfg, Options{})
		if err == nil {
			p.Close()
			t.Errorf("%s: New accepted the config", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q, want it to contain %q", tc.name, err, tc.want)
		}
	}
}

// The fast path's group check does not allocate.
func TestGroupFastPathNoAlloc(t *testing.T) {
	s := newGroupSetup(t)
	mustAskFrom(t, s.p, "udp", employeeSrc, "wiki.corp.example.")
	m := new(dns.Msg)
	m.SetQuestion("wiki.corp.example.", dns.TypeA)
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	ls := newLoopState(0)
	for _, src := range []netip.Addr{employeeSrc, contractorSrc} {
		from := netip.AddrPortFrom(src, 5353)
		if resp, slow := s.p.handlePacket(ls, pkt, from); resp == nil || slow {
			t.Fatalf("%s: not answered from the cache on the fast path", src)
		}
		if n := testing.AllocsPerRun(100, func() { s.p.handlePacket(ls, pkt, from) }); n != 0 {
			t.Errorf("%s: fast path allocates %v times per hit", src, n)
		}
	}
	// The refused case leaves the fast path for the slow one.
	m.SetQuestion("x.hr.corp.example.", dns.TypeA)
	mustAskFrom(t, s.p, "udp", employeeSrc, "x.hr.corp.example.")
	pkt, _ = m.Pack()
	if resp, slow := s.p.handlePacket(ls, pkt, netip.AddrPortFrom(contractorSrc, 5353)); resp != nil || !slow {
		t.Error("a contractor's hit on the hr zone was answered on the fast path")
	}
}

// BenchmarkCacheHitGroups is BenchmarkCacheHit's fast path with 10 groups
// and 1,000 peer identities; "without" runs the same proxy setup with no
// groups, side by side. The hit is in an internal zone the peer's group sees.
func BenchmarkCacheHitGroups(b *testing.B) {
	for _, withGroups := range []bool{false, true} {
		name := "without"
		if withGroups {
			name = "with_10_groups_1000_peers"
		}
		b.Run(name, func(b *testing.B) {
			up := startFakeTB(b, answerA("10.30.0.53", 3600))
			cfg := testConfig(up)
			cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(up)}}
			var ids IdentityMap
			src := netip.MustParseAddr("127.0.0.1")
			if withGroups {
				for i := range 10 {
					z := fmtName("z%d.internal", i)
					cfg.Zones = append(cfg.Zones, Zone{Name: z, Upstreams: MustParseUpstreams(up)})
					cfg.Groups = append(cfg.Groups, PeerGroup{Name: fmtName("g%d", i), Zones: []string{"corp.example", z}})
				}
				cfg.DefaultGroup = "g0"
				ids = IdentityMap{}
				a := src
				for i := range 1000 {
					ids[a] = &Peer{Name: fmtName("u%d/default", i), Group: fmtName("g%d", i%10), V4: a}
					a = a.Next()
				}
			}
			opts := Options{Registerer: prometheus.NewRegistry()}
			if ids != nil {
				opts.Identities = ids
			}
			p, err := New(cfg, opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.Close() })
			m := new(dns.Msg)
			m.SetQuestion("git.corp.example.", dns.TypeA)
			if r, err := p.Exchange(b.Context(), m, src); err != nil || len(r.Answer) != 1 {
				b.Fatalf("warm cache: %v %v", r, err)
			}
			m.SetEdns0(1232, false)
			pkt, _ := m.Pack()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				ls := newLoopState(int(time.Now().UnixNano()))
				from := netip.AddrPortFrom(src, 40000)
				for pb.Next() {
					if resp, _ := p.handlePacket(ls, pkt, from); resp == nil {
						b.Fatal("miss")
					}
				}
			})
		})
	}
}

// A name in a zone the contractor may see whose answer follows a CNAME into
// a zone it may not (corp.example → hr.corp.example, as the corp resolver
// answers it) carries the hidden zone's records: refused like the hidden
// name itself, from the upstream and from the cache (UDP fast path, TCP),
// while the employee gets the whole chain. Each refusal is counted once.
func TestGroupCNAMEIntoHiddenZone(t *testing.T) {
	const alias, target = "payroll.corp.example.", "payroll.hr.corp.example."
	s := newGroupSetupWith(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		switch q := strings.ToLower(r.Question[0].Name); q {
		case alias: // leaves the zone for hr.corp.example
			m.Answer = append(m.Answer, mustRR("%s 300 IN CNAME %s", alias, target), mustRR("%s 300 IN A 10.30.9.10", target))
		case "docs.corp.example.": // stays inside corp.example
			m.Answer = append(m.Answer, mustRR("%s 300 IN CNAME wiki.corp.example.", q), mustRR("wiki.corp.example. 300 IN A 10.30.0.11"))
		}
		w.WriteMsg(m)
	})
	before := s.p.Stats().Blocked
	// The contractor first (from the upstream), then the employee (fills the
	// cache), then the contractor again from the cache, over UDP twice (the
	// second a fast-path candidate) and TCP.
	wantProhibited(t, "contractor, from the upstream", mustAskFrom(t, s.p, "udp", contractorSrc, alias))
	r := mustAskFrom(t, s.p, "udp", employeeSrc, alias)
	if len(r.Answer) != 2 {
		t.Fatalf("employee: %d answers, want the CNAME and the A record:\n%v", len(r.Answer), r)
	}
	for i, network := range []string{"udp", "udp", "tcp"} {
		wantProhibited(t, fmt.Sprintf("contractor from the cache #%d over %s", i, network), mustAskFrom(t, s.p, network, contractorSrc, alias))
	}
	wantProhibited(t, "contractor, a hidden name", mustAskFrom(t, s.p, "udp", contractorSrc, target))
	if got := s.p.Stats().Blocked - before; got != 5 {
		t.Errorf("blocked counter moved by %d, want 5 (one per refusal)", got)
	}
	// A CNAME chain that stays in a visible zone is not affected.
	if r := mustAskFrom(t, s.p, "udp", contractorSrc, "docs.corp.example."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
		t.Errorf("contractor, CNAME inside its zone: %s with %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
}
