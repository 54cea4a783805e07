package dnsproxy

import (
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

const (
	tcpReadTimeout  = 5 * time.Second
	tcpWriteTimeout = 5 * time.Second
	tcpIdleTimeout  = 10 * time.Second
)

// newTCPServer builds a dns.Server for one TCP listener with its own handler
// (never the global mux). TCP answers are not truncated.
func (p *Proxy) newTCPServer(ln net.Listener) *dns.Server {
	return &dns.Server{
		Listener:     ln,
		Handler:      dns.HandlerFunc(p.serveTCP),
		ReadTimeout:  tcpReadTimeout,
		WriteTimeout: tcpWriteTimeout,
		IdleTimeout:  func() time.Duration { return tcpIdleTimeout },
	}
}

func (p *Proxy) serveTCP(w dns.ResponseWriter, req *dns.Msg) {
	start := p.now()
	st := p.st.Load()
	var src netip.AddrPort
	if ta, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort()
	}
	a := src.Addr().Unmap()
	src = netip.AddrPortFrom(a, src.Port())
	shard := int(addrHash(a))
	var resp *dns.Msg
	info := answerInfo{group: localGroup}
	if req.Response {
		return
	}
	p.enc.requests[TransportTCP].inc(shard)
	if rc, ok := p.admit(st, a, start.UnixNano()); !ok {
		resp = new(dns.Msg)
		resp.SetRcode(req, rc)
	} else {
		resp, info = p.serve(p.ctx, st, req, shard, a)
		p.observe(p.ctx, a, resp)
	}
	info.transport = TransportTCP
	p.account(shard, start, req, resp, info, src)
	if err := w.WriteMsg(resp); err != nil {
		p.log.Debug("write dns tcp answer", "client", src.String(), "error", err)
	}
}
