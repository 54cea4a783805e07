package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/miekg/dns"
)

// Reasons a group's peer is refused a name (EDE text, blocked_total, query log).
const (
	// reasonGroupZone: the name is in an internal zone the peer's group may
	// not see. Answered NXDOMAIN with EDE 18 (Prohibited), never forwarded,
	// never served from the cache.
	reasonGroupZone = "group_zone"
	// reasonGroupBlocklist: the name is on the group's own blocklist.
	reasonGroupBlocklist = "group_blocklist"
)

// PeerGroup is one peer group's DNS view. Peers name their group through
// Identities (Peer.Group); Config.DefaultGroup is the group of peers with
// none and of sources that are no known peer.
type PeerGroup struct {
	Name string
	// AllZones: the group sees every zone (Zones is ignored).
	AllZones bool
	// Zones are the configured zones (Config.Zones names) the group may
	// resolve. Names outside every zone follow the default upstream group
	// and are visible to all, as is a "." zone.
	Zones []string
	// BlocklistFile adds names blocked for this group only, on top of the
	// global policy (the global allowlist applies to it too).
	BlocklistFile string
}

// zoneDefault is the stable index of the default upstream group (no zone).
const zoneDefault = 0

// groupState is the per-group policy of one state. It is immutable.
type groupState struct {
	views map[string]*groupView
	def   *groupView // Config.DefaultGroup
	none  *groupView // a group the config does not know: no internal zone
}

// groupView is what one peer group may see.
type groupView struct {
	name  string
	all   bool
	zones []uint64 // bitset by stable zone index (Proxy.zoneIndex)
	block *policy  // group blocklist, nil when none
	// blockWire is block's names (and the global allowlist) as lower-case
	// wire names, for the allocation-free fast path.
	blockWire map[string]bool // name → blocked (false: allowlisted)
}

// sees reports whether the view may receive answers of the zone with stable
// index z. A nil view (no groups configured) sees everything.
func (v *groupView) sees(z uint32) bool {
	if v == nil || v.all {
		return true
	}
	w := int(z >> 6)
	return w < len(v.zones) && v.zones[w]&(1<<(z&63)) != 0
}

// label names the view in the query log; "" when no groups are configured.
func (v *groupView) label() string {
	if v == nil {
		return ""
	}
	return v.name
}

// blockedWire reports whether the lower-case wire name is on the group's
// blocklist (and not allowlisted). It does not allocate.
func (v *groupView) blockedWire(name []byte) bool {
	if v == nil || v.blockWire == nil {
		return false
	}
	blocked := false
	for off := 0; off < len(name) && name[off] != 0; off += int(name[off]) + 1 {
		b, ok := v.blockWire[string(name[off:])]
		if !ok {
			continue
		}
		if !b {
			return false
		}
		blocked = true
	}
	return blocked
}

// view returns the group view of the peer at src: nil when no groups are
// configured, the default group's for a source that is no known peer.
func (p *Proxy) view(st *state, src netip.Addr) *groupView {
	if st.grp == nil {
		return nil
	}
	return viewOf(st, p.identify(src))
}

// viewOf is view for a source whose peer (nil: none) is known.
func viewOf(st *state, who *Peer) *groupView {
	gs := st.grp
	if gs == nil {
		return nil
	}
	if who == nil || who.Group == "" {
		return gs.def
	}
	if v, ok := gs.views[who.Group]; ok {
		return v
	}
	return gs.none
}

// hitAllowed is the fast path's group check of a cache hit: e's zone is
// visible to the view and the wire name (lower case) is not on the group's
// blocklist. One bit test, plus a map walk only for groups with a blocklist.
func (v *groupView) hitAllowed(e *cacheEntry, name []byte) bool {
	if v == nil {
		return true
	}
	return v.seesAll(e.zidx, e.xz) && !v.blockedWire(name)
}

// seesAll reports whether the view may see zone z and every zone in xz.
func (v *groupView) seesAll(z uint32, xz []uint32) bool {
	if !v.sees(z) {
		return false
	}
	for _, x := range xz {
		if !v.sees(x) {
			return false
		}
	}
	return true
}

// otherZones lists the stable indexes of the zones, other than base, that
// the owner names of rrs are routed to: a CNAME chain that leaves its zone
// carries the other zone's records, which a group that may not see that zone
// must not get. nil when every owner name is in base (nearly always).
func (st *state) otherZones(rrs []dns.RR, base uint32) []uint32 {
	var out []uint32
	for _, rr := range rrs {
		z := st.router.route(rr.Header().Name).zidx
		if z != base && z != zoneDefault && !slices.Contains(out, z) {
			out = append(out, z)
		}
	}
	return out
}

// refuseCrossZone answers req like a name of a hidden zone: the answer
// (for a visible name) followed a CNAME into a zone the view may not see.
func (p *Proxy) refuseCrossZone(st *state, req *dns.Msg, v *groupView, g *group, info *answerInfo) *dns.Msg {
	info.blocked = reasonGroupZone // counted by account
	return p.finish(st, policyAnswer(req, reasonGroupZone), req, []dns.EDNS0{&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeProhibited,
		ExtraText: fmt.Sprintf("sluice policy: the answer for %s leads into a zone not visible to group %s", g.label, v.name)}})
}

