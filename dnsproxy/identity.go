package dnsproxy

import "net/netip"

// Peer is who sent a request, as the gateway knows it. A *Peer handed out by
// Identities is shared and must not be modified.
type Peer struct {
	Name  string     // "user/device"
	Group string     // the peer's group; "" is the default group
	V4    netip.Addr // the peer's tunnel addresses, zero when it has none
	V6    netip.Addr
}

// Identities tells the proxy which peer a tunnel source address belongs to.
// The gateway implements it from its peer registry; the proxy never imports
// the registry. Lookup is called for every query, the UDP fast path
// included: it must be safe for concurrent use, must not block and should
// not allocate. An address that is no peer's returns nil, false.
type Identities interface {
	Lookup(src netip.Addr) (*Peer, bool)
}

// IdentityMap is an Identities over a fixed map, for tests and tools. The
// map must not change after it is handed to a proxy.
type IdentityMap map[netip.Addr]*Peer

// Lookup implements Identities.
func (m IdentityMap) Lookup(src netip.Addr) (*Peer, bool) {
	p, ok := m[src.Unmap()]
	return p, ok
}

// identify is the one identity lookup of a request: src's peer, or nil when
// src is no known peer or no Identities is set. The fast path looks up once
// and hands the result to the rate limit, the group view and the egress
// check (admitPeer, viewOf, addrsOf).
func (p *Proxy) identify(src netip.Addr) *Peer {
	if p.idents == nil {
		return nil
	}
	if who, ok := p.idents.Lookup(src); ok {
		return who
	}
	return nil
}

// peerName is "user/device" for src, or "" when src is no known peer.
func (p *Proxy) peerName(src netip.Addr) string {
	if p.idents == nil {
		return ""
	}
	if peer, ok := p.idents.Lookup(src.Unmap()); ok {
		return peer.Name
	}
	return ""
}
