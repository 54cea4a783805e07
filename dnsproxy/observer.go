package dnsproxy

import (
	"context"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// observeTimeout bounds how long an answer waits for its observer.
const observeTimeout = 2 * time.Second

// AnswerObserver is told the A and AAAA addresses of every answer the proxy
// sends to a peer, before the answer leaves: the gateway wires it to the
// firewall's learned egress pairs (the proxy never imports the firewall).
// v4 and v6 are the peer's tunnel addresses (from Identities; for a source
// no identity knows, the source address in its family); either may be the
// zero Addr. ttl is the longest TTL among the addresses' records.
// Implementations must be safe for concurrent use and must not retain addrs.
type AnswerObserver interface {
	// Covered reports whether the observer already knows every address for
	// this peer for at least ttl, so that Learn would have nothing to do.
	// It is called on the UDP fast path (cache hits): it must not block and
	// should not allocate. When it returns false the query takes the slow
	// path, which calls Learn.
	Covered(v4, v6 netip.Addr, addrs []netip.Addr, ttl time.Duration) bool
	// Learn is called with the addresses of an answer before it is written
	// and returns when they are in place (or ctx ends). The answer is
	// written whatever it returns; an error is logged and counted.
	Learn(ctx context.Context, v4, v6 netip.Addr, addrs []netip.Addr, ttl time.Duration) error
}

// peerAddrs returns the tunnel addresses of src's peer; a source no
// identity knows stands for itself in its own family.
func (p *Proxy) peerAddrs(src netip.Addr) (v4, v6 netip.Addr) {
	return addrsOf(src, p.identify(src))
}

// addrsOf is peerAddrs for a source whose peer (nil: none) is known.
func addrsOf(src netip.Addr, who *Peer) (v4, v6 netip.Addr) {
	if who != nil {
		return who.V4, who.V6
	}
	if src.Is4() {
		return src, netip.Addr{}
	}
	return netip.Addr{}, src
}

// answerAddrs returns the A/AAAA addresses in rrs (every record of a CNAME
// chain's target included) and the longest of their TTLs.
func answerAddrs(rrs []dns.RR) ([]netip.Addr, time.Duration) {
	var out []netip.Addr
	var ttl uint32
	for _, rr := range rrs {
		var a netip.Addr
		var ok bool
		switch r := rr.(type) {
		case *dns.A:
			a, ok = netip.AddrFromSlice(r.A.To4())
		case *dns.AAAA:
			a, ok = netip.AddrFromSlice(r.AAAA.To16())
		}
		if !ok {
			continue
		}
		out = append(out, a.Unmap())
		ttl = max(ttl, rr.Header().Ttl)
	}
	return out, time.Duration(ttl) * time.Second
}

// observe hands resp's addresses to the observer and waits for it; called
// on the slow and TCP paths right before the answer is written to src.
func (p *Proxy) observe(ctx context.Context, src netip.Addr, resp *dns.Msg) {
	if p.obs == nil || resp == nil || len(resp.Answer) == 0 {
		return
	}
	addrs, ttl := answerAddrs(resp.Answer)
	p.observeAddrs(ctx, src, addrs, ttl)
}

// observeAddrs is observe for an answer's addresses and their TTL.
func (p *Proxy) observeAddrs(ctx context.Context, src netip.Addr, addrs []netip.Addr, ttl time.Duration) {
	if p.obs == nil || len(addrs) == 0 {
		return
	}
	v4, v6 := p.peerAddrs(src.Unmap())
	if p.obs.Covered(v4, v6, addrs, ttl) {
		return // the common case: nothing to install, nothing to wait for
	}
	ctx, cancel := context.WithTimeout(ctx, observeTimeout)
	defer cancel()
	if err := p.obs.Learn(ctx, v4, v6, addrs, ttl); err != nil {
		p.met.observeErrors.Inc()
		p.log.Warn("answer observer", "client", src.String(), "addresses", len(addrs), "error", err)
	}
}