// checkGroup is the slow path's group policy for a query of name routed to
// g: the block reason, or "" when v may have the answer.
func (v *groupView) check(name string, g *group) string {
	if v == nil {
		return ""
	}
	if !v.sees(g.zidx) {
		return reasonGroupZone
	}
	if v.block != nil && v.block.check(name) != "" {
		return reasonGroupBlocklist
	}
	return ""
}

// groupEDE is the Extended DNS Error of a group refusal.
func groupEDE(reason string, v *groupView, g *group) []dns.EDNS0 {
	if reason == reasonGroupZone {
		return []dns.EDNS0{&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeProhibited,
			ExtraText: fmt.Sprintf("sluice policy: zone %s is not visible to group %s", g.label, v.name)}}
	}
	return []dns.EDNS0{&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeBlocked,
		ExtraText: "sluice policy: blocklist of group " + v.name}}
}

// zoneIndex returns the stable index of a zone ("" = the default group):
// the same zone keeps its index for the proxy's lifetime, so a cache entry
// can carry it immutably across reloads. Callers hold reloadMu (or are New).
func (p *Proxy) zoneIndex(zone string) uint32 {
	if zone == "" {
		return zoneDefault
	}
	if p.zoneIdx == nil {
		p.zoneIdx = map[string]uint32{}
	}
	if i, ok := p.zoneIdx[zone]; ok {
		return i
	}
	i := uint32(len(p.zoneIdx) + 1)
	p.zoneIdx[zone] = i
	return i
}

// buildGroups builds the group policy of st from cfg (already normalized):
// nil when cfg has no groups.
func (p *Proxy) buildGroups(st *state, cfg Config) (*groupState, error) {
	for _, g := range st.groups {
		g.zidx = p.zoneIndex(g.zone)
	}
	if len(cfg.Groups) == 0 {
		return nil, nil
	}
	var always []uint32 // visible to every group: the default group and "."
	always = append(always, zoneDefault)
	if g, ok := st.router.zones["."]; ok {
		always = append(always, g.zidx)
	}
	mkBits := func(idx []uint32) []uint64 {
		var bits []uint64
		for _, z := range idx {
			for int(z>>6) >= len(bits) {
				bits = append(bits, 0)
			}
			bits[z>>6] |= 1 << (z & 63)
		}
		return bits
	}
	gs := &groupState{views: map[string]*groupView{}}
	gs.none = &groupView{name: "(unknown)", zones: mkBits(always)}
	for _, pg := range cfg.Groups {
		v := &groupView{name: pg.Name, all: pg.AllZones}
		idx := slices.Clone(always)
		for _, z := range pg.Zones {
			name, _ := canonicalZone(z)
			g, ok := st.router.zones[name]
			if !ok {
				return nil, fmt.Errorf("check group %q: zone %q is not configured", pg.Name, z)
			}
			idx = append(idx, g.zidx)
		}
		v.zones = mkBits(idx)
		if pg.BlocklistFile != "" {
			pol, err := newPolicy(PolicyConfig{BlocklistFile: pg.BlocklistFile, Allowlist: cfg.Policy.Allowlist})
			if err != nil {
				return nil, fmt.Errorf("load blocklist of group %q: %w", pg.Name, err)
			}
			v.block = pol
			v.blockWire = map[string]bool{}
			var buf [maxNameWire]byte
			add := func(name string, blocked bool) {
				if n, err := dns.PackDomainName(name, buf[:], 0, nil, false); err == nil {
					if old, ok := v.blockWire[string(buf[:n])]; ok && !old {
						return // allowlisted wins
					}
					v.blockWire[string(buf[:n])] = blocked
				}
			}
			for name := range pol.names {
				add(name, true)
			}
			for name := range pol.allow {
				add(name, false)
			}
		}
		gs.views[pg.Name] = v
	}
	gs.def = gs.views[cfg.DefaultGroup]
	if gs.def == nil {
		return nil, fmt.Errorf("check groups: default group %q is not configured", cfg.DefaultGroup)
	}
	return gs, nil
}

// normalizeGroups checks the groups of c (zones are checked against the
// configured zones when the state is built).
func (c Config) normalizeGroups() error {
	if len(c.Groups) == 0 {
		if c.DefaultGroup != "" {
			return fmt.Errorf("check groups: default group %q but no groups configured", c.DefaultGroup)
		}
		return nil
	}
	var errs []error
	seen := map[string]bool{}
	for _, g := range c.Groups {
		if g.Name == "" {
			errs = append(errs, errors.New("check groups: empty group name"))
		}
		if seen[g.Name] {
			errs = append(errs, fmt.Errorf("check group %q: duplicate", g.Name))
		}
		seen[g.Name] = true
	}
	if !seen[c.DefaultGroup] {
		errs = append(errs, fmt.Errorf("check groups: default group %q is not configured", c.DefaultGroup))
	}
	return errors.Join(errs...)
}
