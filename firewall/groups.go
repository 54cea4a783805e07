package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// ReasonGroupRoute counts packets of a peer in a restricted group to a
// destination outside its group's routes, rejected (TCP reset, ICMP(v6)
// administratively prohibited otherwise). It is counted per peer as well.
const ReasonGroupRoute Reason = "group_route"

// ErrGroupsChanged is returned by SetGroupPeers when the groups differ from
// the applied table's: the caller applies the whole Spec instead.
var ErrGroupsChanged = errors.New("firewall groups differ from the applied table")

// GroupRule is one peer group whose routes are restricted: traffic its peers
// send through the gateway may reach only Routes (within Spec.GroupBound).
// Groups without a restriction have no rule.
type GroupRule struct {
	Name   string
	Peers  []netip.Addr   // the members' tunnel addresses, v4 and v6
	Routes []netip.Prefix // what they may reach; empty: nothing
}

// Set names of the group rules. The per-group names carry the group's index
// in Spec.Groups, not its name: a name may be up to 63 characters.
const setGroupBound = "group_bound"

func groupSetName(i int, kind string, v6 bool) string {
	if v6 {
		return fmt.Sprintf("group%d_%s_v6", i, kind)
	}
	return fmt.Sprintf("group%d_%s_v4", i, kind)
}

// normalizeGroups unmaps and masks the group rules of s.
func (s Spec) normalizeGroups() (Spec, error) {
	if len(s.Groups) == 0 {
		return s, nil
	}
	out := make([]GroupRule, len(s.Groups))
	seen := map[string]bool{}
	for i, g := range s.Groups {
		if g.Name == "" || seen[g.Name] {
			return s, fmt.Errorf("invalid group rule %q: empty or duplicate name", g.Name)
		}
		seen[g.Name] = true
		out[i] = GroupRule{Name: g.Name, Routes: NormalizePrefixes(g.Routes, nil)}
		for _, a := range g.Peers {
			if !a.IsValid() {
				return s, fmt.Errorf("invalid address of a peer in group %q", g.Name)
			}
			out[i].Peers = append(out[i].Peers, a.Unmap().WithZone(""))
		}
	}
	s.Groups = out
	s.GroupBound = NormalizePrefixes(s.GroupBound, nil)
	return s, nil
}

// peerRanges splits addresses into sorted, unique v4 and v6 keys.
func peerRanges(addrs []netip.Addr) (v4, v6 []addrRange) {
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, addrRange{a, a})
		} else {
			v6 = append(v6, addrRange{a, a})
		}
	}
	return uniqueAddrs(v4), uniqueAddrs(v6)
}

// groupRules builds the sets and the forward-chain rules of s.Groups: for
// each restricted group and family, a peer whose source is in the group's
// peer set and whose destination is outside the group's routes (and, in
// full mode, inside GroupBound) is counted and rejected.
func groupRules(rs *ruleset, s Spec,
	addSet func(name string, v6, interval bool, ranges []addrRange) *set,
	counted func(r Reason, fam family, match []stmt, tail ...stmt) []rule) []rule {
	if len(s.Groups) == 0 {
		return nil
	}
	rs.counters = append(rs.counters, ReasonGroupRoute)
	var bound [2]*set
	if len(s.GroupBound) > 0 {
		v4, v6 := splitFamilies(normalizeRanges(s.GroupBound, nil))
		bound[0] = addSet(setGroupBound+"_v4", false, true, v4)
		bound[1] = addSet(setGroupBound+"_v6", true, true, v6)
	}
	var out []rule
	for i, g := range s.Groups {
		p4, p6 := peerRanges(g.Peers)
		r4, r6 := splitFamilies(normalizeRanges(g.Routes, nil))
		for f, fam := range []struct {
			v6            bool
			peers, routes []addrRange
		}{{false, p4, r4}, {true, p6, r6}} {
			ps := addSet(groupSetName(i, "peers", fam.v6), fam.v6, false, fam.peers)
			rt := addSet(groupSetName(i, "routes", fam.v6), fam.v6, true, fam.routes)
			match := []stmt{iifname(s.Interface), addrMatch(ps, false, false), addrMatch(rt, true, true)}
			if b := bound[f]; b != nil {
				match = append(match, addrMatch(b, true, false))
			}
			tcp := append(slices.Clone(match), l4proto(unix.IPPROTO_TCP))
			out = append(out, counted(ReasonGroupRoute, familyOf(ps), tcp, counterRef(ReasonGroupRoute), rejectTCPReset())...)
			out = append(out, counted(ReasonGroupRoute, familyOf(ps), match, counterRef(ReasonGroupRoute), rejectICMPX())...)
		}
	}
	return out
}

// SetGroupPeers replaces the members of the applied table's group rules in
// one batch, keeping rules, routes and counters: what a peer sync needs.
// rules must name the same groups, in the same order, as the applied Spec
// (else ErrGroupsChanged: apply the whole Spec); only their Peers are used.
func (f *Firewall) SetGroupPeers(rules []GroupRule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if f.desired == nil {
		return ErrNotApplied
	}
	if len(rules) != len(f.spec.Groups) {
		return ErrGroupsChanged
	}
	for i, r := range rules {
		if r.Name != f.spec.Groups[i].Name {
			return ErrGroupsChanged
		}
	}
	if len(rules) == 0 {
		return nil
	}
	type change struct {
		s      *set
		ranges []addrRange
	}
	var changes []change
	for i, r := range rules {
		for _, a := range r.Peers {
			if !a.IsValid() {
				return fmt.Errorf("set peers of group %q: invalid address", r.Name)
			}
		}
		addrs := make([]netip.Addr, len(r.Peers))
		for j, a := range r.Peers {
			addrs[j] = a.Unmap().WithZone("")
		}
		v4, v6 := peerRanges(addrs)
		for _, c := range []struct {
			v6     bool
			ranges []addrRange
		}{{false, v4}, {true, v6}} {
			s := f.desired.set(groupSetName(i, "peers", c.v6))
			if s == nil {
				return ErrGroupsChanged
			}
			if !slices.Equal(s.ranges, c.ranges) {
				changes = append(changes, change{s, c.ranges})
			}
		}
	}
	if len(changes) == 0 {
		return nil
	}
	c, err := f.conn(minSocketBuffer)
	if err != nil {
		return err
	}
	t := nfTable(f.desired.table)
	for _, ch := range changes {
		ns := &nftables.Set{Table: t, Name: ch.s.name, KeyType: nftables.TypeIPAddr}
		if ch.s.v6 {
			ns.KeyType = nftables.TypeIP6Addr
		}
		c.FlushSet(ns)
		els := (&set{ranges: ch.ranges}).elements()
		for i := 0; i < len(els); i += elementsPerMessage {
			if err := c.SetAddElements(ns, els[i:min(i+elementsPerMessage, len(els))]); err != nil {
				return fmt.Errorf("add elements to set %q: %w", ch.s.name, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("set group peers in table %q: %w", f.desired.table, err)
	}
	for _, ch := range changes {
		ch.s.ranges = ch.ranges
	}
	for i, r := range rules {
		f.spec.Groups[i].Peers = slices.Clone(r.Peers)
	}
	return nil
}
