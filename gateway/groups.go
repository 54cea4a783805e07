package gateway

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/peers"
)

// fileGroup is one entry of the `groups:` section as written.
type fileGroup struct {
	Zones         *[]string `yaml:"zones" doc:"the internal zones (of dns.zones) this group may resolve; others are answered NXDOMAIN (Prohibited)" kind:"domain name" default:"every zone"`
	Routes        *[]string `yaml:"routes" doc:"what the group's client configs route and the firewall lets it reach, inside peers.routes (full mode: inside internal_prefixes)" kind:"CIDR" default:"every route"`
	BlocklistFile string    `yaml:"blocklist_file" doc:"names this group may not resolve, on top of the global blocklist" kind:"file"`
}

// Group is one peer group: the internal zones its peers may resolve and the
// routes they may reach, enforced by the proxy and the firewall.
type Group struct {
	Name          string
	AllZones      bool     // no `zones:` key: every zone
	Zones         []string // zone names (as in dns.zones)
	AllRoutes     bool     // no `routes:` key: everything peers.routes allows
	Routes        []netip.Prefix
	BlocklistFile string
}

// GroupsConfig is the `groups:` section and `peers.default_group`.
type GroupsConfig struct {
	Default string  // the group of peers stored without one
	List    []Group // sorted by name; empty: no groups, every peer sees everything
}

// Enabled reports whether groups are configured.
func (gc GroupsConfig) Enabled() bool { return len(gc.List) > 0 }

// Find returns the group named name.
func (gc GroupsConfig) Find(name string) (Group, bool) {
	for _, g := range gc.List {
		if g.Name == name {
			return g, true
		}
	}
	return Group{}, false
}

// GroupOf is the group a peer belongs to: its stored group, else
// peers.default_group; "" when no groups are configured.
func (c *Config) GroupOf(p peers.Peer) string {
	if !c.Groups.Enabled() {
		return ""
	}
	if p.Group != "" {
		return p.Group
	}
	return c.Groups.Default
}

// PeerRoutes are the routes written into p's client config: its group's
// routes when the group restricts them, else peers.routes. The resolver
// addresses are added by the renderer, always.
func (c *Config) PeerRoutes(p peers.Peer) []netip.Prefix {
	if !c.Groups.Enabled() {
		return c.Peers.Routes
	}
	g, ok := c.Groups.Find(c.GroupOf(p))
	switch {
	case !ok:
		return nil // a group the config does not know reaches nothing
	case g.AllRoutes:
		return c.Peers.Routes
	}
	return g.Routes
}

