package firewall

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-vpn/sluice/internal/netnstest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// nsFirewall creates a namespace and a Firewall bound to it; Close runs in
// cleanup.
func nsFirewall(t testing.TB) (*netnstest.NS, *Firewall) {
	t.Helper()
	netnstest.RequirePrivileged(t, "nft")
	ns := netnstest.New(t, "fw")
	return ns, nsFirewallIn(t, ns)
}

func nsFirewallIn(t testing.TB, ns *netnstest.NS) *Firewall {
	t.Helper()
	h := ns.Handle()
	f, err := New(Options{NetNS: int(h)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		h.Close()
	})
	return f
}

func testSpec(ifname string) Spec {
	return Spec{
		Table:          "sluicetest",
		Interface:      ifname,
		Resolvers:      []netip.Addr{netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("fd20::53")},
		TunnelPrefixes: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/24"), netip.MustParsePrefix("fd20::/64")},
		DoHSet:         append(BuiltinDoH(), prefixes("203.0.113.10", "2001:db8:1::10")...),
	}
}

// nftTable is the part of `nft -j list table` the tests look at.
type nftTable struct {
	rules    map[string][]string // chain -> rule expressions (JSON), in order
	sets     map[string]nftSet
	counters map[string]Counter
	tables   int
}

type nftSet struct {
	flags    []string
	elements int
}

func listTable(t testing.TB, ns *netnstest.NS, table string) nftTable {
	t.Helper()
	out := ns.Run("nft", "-j", "list", "table", "inet", table)
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j output: %v\n%s", err, out)
	}
	nt := nftTable{rules: map[string][]string{}, sets: map[string]nftSet{}, counters: map[string]Counter{}}
	for _, obj := range doc.Nftables {
		switch {
		case obj["table"] != nil:
			nt.tables++
		case obj["rule"] != nil:
			var r struct {
				Chain string          `json:"chain"`
				Expr  json.RawMessage `json:"expr"`
			}
			if err := json.Unmarshal(obj["rule"], &r); err != nil {
				t.Fatal(err)
			}
			nt.rules[r.Chain] = append(nt.rules[r.Chain], string(r.Expr))
		case obj["set"] != nil:
			var s struct {
				Name  string            `json:"name"`
				Flags []string          `json:"flags"`
				Elem  []json.RawMessage `json:"elem"`
			}
			if err := json.Unmarshal(obj["set"], &s); err != nil {
				t.Fatal(err)
			}
			nt.sets[s.Name] = nftSet{flags: s.Flags, elements: len(s.Elem)}
		case obj["counter"] != nil:
			var c struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
				Bytes   uint64 `json:"bytes"`
			}
			if err := json.Unmarshal(obj["counter"], &c); err != nil {
				t.Fatal(err)
			}
			nt.counters[c.Name] = Counter{c.Packets, c.Bytes}
		}
	}
	return nt
}

// checkMatches compares the kernel's table with the desired ruleset.
func checkMatches(t testing.TB, ns *netnstest.NS, rs *ruleset) nftTable {
	t.Helper()
	nt := listTable(t, ns, rs.table)
	if nt.tables != 1 {
		t.Errorf("nft lists %d tables named %s", nt.tables, rs.table)
	}
	for _, c := range rs.chains {
		if got := len(nt.rules[c.name]); got != len(c.rules) {
			t.Errorf("chain %s: %d rules in the kernel, want %d", c.name, got, len(c.rules))
		}
	}
	if len(nt.rules) > len(rs.chains) {
		t.Errorf("kernel has rules in %d chains, want at most %d", len(nt.rules), len(rs.chains))
	}
	for _, s := range rs.sets {
		ks, ok := nt.sets[s.name]
		if !ok {
			t.Errorf("set %s missing", s.name)
			continue
		}
		if ks.elements != len(s.ranges) {
			t.Errorf("set %s: %d elements in the kernel, want %d", s.name, ks.elements, len(s.ranges))
		}
		if s.interval != (len(ks.flags) == 1 && ks.flags[0] == "interval") {
			t.Errorf("set %s flags %v, interval=%v", s.name, ks.flags, s.interval)
		}
	}
	if len(nt.counters) != len(Reasons()) {
		t.Errorf("%d counters in the kernel, want %d", len(nt.counters), len(Reasons()))
	}
	return nt
}

