package gateway

import (
	"net/netip"
	"sync/atomic"

	"github.com/sluice-vpn/sluice/dnsproxy"
)

// peerIndex maps tunnel addresses to peers. It is replaced whole on every
// peer sync, so lookups (one per DNS query) take no lock and never allocate.
type peerIndex struct {
	m atomic.Pointer[map[netip.Addr]*dnsproxy.Peer]
}

// Lookup implements dnsproxy.Identities.
func (x *peerIndex) Lookup(a netip.Addr) (*dnsproxy.Peer, bool) {
	m := x.m.Load()
	if m == nil {
		return nil, false
	}
	p, ok := (*m)[a.Unmap()]
	return p, ok
}

// set publishes a new index; m must not be modified afterwards.
func (x *peerIndex) set(m map[netip.Addr]*dnsproxy.Peer) { x.m.Store(&m) }