// buildGroups checks the `groups:` section and peers.default_group and
// composes them into c.Groups and c.DNS (zones and routes are parsed by then).
func buildGroups(c *Config, fc *fileConfig, bad func(key, msg, fix string)) {
	def := fc.Peers.DefaultGroup
	if len(fc.Groups) == 0 {
		if def != "" {
			bad("peers.default_group", fmt.Sprintf("group %q but no groups are configured", def), "add a groups: section, or remove the key")
		}
		return
	}
	names := make([]string, 0, len(fc.Groups))
	for n := range fc.Groups {
		names = append(names, n)
	}
	sort.Strings(names)
	zones := map[string]bool{}
	for _, z := range c.DNS.Zones {
		zones[z.Name] = true
	}
	universe := slices.Clone(c.Peers.Routes)
	if c.Mode == ModeFull {
		universe = append(universe, c.InternalPrefixes...)
	}
	for _, n := range names {
		fg := fc.Groups[n]
		key := "groups." + n
		g := Group{Name: n, AllZones: fg.Zones == nil, AllRoutes: fg.Routes == nil, BlocklistFile: fg.BlocklistFile}
		if err := peers.ValidateName("group", n); err != nil {
			bad(key, err.Error(), "group names are like peer names: lower case, digits, . _ -")
		}
		if fg.Zones != nil {
			for i, z := range *fg.Zones {
				name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(z)), ".")
				if !zones[name] {
					bad(fmt.Sprintf("%s.zones[%d]", key, i), fmt.Sprintf("zone %q is not configured in dns.zones", z),
						"list only zones of dns.zones; names outside every zone are public and visible to all groups")
					continue
				}
				g.Zones = append(g.Zones, name)
			}
		}
		if fg.Routes != nil {
			for i, s := range *fg.Routes {
				k := fmt.Sprintf("%s.routes[%d]", key, i)
				p, err := netip.ParsePrefix(s)
				if err != nil {
					bad(k, fmt.Sprintf("%q is not a CIDR", s), "write it like 10.30.4.0/24")
					continue
				}
				if p != p.Masked() {
					bad(k, fmt.Sprintf("%s has host bits set", s), "write the network: "+p.Masked().String())
					continue
				}
				if !coveredBy(universe, p) {
					where := "peers.routes"
					if c.Mode == ModeFull {
						where = "peers.routes or dns.internal_prefixes"
					}
					bad(k, fmt.Sprintf("route %s is outside %s", p, where), "a group may only narrow what every peer is routed; add it to "+where+" first")
					continue
				}
				g.Routes = append(g.Routes, p)
			}
		}
		if fg.BlocklistFile != "" {
			if _, err := os.Stat(fg.BlocklistFile); err != nil {
				bad(key+".blocklist_file", fmt.Sprintf("cannot read %s: %v", fg.BlocklistFile, err), "one name per line, # starts a comment")
			}
		}
		c.Groups.List = append(c.Groups.List, g)
	}
	c.Groups.Default = def
	if def == "" {
		bad("peers.default_group", "groups are configured but peers.default_group is not set", "name the group of peers added without --group, e.g. default_group: "+names[0])
	} else if _, ok := fc.Groups[def]; !ok {
		bad("peers.default_group", fmt.Sprintf("group %q is not in groups", def), "use one of: "+strings.Join(names, ", "))
	}
	for _, g := range c.Groups.List {
		c.DNS.Groups = append(c.DNS.Groups, dnsproxy.PeerGroup{Name: g.Name, AllZones: g.AllZones, Zones: g.Zones, BlocklistFile: g.BlocklistFile})
	}
	c.DNS.DefaultGroup = def
}

// coveredBy reports whether p lies inside one of ps.
func coveredBy(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// unknownGroupRule names the firewall rule of peers whose stored group the
// configuration does not know: they reach nothing (fail closed). Not a valid
// group name, so it cannot collide with one.
const unknownGroupRule = "_unknown"

// groupRules are the firewall's per-group restrictions for the peers in list:
// one rule per group that restricts routes, with its members' addresses.
func (c *Config) groupRules(list []peers.Peer) []firewall.GroupRule {
	if !c.Groups.Enabled() {
		return nil
	}
	var out []firewall.GroupRule
	idx := map[string]int{}
	for _, g := range c.Groups.List {
		if g.AllRoutes {
			continue
		}
		idx[g.Name] = len(out)
		out = append(out, firewall.GroupRule{Name: g.Name, Routes: g.Routes})
	}
	for _, p := range list {
		name := c.GroupOf(p)
		i, ok := idx[name]
		if !ok {
			if _, known := c.Groups.Find(name); known {
				continue // a group without route restriction
			}
			if _, ok := idx[unknownGroupRule]; !ok {
				idx[unknownGroupRule] = len(out)
				out = append(out, firewall.GroupRule{Name: unknownGroupRule})
			}
			i = idx[unknownGroupRule]
		}
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if a.IsValid() {
				out[i].Peers = append(out[i].Peers, a)
			}
		}
	}
	return out
}

// applyGroupPeers brings the firewall's group peer sets in line with list
// (called on every peer sync that changed the store). The table's rules and
// sets stay; only the members change, in one batch.
func (g *Gateway) applyGroupPeers(cfg *Config, list []peers.Peer) error {
	g.groupMu.Lock()
	g.groupPeers = slices.Clone(list)
	g.groupMu.Unlock()
	if g.fw == nil || !cfg.Groups.Enabled() {
		return nil
	}
	rules := cfg.groupRules(list)
	err := g.fw.SetGroupPeers(rules)
	if errors.Is(err, firewall.ErrGroupsChanged) {
		// A group appeared that the applied table lacks (an unknown group's
		// peer): re-apply the whole table.
		return g.fw.Apply(g.firewallSpec(cfg))
	}
	return err
}

