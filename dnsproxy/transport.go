package dnsproxy

import (
	"context"
	"net/netip"
	"sync"
)

// Transport is how a query reached the proxy. It labels the query log, taps
// and the requests metric; every transport shares one request path.
type Transport uint8

// Transports.
const (
	TransportUDP Transport = iota
	TransportTCP
	TransportDoT // DNS over TLS, RFC 7858
	TransportDoH // DNS over HTTPS, RFC 8484
	nTransport
)

var transportNames = [nTransport]string{"udp", "tcp", "dot", "doh"}

func (t Transport) String() string {
	if t < nTransport {
		return transportNames[t]
	}
	return "unknown"
}

// stream reports whether answers travel in a stream (no truncation: the
// whole message fits, up to 65535 bytes).
func (t Transport) stream() bool { return t != TransportUDP }

// wireStates recycles the per-query buffers of stream transports.
var wireStates = sync.Pool{New: func() any { return newLoopState(0) }}

// answerWire answers one wire-format query from src that arrived over tr:
// the one entry point of the encrypted transports, and the same path UDP
// takes (handleWire's ACL, rate limit and cache hit, then slowWire's
// policy, cache, router, upstream, metrics and query log). The answer is
// appended to dst; nil means the query gets no answer (malformed beyond a
// header, a response, or refused before it could be parsed).
func (p *Proxy) answerWire(ctx context.Context, dst, pkt []byte, src netip.AddrPort, tr Transport) []byte {
	ls := wireStates.Get().(*loopState)
	defer wireStates.Put(ls)
	ls.shard = int(addrHash(src.Addr()))
	ls.out = ls.out[:0]
	resp, slow := p.handleWire(ls, pkt, src, tr)
	if resp != nil {
		return append(dst, resp...)
	}
	if !slow {
		return nil
	}
	out := p.slowWire(ctx, pkt, src, ls.shard, tr)
	if out == nil {
		return nil
	}
	return append(dst, out...)
}
