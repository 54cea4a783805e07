package firewall

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

var (
	contractor4 = netip.MustParseAddr("10.20.0.2")
	contractor6 = netip.MustParseAddr("fd20::2")
)

func groupSpec(ifname string, full bool) Spec {
	s := testSpec(ifname)
	s.Groups = []GroupRule{
		{Name: "contractors", Peers: []netip.Addr{contractor6, contractor4, contractor4},
			Routes: prefixes("10.30.4.0/24", "2001:db8:1::/64")},
		{Name: "auditors", Peers: []netip.Addr{netip.MustParseAddr("10.20.0.9")}}, // reach nothing
	}
	if full {
		s.FullTunnel = true
		s.EgressMode = EgressOpen // the group rules alone; the egress gate has its own tests
		s.Egress = "hole0"
		s.GroupBound = prefixes("10.0.0.0/8", "fc00::/7", "2001:db8:1::/48", "2001:db8:2::/48")
	}
	return s
}

func TestGroupGolden(t *testing.T) {
	for name, full := range map[string]bool{"split_groups": false, "full_groups": true} {
		t.Run(name, func(t *testing.T) {
			s, err := groupSpec("wg0", full).normalize()
			if err != nil {
				t.Fatal(err)
			}
			got := build(s, egress{s.Egress, s.Egress}).render(nil, nil)
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Errorf("rendering differs from %s (run with -update after checking):\n--- got\n%s\n--- want\n%s", path, got, want)
			}
			for _, line := range []string{
				`iifname "wg0" ip saddr @group0_peers_v4 ip daddr != @group0_routes_v4`,
				`meta l4proto tcp counter name "group_route" reject with tcp reset`,
				`counter name "group_route" reject with icmpx admin-prohibited`,
				`update @peer_group_route_v6 { ip6 saddr counter }`,
			} {
				if !strings.Contains(got, line) {
					t.Errorf("table lacks %q", line)
				}
			}
			if full != strings.Contains(got, "@group_bound_v4") {
				t.Errorf("full=%v but group_bound in the table: %v", full, !full)
			}
		})
	}
	// No groups, no trace of them.
	s, _ := testSpec("wg0").normalize()
	if got := build(s, egress{}).render(nil, nil); strings.Contains(got, "group") {
		t.Errorf("table without groups mentions groups:\n%s", got)
	}
	if _, err := (Spec{Interface: "wg0", Resolvers: []netip.Addr{contractor4}, Groups: []GroupRule{{Name: "a"}, {Name: "a"}}}).normalize(); err == nil {
		t.Error("duplicate group rules accepted")
	}
}

// tcpListen accepts and closes connections on addr in ns until cleanup.
func tcpListen(t *testing.T, ns *netnstest.NS, addr string) {
	tcpServe(t, ns, addr, func(net.Conn) {})
}

