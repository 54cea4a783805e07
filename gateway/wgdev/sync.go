package wgdev

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// maxKeepalive is the largest persistent keepalive WireGuard accepts (u16 seconds).
const maxKeepalive = 65535 * time.Second

// syncCounts reports what a peer sync changed.
type syncCounts struct {
	added, removed, updated int
}

// desiredPeer is a validated PeerConfig in canonical form.
type desiredPeer struct {
	cfg       PeerConfig
	allowed   []netip.Prefix // masked, unmapped, sorted, deduplicated
	psk       wgtypes.Key    // zero when none
	keepalive time.Duration  // whole seconds
}

// diffPeers computes the one wgtypes.Config that turns the current peer set
// into the desired one: new peers are added, peers that are no longer wanted
// are removed, and peers whose allowed IPs, preshared key, endpoint or
// keepalive differ are updated in place (UpdateOnly) so their sessions
// survive. Unchanged peers do not appear in the result. ReplacePeers is never
// set. An endpoint left nil in the desired state is never changed: on the
// gateway the peer's endpoint is whatever it roamed to.
func diffPeers(current []wgtypes.Peer, desired []PeerConfig) (wgtypes.Config, syncCounts, error) {
	var counts syncCounts
	want, err := canonicalPeers(desired)
	if err != nil {
		return wgtypes.Config{}, counts, err
	}
	have := make(map[wgtypes.Key]*wgtypes.Peer, len(current))
	for i := range current {
		have[current[i].PublicKey] = &current[i]
	}

	var out []wgtypes.PeerConfig
	for i := range want {
		w := &want[i]
		cur, ok := have[w.cfg.PublicKey]
		if !ok {
			out = append(out, addPeer(w))
			counts.added++
			continue
		}
		if pc, changed := updatePeer(cur, w); changed {
			out = append(out, pc)
			counts.updated++
		}
	}

	wanted := make(map[wgtypes.Key]bool, len(want))
	for i := range want {
		wanted[want[i].cfg.PublicKey] = true
	}
	var gone []wgtypes.Key
	for i := range current {
		if !wanted[current[i].PublicKey] {
			gone = append(gone, current[i].PublicKey)
		}
	}
	slices.SortFunc(gone, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	for _, k := range gone {
		out = append(out, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		counts.removed++
	}
	return wgtypes.Config{Peers: out}, counts, nil
}

// canonicalPeers validates desired: keys are set and unique, every allowed IP
// belongs to one peer only, keepalives are whole seconds in range.
func canonicalPeers(desired []PeerConfig) ([]desiredPeer, error) {
	out := make([]desiredPeer, 0, len(desired))
	keys := make(map[wgtypes.Key]bool, len(desired))
	owner := make(map[netip.Prefix]wgtypes.Key, 2*len(desired))
	for _, p := range desired {
		if p.PublicKey == (wgtypes.Key{}) {
			return nil, fmt.Errorf("check peer: public key is required")
		}
		if keys[p.PublicKey] {
			return nil, fmt.Errorf("check peer %q: duplicate public key", p.PublicKey.String())
		}
		keys[p.PublicKey] = true
		if p.PersistentKeepalive < 0 || p.PersistentKeepalive > maxKeepalive {
			return nil, fmt.Errorf("check peer %q: persistent keepalive %s out of range", p.PublicKey.String(), p.PersistentKeepalive)
		}
		d := desiredPeer{cfg: p, keepalive: p.PersistentKeepalive.Truncate(time.Second)}
		if p.PresharedKey != nil {
			d.psk = *p.PresharedKey
		}
		for _, ip := range p.AllowedIPs {
			c, ok := unmapPrefix(ip)
			if !ok {
				return nil, fmt.Errorf("check peer %q: invalid allowed ip %q", p.PublicKey.String(), ip.String())
			}
			c = c.Masked()
			if k, ok := owner[c]; ok {
				if k == p.PublicKey {
					continue
				}
				return nil, fmt.Errorf("check peer %q: allowed ip %s already belongs to peer %q", p.PublicKey.String(), c, k.String())
			}
			owner[c] = p.PublicKey
			d.allowed = append(d.allowed, c)
		}
		slices.SortFunc(d.allowed, comparePrefix)
		out = append(out, d)
	}
	return out, nil
}

func addPeer(w *desiredPeer) wgtypes.PeerConfig {
	pc := wgtypes.PeerConfig{
		PublicKey:         w.cfg.PublicKey,
		Endpoint:          w.cfg.Endpoint,
		ReplaceAllowedIPs: true,
		AllowedIPs:        ipNets(w.allowed),
	}
	if w.cfg.PresharedKey != nil {
		psk := w.psk
		pc.PresharedKey = &psk
	}
	if w.keepalive > 0 {
		ka := w.keepalive
		pc.PersistentKeepaliveInterval = &ka
	}
	return pc
}

// updatePeer returns the UpdateOnly change for cur, carrying only the fields
// that differ, and whether anything differs.
func updatePeer(cur *wgtypes.Peer, w *desiredPeer) (wgtypes.PeerConfig, bool) {
	pc := wgtypes.PeerConfig{PublicKey: w.cfg.PublicKey, UpdateOnly: true}
	changed := false
	if !slices.Equal(canonicalAllowed(cur.AllowedIPs), w.allowed) {
		pc.ReplaceAllowedIPs = true
		pc.AllowedIPs = ipNets(w.allowed)
		changed = true
	}
	if cur.PresharedKey != w.psk {
		psk := w.psk // the zero key clears it
		pc.PresharedKey = &psk
		changed = true
	}
	if w.cfg.Endpoint != nil && !sameEndpoint(cur.Endpoint, w.cfg.Endpoint) {
		pc.Endpoint = w.cfg.Endpoint
		changed = true
	}
	if cur.PersistentKeepaliveInterval != w.keepalive {
		ka := w.keepalive
		pc.PersistentKeepaliveInterval = &ka
		changed = true
	}
	return pc, changed
}

func canonicalAllowed(nets []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(nets))
	for _, n := range nets {
		if p, ok := prefixOf(n); ok {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = ipNet(p)
	}
	return out
}

func sameEndpoint(a, b *net.UDPAddr) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.AddrPort().Addr().Unmap() == b.AddrPort().Addr().Unmap() && a.Port == b.Port
}