func TestKernelApplyMatchesRender(t *testing.T) {
	ns, f := nsFirewall(t)
	other := netnstest.New(t, "up")
	netnstest.Veth(t, ns, "uplink0", other, "eth0")
	ns.Run("ip", "addr", "add", "192.0.2.1/24", "dev", "uplink0")
	ns.Run("ip", "route", "add", "default", "via", "192.0.2.254")
	for name, mut := range map[string]func(*Spec){
		"split_redirect": func(s *Spec) {},
		"split_reject":   func(s *Spec) { s.OffPolicyDNS = ActionReject; s.DoT = ActionAllow; s.PeerToPeer = true },
		"full_reject":    func(s *Spec) { s.FullTunnel = true }, // egress from the default route
		"full_egress":    func(s *Spec) { s.FullTunnel = true; s.Egress = "eth9" },
		"encrypted": func(s *Spec) {
			s.Encrypted = EncryptedListeners{DoT: true, DoH: true}
			s.DoT = ActionRedirect
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := testSpec("wg0")
			mut(&s)
			if err := f.Apply(s); err != nil {
				t.Fatal(err)
			}
			checkMatches(t, ns, f.desired)
			got, err := f.Render()
			if err != nil {
				t.Fatal(err)
			}
			want := ns.Run("nft", "list", "table", "inet", s.Table)
			if got != want {
				t.Errorf("Render differs from nft list table:\n--- Render\n%s\n--- nft\n%s", got, want)
			}
			if s.FullTunnel && s.Egress == "" && !strings.Contains(got, `oifname "uplink0" ip saddr @tunnel_v4 masquerade`) {
				t.Errorf("egress not taken from the default route:\n%s", got)
			}
		})
	}
}

func TestKernelReplaceNoDuplicates(t *testing.T) {
	ns, f := nsFirewall(t)
	// A previous process applied the table and was SIGKILLed: it never closed.
	prev := nsFirewallIn(t, ns)
	s := testSpec("wg0")
	s.KeepOnStop = true
	if err := prev.Apply(s); err != nil {
		t.Fatal(err)
	}
	s.KeepOnStop = false
	for range 2 {
		if err := f.Apply(s); err != nil {
			t.Fatal(err)
		}
	}
	nt := checkMatches(t, ns, f.desired)
	for chain, rules := range nt.rules {
		seen := map[string]bool{}
		for _, r := range rules {
			if seen[r] {
				t.Errorf("chain %s holds a duplicate rule %s", chain, r)
			}
			seen[r] = true
		}
	}
	if out := ns.Run("nft", "list", "tables"); strings.Count(out, "sluicetest") != 1 {
		t.Errorf("tables:\n%s", out)
	}
}

func TestKernelAtomicReplace(t *testing.T) {
	ns, f := nsFirewall(t)
	a := testSpec("wg0") // redirect: 4 rules in prerouting
	b := testSpec("wg0")
	b.OffPolicyDNS = ActionReject // none in prerouting
	b.DoH = ActionAllow           // no DoH sets, fewer rules in peer_dns
	if err := f.Apply(a); err != nil {
		t.Fatal(err)
	}
	shapes := map[string]bool{}
	shape := func(nt nftTable) string {
		return strings.Join([]string{
			string(rune('0' + len(nt.rules[chainPrerouting]))),
			string(rune('0' + len(nt.rules[chainPeerDNS]))),
			string(rune('0' + len(nt.sets))),
		}, "/")
	}
	want := map[string]bool{}
	for _, s := range []Spec{a, b} {
		sn, _ := s.normalize()
		rs := build(sn, egress{})
		want[string(rune('0'+len(rs.chains[0].rules)))+"/"+string(rune('0'+len(rs.chains[3].rules)))+"/"+string(rune('0'+len(rs.sets)))] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := make(chan struct{})
	wg.Add(1)
	go func() { // observer: every snapshot is A or B, never a mix
		defer wg.Done()
		for i := 0; i < 200; i++ {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			default:
			}
			nt := listTable(t, ns, a.Table)
			mu.Lock()
			shapes[shape(nt)] = true
			mu.Unlock()
		}
	}()
	for i := range 20 {
		s := a
		if i%2 == 0 {
			s = b
		}
		if err := f.Apply(s); err != nil {
			t.Error(err)
		}
	}
	close(done)
	wg.Wait()
	if err := f.Apply(b); err != nil {
		t.Fatal(err)
	}
	if len(shapes) == 0 {
		t.Error("observer saw nothing")
	}
	for s := range shapes {
		if !want[s] {
			t.Errorf("observed table shape %s (prerouting/peer_dns rules/sets), want one of %v", s, want)
		}
	}
	checkMatches(t, ns, f.desired)
	if nt := listTable(t, ns, a.Table); len(nt.rules[chainPrerouting]) != 0 {
		t.Errorf("after applying B, prerouting still has A's %d rules", len(nt.rules[chainPrerouting]))
	}
}