// groupNetwork extends gatewayPair: behind the gateway, the sink namespace
// holds 10.30.4.10 and 2001:db8:1::7 (a contractor's routes), 10.30.9.10
// and 2001:db8:2::7 (not), and 198.51.100.10 (the internet), each with a
// UDP echo and a TCP listener on port 7.
func groupNetwork(t *testing.T) (gw, peer *netnstest.NS, wg string, sink *netnstest.NS) {
	gw, peer, wg = gatewayPair(t)
	sink = netnstest.New(t, "gs")
	netnstest.Veth(t, gw, "hole1", sink, "eth0")
	for _, c := range [][]string{
		{"ip", "addr", "add", "192.0.2.129/25", "dev", "eth0"},
		{"ip", "addr", "add", "2001:db8:fe::2/64", "dev", "eth0", "nodad"},
		{"ip", "route", "add", "10.20.0.0/24", "via", "192.0.2.130"},
		{"ip", "-6", "route", "add", "fd20::/64", "via", "2001:db8:fe::1"},
	} {
		sink.Run(c...)
	}
	for _, a := range []string{"10.30.4.10/32", "10.30.9.10/32", "198.51.100.10/32"} {
		sink.Run("ip", "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{"2001:db8:1::7/128", "2001:db8:2::7/128"} {
		sink.Run("ip", "addr", "add", a, "dev", "lo", "nodad")
	}
	for _, c := range [][]string{
		{"ip", "addr", "add", "192.0.2.130/25", "dev", "hole1"},
		{"ip", "addr", "add", "2001:db8:fe::1/64", "dev", "hole1", "nodad"},
		{"ip", "route", "replace", "10.30.4.0/24", "via", "192.0.2.129"},
		{"ip", "route", "replace", "10.30.9.0/24", "via", "192.0.2.129"},
		{"ip", "route", "replace", "198.51.100.10/32", "via", "192.0.2.129"},
		{"ip", "-6", "route", "replace", "2001:db8:1::7/128", "via", "2001:db8:fe::2"},
		{"ip", "-6", "route", "replace", "2001:db8:2::7/128", "via", "2001:db8:fe::2"},
	} {
		gw.Run(c...)
	}
	for _, a := range []string{"10.30.4.10:7", "10.30.9.10:7", "198.51.100.10:7", "[2001:db8:1::7]:7", "[2001:db8:2::7]:7"} {
		udpEcho(t, sink, a)
		tcpListen(t, sink, a)
	}
	// The first IPv6 datagram can be lost to neighbour discovery: warm the
	// paths up (bounded) before any assertion.
	for _, a := range []string{"[2001:db8:1::7]:7", "[2001:db8:2::7]:7", "10.30.4.10:7", "10.30.9.10:7"} {
		for i := 0; i < 3; i++ {
			if _, err := udpExchange(t, peer, a, 500*time.Millisecond); err == nil {
				break
			}
		}
	}
	return gw, peer, wg, sink
}

// reaches reports whether the peer gets through to addr over UDP and TCP;
// refused ones must be refused fast (ICMP error, reset), not time out.
func reaches(t *testing.T, peer *netnstest.NS, addr string) bool {
	t.Helper()
	got, uerr := udpExchange(t, peer, addr, 2*time.Second)
	terr := tcpDial(t, peer, addr, 2*time.Second)
	if isTimeout(uerr) || isTimeout(terr) {
		t.Errorf("%s: timed out (udp %v, tcp %v); want an answer or a fast refusal", addr, uerr, terr)
	}
	if (uerr == nil) != (terr == nil) {
		t.Errorf("%s: udp %v but tcp %v", addr, uerr, terr)
	}
	return uerr == nil && got == "echo:q" && terr == nil
}

func TestKernelGroupRoutes(t *testing.T) {
	gw, peer, wg, _ := groupNetwork(t)
	f := nsFirewallIn(t, gw)
	allowed := []string{"10.30.4.10:7", "[2001:db8:1::7]:7"}
	refused := []string{"10.30.9.10:7", "[2001:db8:2::7]:7"}

	// Baseline without groups: everything is reachable.
	if err := f.Apply(testSpec(wg)); err != nil {
		t.Fatal(err)
	}
	for _, a := range append(append([]string{}, allowed...), refused...) {
		if !reaches(t, peer, a) {
			t.Fatalf("baseline: %s unreachable", a)
		}
	}

	for _, full := range []bool{false, true} {
		s := groupSpec(wg, full)
		if err := f.Apply(s); err != nil {
			t.Fatal(err)
		}
		got, err := f.Render()
		if err != nil {
			t.Fatal(err)
		}
		if want := gw.Run("nft", "list", "table", "inet", s.Table); got != want {
			t.Errorf("full=%v: Render differs from nft list table:\n--- Render\n%s\n--- nft\n%s", full, got, want)
		}
		before, _ := f.Counters()
		for _, a := range allowed {
			if !reaches(t, peer, a) {
				t.Errorf("full=%v: %s (in the group's routes) refused", full, a)
			}
		}
		for _, a := range refused {
			if reaches(t, peer, a) {
				t.Errorf("full=%v: %s (outside the group's routes) reached", full, a)
			}
		}
		// Full mode: the internet is not the group's to bound.
		if full && !reaches(t, peer, "198.51.100.10:7") {
			t.Error("full mode: internet destination refused by the group rule")
		}
		cs, err := f.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if n := cs[ReasonGroupRoute].Packets - before[ReasonGroupRoute].Packets; n < 4 {
			t.Errorf("full=%v: group_route counted %d packets, want >= 4 (2 addresses x udp, tcp)", full, n)
		}
		pc, err := f.PeerCounters(contractor4, contractor6)
		if err != nil {
			t.Fatal(err)
		}
		if pc[ReasonGroupRoute].Packets < 4 {
			t.Errorf("full=%v: per-peer group_route = %+v, want >= 4 packets", full, pc[ReasonGroupRoute])
		}
	}

	// Live membership change: out of the group, everything is reachable;
	// back in, refused again — without re-applying the table.
	s := groupSpec(wg, true)
	applied := f.AppliedAt()
	out := []GroupRule{{Name: "contractors"}, {Name: "auditors"}}
	if err := f.SetGroupPeers(out); err != nil {
		t.Fatal(err)
	}
	if !reaches(t, peer, refused[0]) || !reaches(t, peer, refused[1]) {
		t.Error("peer removed from the group is still refused")
	}
	if err := f.SetGroupPeers(s.Groups); err != nil {
		t.Fatal(err)
	}
	for _, a := range refused {
		if reaches(t, peer, a) {
			t.Errorf("peer back in the group reaches %s", a)
		}
	}
	if !f.AppliedAt().Equal(applied) {
		t.Error("SetGroupPeers re-applied the whole table")
	}
	nt := listTable(t, gw, s.Table)
	if n := nt.sets["group0_peers_v4"].elements + nt.sets["group0_peers_v6"].elements; n != 2 {
		t.Errorf("contractor peer sets hold %d elements, want 2", n)
	}
	if err := f.SetGroupPeers([]GroupRule{{Name: "other"}, {Name: "auditors"}}); !errors.Is(err, ErrGroupsChanged) {
		t.Errorf("SetGroupPeers with other groups: %v, want ErrGroupsChanged", err)
	}
	// A re-apply after drift keeps the current members.
	gw.Run("nft", "delete", "table", "inet", s.Table)
	f.ensure()
	nt = listTable(t, gw, s.Table)
	if n := nt.sets["group0_peers_v4"].elements; n != 1 {
		t.Errorf("after re-apply the contractor v4 set holds %d elements, want 1", n)
	}
}
