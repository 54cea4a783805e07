package firewall

import (
	"bytes"
	"fmt"
	"net/netip"
	"sort"

	"github.com/google/nftables"
)

// PeerCounters reads the per-peer accounting sets from the kernel and sums,
// per Reason, the counters of the elements keyed by the given addresses (a
// device has an IPv4 and an IPv6 tunnel address; pass both). The map holds
// every reason the current table counts per peer (see PeerReasons; DoT/DoQ
// and DoH only when they are rejected, dns_redirected only with redirect),
// zero when the peer sent nothing of that kind.
//
// Like the table-wide counters, dns_redirected counts the first packet of
// each redirected flow (NAT sees nothing else); the others count packets.
// A redirected query is also counted in dns_accepted, since it reaches the
// proxy. Elements expire an hour after the peer's last counted packet, and
// every Apply or re-apply starts the sets empty: these counters say what a
// peer did since then, not since it connected.
func (f *Firewall) PeerCounters(addrs ...netip.Addr) (map[Reason]Counter, error) {
	want := make(map[netip.Addr]bool, len(addrs))
	var has4, has6 bool
	for _, a := range addrs {
		if !a.IsValid() {
			return nil, fmt.Errorf("read peer counters: invalid address %q", a)
		}
		a = a.Unmap().WithZone("")
		want[a] = true
		has4, has6 = has4 || a.Is4(), has6 || a.Is6()
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.desired == nil {
		return nil, ErrNotApplied
	}
	c, err := f.conn(0)
	if err != nil {
		return nil, err
	}
	t := nfTable(f.desired.table)
	out := make(map[Reason]Counter, len(PeerReasons()))
	for _, s := range f.desired.sets {
		if s.peer == "" {
			continue
		}
		sum := out[s.peer] // every counted reason gets a key, zero included
		if (s.v6 && has6) || (!s.v6 && has4) {
			els, err := c.GetSetElements(&nftables.Set{Table: t, Name: s.name})
			if err != nil {
				return nil, fmt.Errorf("read peer counters of set %q: %w", s.name, err)
			}
			for _, e := range els {
				if a, ok := netip.AddrFromSlice(e.Key); ok && want[a] && e.Counter != nil {
					sum.Packets += e.Counter.Packets
					sum.Bytes += e.Counter.Bytes
				}
			}
		}
		out[s.peer] = sum
	}
	return out, nil
}

// peerElements reads the live elements of rs's per-peer sets and formats
// them as nft lists them: sorted by address, "ADDR counter packets N bytes
// M expires D".
func (f *Firewall) peerElements(rs *ruleset) (map[string][]string, error) {
	c, err := f.conn(0)
	if err != nil {
		return nil, err
	}
	t := nfTable(rs.table)
	out := map[string][]string{}
	for _, s := range rs.sets {
		if s.peer == "" {
			continue
		}
		els, err := c.GetSetElements(&nftables.Set{Table: t, Name: s.name})
		if err != nil {
			return nil, fmt.Errorf("read elements of set %q: %w", s.name, err)
		}
		sort.Slice(els, func(i, j int) bool { return bytes.Compare(els[i].Key, els[j].Key) < 0 })
		for _, e := range els {
			a, ok := netip.AddrFromSlice(e.Key)
			if !ok {
				continue
			}
			text := a.String()
			if e.Counter != nil {
				text += fmt.Sprintf(" counter packets %d bytes %d", e.Counter.Packets, e.Counter.Bytes)
			}
			if e.Expires > 0 {
				text += " expires " + nftDuration(e.Expires)
			}
			out[s.name] = append(out[s.name], text)
		}
	}
	return out, nil
}