func TestKernelReapply(t *testing.T) {
	ns, f := nsFirewall(t)
	s := testSpec("wg0")
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	for i, vandal := range [][]string{
		{"nft", "flush", "ruleset"},
		{"nft", "delete", "table", "inet", s.Table},
		{"nft", "flush", "chain", "inet", s.Table, chainPeerDNS},
		{"nft", "delete", "rule", "inet", s.Table, chainForward, "handle", "0"}, // fails: handle 0; replaced below
	} {
		if i == 3 {
			// Delete one real rule by its handle.
			out := ns.Run("nft", "-a", "list", "chain", "inet", s.Table, chainForward)
			idx := strings.LastIndex(out, "# handle ")
			if idx < 0 {
				t.Fatalf("no handle in %s", out)
			}
			vandal[len(vandal)-1] = strings.Fields(out[idx+len("# handle "):])[0]
		}
		before := f.Reapplied()
		ns.Run(vandal...)
		start := time.Now()
		deadline := start.Add(time.Second)
		for f.Reapplied() == before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(start)
		if f.Reapplied() == before {
			t.Fatalf("%v: not re-applied within 1s", vandal)
		}
		t.Logf("%s: re-applied after %v", strings.Join(vandal, " "), took.Round(time.Millisecond))
		checkMatches(t, ns, f.desired)
	}
}

// gatewayPair builds a gateway namespace and a peer namespace joined by a
// veth whose gateway end is named like a WireGuard interface. The gateway
// routes 198.51.100.0/24, 203.0.113.0/24 and 2001:db8:1::/64 to a sink
// namespace that does not forward (a silent black hole), so off-policy
// traffic is only answered quickly by rules.
func gatewayPair(t *testing.T) (gw, peer *netnstest.NS, wg string) {
	t.Helper()
	gw, peer, _, wg = gatewaySink(t)
	return gw, peer, wg
}

// gatewaySink is gatewayPair that also returns the sink namespace.
func gatewaySink(t testing.TB) (gw, peer, sink *netnstest.NS, wg string) {
	t.Helper()
	netnstest.RequirePrivileged(t, "nft", "sysctl")
	gw, peer = netnstest.New(t, "gw"), netnstest.New(t, "pe")
	sink = netnstest.New(t, "sk")
	wg = netnstest.Unique("wg")
	netnstest.Veth(t, gw, wg, peer, "eth0")
	netnstest.Veth(t, gw, "hole0", sink, "eth0")
	sink.Run("ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
	sink.Run("ip", "addr", "add", "2001:db8:ff::2/64", "dev", "eth0", "nodad")
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "addr", "add", "10.20.0.1/24", "dev", wg},
		{"ip", "addr", "add", "10.20.0.53/32", "dev", wg},
		{"ip", "addr", "add", "fd20::1/64", "dev", wg, "nodad"},
		{"ip", "addr", "add", "fd20::53/128", "dev", wg, "nodad"},
		{"ip", "addr", "add", "192.0.2.1/24", "dev", "hole0"},
		{"ip", "addr", "add", "2001:db8:ff::1/64", "dev", "hole0", "nodad"},
		{"ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2"},
		{"ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.2"},
		{"ip", "route", "add", "10.30.0.0/16", "via", "192.0.2.2"},
		{"ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:ff::2"},
	} {
		gw.Run(c...)
	}
	for _, c := range [][]string{
		{"ip", "addr", "add", "10.20.0.2/24", "dev", "eth0"},
		{"ip", "addr", "add", "fd20::2/64", "dev", "eth0", "nodad"},
		{"ip", "route", "add", "default", "via", "10.20.0.1"},
		{"ip", "-6", "route", "add", "default", "via", "fd20::1"},
	} {
		peer.Run(c...)
	}
	return gw, peer, sink, wg
}