// groupRulesNow are the group rules for the peers of the last sync.
func (g *Gateway) groupRulesNow(cfg *Config) []firewall.GroupRule {
	g.groupMu.Lock()
	defer g.groupMu.Unlock()
	return cfg.groupRules(g.groupPeers)
}

// groupBound is what restricted groups' routes are checked within: every
// destination in split mode (nil), the internal prefixes and peers.routes in
// full mode (the internet follows enforce.egress).
func (c *Config) groupBound() []netip.Prefix {
	if !c.FullTunnel() {
		return nil
	}
	var out []netip.Prefix
	for _, p := range append(slices.Clone(c.Peers.Routes), c.InternalPrefixes...) {
		if p.Bits() > 0 {
			out = append(out, p)
		}
	}
	return out
}

// resyncPeers applies the store again even when it did not change: after a
// reload, peers' effective groups (peers.default_group) and the firewall's
// group members follow the new configuration.
func (g *Gateway) resyncPeers() error {
	g.syncMu.Lock()
	g.lastSync = ""
	g.syncMu.Unlock()
	return g.syncPeers()
}

// groupsBeforeSync runs before the device learns the peers of list: a new
// peer's identity (its group) and firewall membership are in place before
// it can send a packet, and a removed peer keeps its own until the device
// has dropped it, so neither falls into the default group in between. The
// sync publishes the exact state after the device (applyGroupPeers).
func (g *Gateway) groupsBeforeSync(cfg *Config, list []peers.Peer, idx map[netip.Addr]*dnsproxy.Peer) error {
	if !cfg.Groups.Enabled() {
		return nil
	}
	merged := make(map[netip.Addr]*dnsproxy.Peer, len(idx))
	for a, p := range idx {
		merged[a] = p
	}
	if old := g.peerIdx.m.Load(); old != nil {
		for a, p := range *old {
			if _, ok := merged[a]; !ok {
				merged[a] = p
			}
		}
	}
	g.peerIdx.set(merged)
	g.groupMu.Lock()
	prev := g.groupPeers
	g.groupMu.Unlock()
	union := slices.Clone(list)
	ids := make(map[string]bool, len(list))
	for _, p := range list {
		ids[p.ID()] = true
	}
	for _, p := range prev {
		if !ids[p.ID()] {
			union = append(union, p)
		}
	}
	return g.applyGroupPeers(cfg, union)
}

// doctorPeerGroup reports the peer's group and, when its routes are
// restricted, how many packets beyond them the firewall refused. Refused
// packets are a warning, not a failure: the device tries to reach what its
// group may not (an edited AllowedIPs, or a stale client config).
func (g *Gateway) doctorPeerGroup(r *Report, p peers.Peer) {
	cfg := g.Config()
	if !cfg.Groups.Enabled() {
		return
	}
	name := "peer " + p.ID() + " group"
	group := cfg.GroupOf(p)
	grp, ok := cfg.Groups.Find(group)
	if !ok {
		r.add(Check{Name: name, Detail: fmt.Sprintf("group %q is not configured: the peer sees no internal zone and reaches nothing", group),
			Action: "move it to a configured group with `sluice peer set-group " + p.ID() + " GROUP`"})
		return
	}
	if grp.AllRoutes {
		r.add(Check{Name: name, OK: true, Detail: group + " (every route)"})
		return
	}
	var addrs []netip.Addr
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	counters, err := g.fw.PeerCounters(addrs...)
	if err != nil {
		r.add(Check{Name: name, Detail: err.Error(), Action: "check the firewall table with `sluice firewall show`"})
		return
	}
	n := counters[firewall.ReasonGroupRoute].Packets
	c := Check{Name: name, OK: true, Detail: fmt.Sprintf("%s, routes %s; %d packets beyond them refused", group, prefixList(grp.Routes), n)}
	if n > 0 {
		c.Action = "the device reaches for more than its group's routes: re-send its config (`sluice peer config " + p.ID() + "`) or move it with `sluice peer set-group`"
	}
	r.add(c)
}
