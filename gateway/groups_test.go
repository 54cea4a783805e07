package gateway

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/peers"
)

const groupsConfig = `interface:
  addresses: [10.20.0.1/24, fd20::1/64]
dns:
  listen: [10.20.0.53, fd20::53]
  zones:
    - name: corp.example
      upstreams: [10.30.0.53]
    - name: hr.corp.example
      upstreams: [10.30.9.53]
  default:
    upstreams: [198.51.100.53]
peers:
  state_dir: /tmp/sluice-test
  routes: [10.30.0.0/16, fd30::/48]
  default_group: employees
groups:
  employees: {}
  contractors:
    zones: [corp.example]
    routes: [10.30.4.0/24, fd30:0:0:4::/64]
  lab:
    zones: []
    routes: []
`

func TestParseGroups(t *testing.T) {
	c, err := Parse("groups.yaml", []byte(groupsConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Groups.Default != "employees" || len(c.Groups.List) != 3 {
		t.Fatalf("groups = %+v", c.Groups)
	}
	con, ok := c.Groups.Find("contractors")
	if !ok || con.AllZones || con.AllRoutes || len(con.Zones) != 1 || con.Zones[0] != "corp.example" || len(con.Routes) != 2 {
		t.Errorf("contractors = %+v", con)
	}
	if emp, _ := c.Groups.Find("employees"); !emp.AllZones || !emp.AllRoutes {
		t.Errorf("employees = %+v, want no restriction", emp)
	}
	if lab, _ := c.Groups.Find("lab"); lab.AllZones || lab.AllRoutes || len(lab.Zones)+len(lab.Routes) != 0 {
		t.Errorf("lab (empty lists) = %+v, want restricted to nothing", lab)
	}
	if c.DNS.DefaultGroup != "employees" || len(c.DNS.Groups) != 3 {
		t.Errorf("dns groups = %+v default %q", c.DNS.Groups, c.DNS.DefaultGroup)
	}

	alice := peers.Peer{User: "alice", Device: "laptop", IPv4: netip.MustParseAddr("10.20.0.2"), IPv6: netip.MustParseAddr("fd20::2")}
	bob := peers.Peer{User: "bob", Device: "laptop", Group: "contractors", IPv4: netip.MustParseAddr("10.20.0.3"), IPv6: netip.MustParseAddr("fd20::3")}
	ghost := peers.Peer{User: "carol", Device: "laptop", Group: "gone", IPv4: netip.MustParseAddr("10.20.0.4")}
	if c.GroupOf(alice) != "employees" || c.GroupOf(bob) != "contractors" {
		t.Errorf("GroupOf = %q, %q", c.GroupOf(alice), c.GroupOf(bob))
	}
	if got := prefixList(c.PeerRoutes(alice)); got != "10.30.0.0/16, fd30::/48" {
		t.Errorf("employee routes = %s", got)
	}
	if got := prefixList(c.PeerRoutes(bob)); got != "10.30.4.0/24, fd30:0:0:4::/64" {
		t.Errorf("contractor routes = %s", got)
	}
	if got := c.PeerRoutes(ghost); len(got) != 0 {
		t.Errorf("unknown group routes = %v, want none", got)
	}

	// Firewall: contractors and lab have rules; employees none; a peer of
	// an unknown group lands in a rule reaching nothing.
	rules := c.groupRules([]peers.Peer{alice, bob, ghost})
	names := []string{}
	for _, r := range rules {
		names = append(names, r.Name)
	}
	if strings.Join(names, ",") != "contractors,lab,"+unknownGroupRule {
		t.Fatalf("rules = %v", names)
	}
	if len(rules[0].Peers) != 2 || rules[0].Peers[0] != bob.IPv4 || len(rules[0].Routes) != 2 {
		t.Errorf("contractor rule = %+v", rules[0])
	}
	if len(rules[2].Peers) != 1 || len(rules[2].Routes) != 0 {
		t.Errorf("unknown group rule = %+v", rules[2])
	}
	if c.groupBound() != nil {
		t.Errorf("split mode bound = %v, want every destination", c.groupBound())
	}
}

func TestParseGroupsFullMode(t *testing.T) {
	doc := strings.Replace(groupsConfig, "  default:\n    upstreams: [198.51.100.53]", "  mode: full\n  default:\n    upstreams: [10.30.0.53]", 1)
	doc = strings.Replace(doc, "routes: [10.30.0.0/16, fd30::/48]", "routes: []", 1)
	c, err := Parse("full.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	// In full mode group routes lie inside the internal prefixes, which
	// bound the group rules.
	if got := prefixList(c.groupBound()); !strings.Contains(got, "10.0.0.0/8") || !strings.Contains(got, "fc00::/7") {
		t.Errorf("full mode bound = %s", got)
	}
}

func TestParseGroupsErrors(t *testing.T) {
	block := filepath.Join(t.TempDir(), "block.txt")
	if err := os.WriteFile(block, []byte("x.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, from, to string
		want           string
	}{
		{"unknown zone", "zones: [corp.example]", "zones: [corp.example, finance.example]",
			`groups.yaml:19: groups.contractors.zones[1]: zone "finance.example" is not configured`},
		{"route outside", "routes: [10.30.4.0/24, fd30:0:0:4::/64]", "routes: [10.30.4.0/24, 10.99.0.0/24]",
			"groups.yaml:20: groups.contractors.routes[1]: route 10.99.0.0/24 is outside peers.routes"},
		{"route host bits", "routes: [10.30.4.0/24, fd30:0:0:4::/64]", "routes: [10.30.4.1/24]",
			"groups.contractors.routes[0]: 10.30.4.1/24 has host bits set"},
		{"unknown default", "default_group: employees", "default_group: staff",
			`groups.yaml:15: peers.default_group: group "staff" is not in groups`},
		{"no default", "  default_group: employees\n", "",
			"peers.default_group: groups are configured but peers.default_group is not set"},
		{"unknown key", "  lab:\n    zones: []", "  lab:\n    zone: []",
			`unknown key "zone"`},
		{"bad name", "  lab:", "  Lab:", `groups.Lab: invalid group name "Lab"`},
		{"missing blocklist", "  lab:\n", "  lab:\n    blocklist_file: /nonexistent/block.txt\n",
			"groups.lab.blocklist_file: cannot read /nonexistent/block.txt"},
	} {
		doc := strings.Replace(groupsConfig, tc.from, tc.to, 1)
		if doc == groupsConfig {
			t.Fatalf("%s: replacement did not apply", tc.name)
		}
		_, err := Parse("groups.yaml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", tc.name, err, tc.want)
		}
	}
	// default_group without groups.
	_, err := Parse("g.yaml", []byte(goodConfig+"groups: {}\n"))
	if err != nil {
		t.Errorf("empty groups section: %v", err)
	}
	doc := strings.Replace(goodConfig, "  routes: [10.30.0.0/16]", "  routes: [10.30.0.0/16]\n  default_group: employees", 1)
	if _, err := Parse("g.yaml", []byte(doc)); err == nil || !strings.Contains(err.Error(), "no groups are configured") {
		t.Errorf("default_group without groups: %v", err)
	}
	// A group blocklist that exists is accepted.
	ok := strings.Replace(groupsConfig, "  lab:\n", "  lab:\n    blocklist_file: "+block+"\n", 1)
	if _, err := Parse("groups.yaml", []byte(ok)); err != nil {
		t.Errorf("group with blocklist: %v", err)
	}
}

// Before the device sync, a new peer already has its group and a removed
// one keeps its own: neither is ever "no identity" (the default group).
func TestGroupsBeforeSync(t *testing.T) {
	c, err := Parse("groups.yaml", []byte(groupsConfig))
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{}
	old := peers.Peer{User: "old", Device: "d", Group: "contractors", IPv4: netip.MustParseAddr("10.20.0.7")}
	g.peerIdx.set(map[netip.Addr]*dnsproxy.Peer{old.IPv4: {Name: old.ID(), Group: "contractors", V4: old.IPv4}})
	g.groupPeers = []peers.Peer{old}
	bob := peers.Peer{User: "bob", Device: "d", Group: "contractors", IPv4: netip.MustParseAddr("10.20.0.8")}
	idx := map[netip.Addr]*dnsproxy.Peer{bob.IPv4: {Name: bob.ID(), Group: c.GroupOf(bob), V4: bob.IPv4}}
	if err := g.groupsBeforeSync(c, []peers.Peer{bob}, idx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []peers.Peer{old, bob} {
		who, ok := g.peerIdx.Lookup(p.IPv4)
		if !ok || who.Group != "contractors" {
			t.Errorf("%s during the sync: %+v, %v; want group contractors", p.ID(), who, ok)
		}
	}
	if len(g.groupPeers) != 2 {
		t.Errorf("firewall members during the sync: %d peers, want both", len(g.groupPeers))
	}
	if err := g.applyGroupPeers(c, []peers.Peer{bob}); err != nil {
		t.Fatal(err)
	}
	if rules := g.groupRulesNow(c); len(rules[0].Peers) != 1 || rules[0].Peers[0] != bob.IPv4 {
		t.Errorf("after the sync: %+v", rules)
	}
}