// udpEcho listens on addr in ns and echoes datagrams until cleanup.
func udpEcho(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed in cleanup
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); wg.Wait() })
}

// udpExchange sends one datagram from ns to addr on a connected socket and
// returns the reply or the error, within timeout.
func udpExchange(t *testing.T, ns *netnstest.NS, addr string, timeout time.Duration) (string, error) {
	t.Helper()
	var reply string
	var xerr error
	err := ns.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, xerr = c.Write([]byte("q")); xerr != nil {
			return nil
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		reply, xerr = string(buf[:n]), err
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return reply, xerr
}

func tcpDial(t *testing.T, ns *netnstest.NS, addr string, timeout time.Duration) error {
	t.Helper()
	var derr error
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err == nil {
			c.Close()
		}
		derr = err
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return derr
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestKernelTraffic(t *testing.T) {
	gw, peer, wg := gatewayPair(t)
	f := nsFirewallIn(t, gw)
	udpEcho(t, gw, "10.20.0.53:53")
	udpEcho(t, gw, "[fd20::53]:53")
	const quick = time.Second

	// Without the table the black hole swallows everything: the baseline
	// that makes the fast answers below meaningful.
	if _, err := udpExchange(t, peer, "198.51.100.53:53", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("baseline: UDP to the black hole: %v, want timeout", err)
	}

	s := testSpec(wg)
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	t.Run("redirect", func(t *testing.T) {
		for _, addr := range []string{"198.51.100.53:53", "10.30.0.99:53", "[2001:db8:1::53]:53"} {
			got, err := udpExchange(t, peer, addr, 2*time.Second)
			if err != nil || got != "echo:q" {
				t.Errorf("query to %s: reply %q, %v; want it answered by the proxy", addr, got, err)
			}
		}
		// Direct queries to the proxy still work.
		if got, err := udpExchange(t, peer, "10.20.0.53:53", 2*time.Second); err != nil || got != "echo:q" {
			t.Errorf("query to the proxy: %q, %v", got, err)
		}
		cs, err := f.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if c := cs[ReasonDNSRedirected]; c.Packets < 3 || c.Bytes == 0 {
			t.Errorf("dns_redirected = %+v, want >= 3 packets", c)
		}
		if c := cs[ReasonDNSAccepted]; c.Packets < 4 {
			t.Errorf("dns_accepted = %+v, want >= 4 packets", c)
		}
	})
	t.Run("dot_doh", func(t *testing.T) {
		for _, addr := range []string{"198.51.100.53:853", "[2001:db8:1::53]:853", "203.0.113.10:443", "[2001:db8:1::10]:443"} {
			start := time.Now()
			err := tcpDial(t, peer, addr, 2*time.Second)
			if err == nil || isTimeout(err) || time.Since(start) > quick {
				t.Errorf("TCP %s: %v after %v, want a quick reset", addr, err, time.Since(start))
			}
		}
		// DoQ and HTTP/3: ICMP error on a connected UDP socket.
		for _, addr := range []string{"198.51.100.53:853", "203.0.113.10:443", "[2001:db8:1::10]:443"} {
			start := time.Now()
			if _, err := udpExchange(t, peer, addr, 2*time.Second); err == nil || isTimeout(err) {
				t.Errorf("UDP %s: %v after %v, want an ICMP error", addr, err, time.Since(start))
			}
		}
		cs, err := f.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if cs[ReasonDoTRejected].Packets < 2 || cs[ReasonDoHRejected].Packets < 4 || cs[ReasonDoQRejected].Packets < 1 {
			t.Errorf("counters %+v", cs)
		}
	})
	t.Run("reject", func(t *testing.T) {
		r := s
		r.OffPolicyDNS = ActionReject
		before, _ := f.Counters()
		if err := f.Apply(r); err != nil {
			t.Fatal(err)
		}
		after, err := f.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if after[ReasonDNSRedirected].Packets < before[ReasonDNSRedirected].Packets {
			t.Errorf("counters not carried over the replace: %+v -> %+v", before, after)
		}
		for _, addr := range []string{"198.51.100.53:53", "[2001:db8:1::53]:53"} {
			start := time.Now()
			if got, err := udpExchange(t, peer, addr, 2*time.Second); err == nil || isTimeout(err) {
				t.Errorf("UDP %s: reply %q, %v; want a quick ICMP error", addr, got, err)
			} else {
				t.Logf("UDP %s rejected after %v: %v", addr, time.Since(start).Round(time.Microsecond), err)
			}
			if err := tcpDial(t, peer, addr, 2*time.Second); err == nil || isTimeout(err) {
				t.Errorf("TCP %s: %v, want a reset", addr, err)
			}
		}
		if got, err := udpExchange(t, peer, "10.20.0.53:53", 2*time.Second); err != nil || got != "echo:q" {
			t.Errorf("query to the proxy with reject: %q, %v", got, err)
		}
		cs, _ := f.Counters()
		if cs[ReasonDNSRejected].Packets < after[ReasonDNSRejected].Packets+4 {
			t.Errorf("dns_rejected %+v, want 4 more than %+v", cs[ReasonDNSRejected], after[ReasonDNSRejected])
		}
	})
}

func TestKernelConntrackCleanup(t *testing.T) {
	gw, peer, wg := gatewayPair(t)
	f := nsFirewallIn(t, gw)
	s := testSpec(wg)
	s.DoT = ActionAllow
	if err := f.Apply(s); err != nil { // the nat chain turns conntrack on
		t.Fatal(err)
	}
	// An old DoQ flow, allowed at the time, into the black hole.
	if _, err := udpExchange(t, peer, "198.51.100.53:853", 100*time.Millisecond); !isTimeout(err) {
		t.Fatalf("old flow: %v, want timeout", err)
	}
	ct := func() string {
		out, _ := gw.Exec("conntrack", "-L", "-p", "udp", "--dport", "853")
		return out
	}
	if !strings.Contains(ct(), "dst=198.51.100.53") {
		t.Fatalf("no conntrack entry for the old flow:\n%s", ct())
	}
	s.DoT = ActionReject
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	if out := ct(); strings.Contains(out, "dst=198.51.100.53") {
		t.Errorf("old flow survived the apply:\n%s", out)
	}
}

func TestKernelManyDoH(t *testing.T) {
	ns, f := nsFirewall(t)
	s := testSpec("wg0")
	s.DoHSet = manyPrefixes(2500) // 5,000 entries
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	nt := checkMatches(t, ns, f.desired)
	if nt.sets[setDoH4].elements != 2500 || nt.sets[setDoH6].elements != 2500 {
		t.Errorf("doh sets hold %d + %d elements, want 2500 + 2500", nt.sets[setDoH4].elements, nt.sets[setDoH6].elements)
	}
	total := 0
	for _, rs := range nt.rules {
		total += len(rs)
	}
	if total > 60 { // verdict and per-peer accounting rules, none per entry
		t.Errorf("%d rules for 5,000 DoH entries, want the entries in sets", total)
	}
}

func BenchmarkApply(b *testing.B) {
	ns, f := nsFirewall(b)
	_ = ns
	s := testSpec("wg0")
	s.DoHSet = manyPrefixes(2500) // 5,000 entries
	b.ResetTimer()
	for b.Loop() {
		if err := f.Apply(s); err != nil {
			b.Fatal(err)
		}
	}
}

func TestKernelPollingFallback(t *testing.T) {
	ns, f := nsFirewall(t)
	f.pollOnly = true
	s := testSpec("wg0")
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- f.Run(ctx) }()
	ns.Run("nft", "delete", "table", "inet", s.Table)
	start := time.Now()
	for f.Reapplied() == 0 && time.Since(start) < time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	if f.Reapplied() == 0 {
		t.Fatal("polling did not re-apply within 1s")
	}
	t.Logf("re-applied by polling after %v", time.Since(start).Round(time.Millisecond))
	checkMatches(t, ns, f.desired)
	// Close ends Run and removes the table.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if out, err := ns.Exec("nft", "list", "table", "inet", s.Table); err == nil {
		t.Errorf("table still present after Close:\n%s", out)
	}
	if err := f.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
}

func TestKernelMetrics(t *testing.T) {
	netnstest.RequirePrivileged(t, "nft")
	ns := netnstest.New(t, "fw")
	h := ns.Handle()
	defer h.Close()
	reg := prometheus.NewRegistry()
	f, err := New(Options{NetNS: int(h), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Before Apply a scrape succeeds without the kernel series.
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("gather before apply: %v", err)
	}
	if err := f.Apply(testSpec("wg0")); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		got[mf.GetName()] = len(mf.GetMetric())
	}
	for name, n := range map[string]int{
		"sluice_firewall_packets_total":   len(Reasons()),
		"sluice_firewall_bytes_total":     len(Reasons()),
		"sluice_firewall_reapplied_total": 1,
		"sluice_firewall_apply_seconds":   1,
	} {
		if got[name] != n {
			t.Errorf("%s: %d series, want %d (all: %v)", name, got[name], n, got)
		}
	}
	if _, err := New(Options{Registerer: reg}); err == nil {
		t.Error("second Firewall on the same registry: no error")
	}
}

func TestKernelPeerCounters(t *testing.T) {
	gw, peer, wg := gatewayPair(t)
	f := nsFirewallIn(t, gw)
	udpEcho(t, gw, "10.20.0.53:53")
	udpEcho(t, gw, "[fd20::53]:53")
	spec := testSpec(wg)
	spec.EgressMode = EgressAudit // every per-peer reason is counted
	if err := f.Apply(spec); err != nil {
		t.Fatal(err)
	}
	peer4, peer6 := netip.MustParseAddr("10.20.0.2"), netip.MustParseAddr("fd20::2")
	other4, other6 := netip.MustParseAddr("10.20.0.3"), netip.MustParseAddr("fd20::3")

	// Nothing sent yet: every per-peer reason present and zero.
	cs, err := f.PeerCounters(peer4, peer6)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != len(PeerReasons()) {
		t.Errorf("PeerCounters before traffic = %+v, want all of %v", cs, PeerReasons())
	}
	for r, c := range cs {
		if c != (Counter{}) {
			t.Errorf("%s = %+v before traffic", r, c)
		}
	}

	const queries = 3
	for i := range queries {
		for _, addr := range []string{"198.51.100.53:53", "[2001:db8:1::53]:53"} {
			if got, err := udpExchange(t, peer, addr, 2*time.Second); err != nil || got != "echo:q" {
				t.Fatalf("query %d to %s: %q, %v; want it redirected to the proxy", i, addr, got, err)
			}
		}
	}
	for _, addr := range []string{"198.51.100.53:853", "[2001:db8:1::53]:853"} {
		if err := tcpDial(t, peer, addr, 2*time.Second); err == nil || isTimeout(err) {
			t.Fatalf("TCP %s: %v, want a reset", addr, err)
		}
	}

	check := func(name string, got map[Reason]Counter, want map[Reason]uint64) {
		t.Helper()
		for _, r := range PeerReasons() {
			c, ok := got[r]
			if !ok {
				t.Errorf("%s: %s missing", name, r)
				continue
			}
			if c.Packets != want[r] || (c.Packets == 0) != (c.Bytes == 0) {
				t.Errorf("%s: %s = %+v, want %d packets", name, r, c, want[r])
			}
		}
	}
	// Each query is its own flow (new source port): one NATed packet each.
	// The proxy sees each query too; a dial to 853 is one SYN (the reset
	// ends it).
	both, err := f.PeerCounters(peer4, peer6)
	if err != nil {
		t.Fatal(err)
	}
	check("peer v4+v6", both, map[Reason]uint64{
		ReasonDNSRedirected: 2 * queries, ReasonDNSAccepted: 2 * queries, ReasonDoTRejected: 2,
	})
	v4, err := f.PeerCounters(peer4)
	if err != nil {
		t.Fatal(err)
	}
	check("peer v4", v4, map[Reason]uint64{ReasonDNSRedirected: queries, ReasonDNSAccepted: queries, ReasonDoTRejected: 1})
	none, err := f.PeerCounters(other4, other6)
	if err != nil {
		t.Fatal(err)
	}
	check("other peer", none, nil)

	// The table-wide counters agree with the per-peer ones (one peer).
	total, err := f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Reason{ReasonDNSRedirected, ReasonDoTRejected} {
		if total[r] != both[r] {
			t.Errorf("%s: table %+v, peer %+v", r, total[r], both[r])
		}
	}
	t.Logf("peer %v %v: %+v", peer4, peer6, both)

	// Render lists the live per-peer elements as nft does; only the
	// remaining lifetimes may differ between the two reads.
	got, err := f.Render()
	if err != nil {
		t.Fatal(err)
	}
	want := gw.Run("nft", "list", "table", "inet", "sluicetest")
	expires := regexp.MustCompile(`expires [0-9dhms]+`)
	if !strings.Contains(want, "elements = { 10.20.0.2 counter packets 3 ") {
		t.Errorf("nft does not list the peer's element:\n%s", want)
	}
	if g, w := expires.ReplaceAllString(got, "expires X"), expires.ReplaceAllString(want, "expires X"); g != w {
		t.Errorf("Render differs from nft list table:\n--- Render\n%s\n--- nft\n%s", got, want)
	}

	// Reject mode. The replace starts the per-peer sets empty (documented).
	r := testSpec(wg)
	r.OffPolicyDNS = ActionReject
	if err := f.Apply(r); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"198.51.100.53:53", "[2001:db8:1::53]:53"} {
		if _, err := udpExchange(t, peer, addr, 2*time.Second); err == nil || isTimeout(err) {
			t.Fatalf("UDP %s with reject: %v, want an ICMP error", addr, err)
		}
	}
	rej, err := f.PeerCounters(peer4, peer6)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rej[ReasonDNSRedirected]; ok {
		t.Errorf("dns_redirected reported per peer without redirect rules: %+v", rej)
	}
	for r, c := range rej {
		want := uint64(0)
		if r == ReasonDNSRejected {
			want = 2
		}
		if c.Packets != want {
			t.Errorf("reject mode: %s = %+v, want %d packets", r, c, want)
		}
	}
	if none, err := f.PeerCounters(other4, other6); err != nil || none[ReasonDNSRejected] != (Counter{}) {
		t.Errorf("other peer in reject mode: %+v, %v", none, err)
	}

	if _, err := f.PeerCounters(netip.Addr{}); err == nil {
		t.Error("PeerCounters(invalid address): no error")
	}
}

// TestKernelTableOfAnotherInterface: a table that enforces another
// interface (another sluice, or a killed one) is never taken over silently;
// the same interface's leftover is replaced as usual.
func TestKernelTableOfAnotherInterface(t *testing.T) {
	ns, first := nsFirewall(t)
	if err := first.Apply(testSpec("wg0")); err != nil {
		t.Fatal(err)
	}
	second := nsFirewallIn(t, ns)
	err := second.Apply(testSpec("wg1"))
	if !errors.Is(err, ErrTableInUse) || !strings.Contains(err.Error(), "enforces interface wg0, not wg1") {
		t.Fatalf("apply over another interface's table: %v, want ErrTableInUse naming wg0", err)
	}
	if out := ns.Run("nft", "list", "table", "inet", "sluicetest"); !strings.Contains(out, `iifname "wg0"`) || strings.Contains(out, "wg1") {
		t.Errorf("the first table was touched:\n%s", out)
	}
	if err := second.Apply(testSpec("wg0")); err != nil {
		t.Errorf("replacing a table of the same interface: %v", err)
	}
	// Seen from a gateway of wg1, a table for wg0 is drift to repair.
	spec, err := testSpec("wg1").normalize()
	if err != nil {
		t.Fatal(err)
	}
	if diff, err := first.drift(build(spec, egress{})); err != nil || !strings.Contains(diff, `"wg0"`) {
		t.Errorf("drift of a wg1 table against wg0's = %q, %v; want the interface named", diff, err)
	}
}
