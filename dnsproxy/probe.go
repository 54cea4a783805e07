package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// probeTimeout bounds one Probe when ctx has no earlier deadline.
const probeTimeout = 2 * time.Second

// UpstreamCheck is the outcome of one active check of one upstream, run on
// demand by CheckUpstreams.
type UpstreamCheck struct {
	UpstreamStats               // the upstream's health after the check, as Stats reports it
	Query         string        `json:"query"`           // what was asked, e.g. "NS ."
	Rcode         string        `json:"rcode,omitempty"` // the answer's rcode; "" when none arrived
	RTT           time.Duration `json:"rtt_ns"`
	Error         string        `json:"error,omitempty"` // why the check failed; "" when it passed
}

// CheckUpstreams runs one active health check of every upstream now,
// concurrently, and waits for all of them. It sends the query the health
// loop sends and records the outcome in the same health state (a failure
// counts toward ejection, an answer re-admits), so what it returns and what
// Stats reports afterwards agree. Checks are not client queries: they are
// not counted in the query metrics, the query log or taps.
func (p *Proxy) CheckUpstreams(ctx context.Context) []UpstreamCheck {
	st := p.st.Load()
	hc := st.cfg.Health
	type item struct {
		g   *group
		u   *upstream
		res checkResult
	}
	var items []*item
	for _, g := range st.groups {
		for _, u := range g.ups {
			items = append(items, &item{g: g, u: u})
		}
	}
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			it.res = p.checkUpstream(ctx, it.u, hc)
		}()
	}
	wg.Wait()
	out := make([]UpstreamCheck, 0, len(items))
	for _, it := range items {
		c := UpstreamCheck{UpstreamStats: upstreamStats(it.g, it.u), Query: "NS " + hc.Name, RTT: it.res.rtt}
		if it.res.answered {
			c.Rcode = dns.RcodeToString[it.res.rcode]
		}
		if it.res.err != nil {
			c.Error = it.res.err.Error()
		}
		out = append(out, c)
	}
	return out
}

// upstreamStats is u's health as Stats and CheckUpstreams report it.
func upstreamStats(g *group, u *upstream) UpstreamStats {
	return UpstreamStats{
		Group:    g.label,
		Addr:     u.label,
		Healthy:  u.healthy.Load(),
		Latency:  time.Duration(u.ewmaNs.Load()),
		Failures: int(u.fails.Load()),
	}
}

// Probe sends q over UDP to server, one of the proxy's own listeners, as a
// client would, and returns the answer and its round-trip time. The probe's
// source (address and port) is registered with the proxy for the time of
// the exchange, and its queries are not client traffic: they pass no ACL or
// rate limit and are left out of the query metrics, the query log and the
// taps. `sluice doctor` checks the listeners and the policy with it.
func (p *Proxy) Probe(ctx context.Context, server netip.AddrPort, q *dns.Msg) (*dns.Msg, time.Duration, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		return nil, 0, fmt.Errorf("probe %s: %w", server, err)
	}
	defer c.Close()
	local, ok := c.LocalAddr().(*net.UDPAddr)
	if !ok {
		return nil, 0, fmt.Errorf("probe %s: no local udp address", server)
	}
	src := unmapPort(local.AddrPort())
	p.setProbe(src, true)
	defer p.setProbe(src, false)

	deadline := time.Now().Add(probeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetDeadline(deadline); err != nil {
		return nil, 0, fmt.Errorf("probe %s: %w", server, err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) }) //nolint:errcheck // best effort: the deadline ends it anyway
	defer stop()
	co := &dns.Conn{Conn: c, UDPSize: dns.MaxMsgSize}
	start := time.Now()
	if err := co.WriteMsg(q); err != nil {
		return nil, 0, fmt.Errorf("probe %s: %w", server, err)
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			if ctx.Err() != nil {
				err = errors.Join(ctx.Err(), err)
			}
			return nil, 0, fmt.Errorf("probe %s: %w", server, err)
		}
		if r.Id == q.Id && r.Response {
			return r, time.Since(start), nil
		}
	}
}

// setProbe registers (on) or forgets a probe source. Writers copy the map;
// the query path only loads it.
func (p *Proxy) setProbe(src netip.AddrPort, on bool) {
	p.probesMu.Lock()
	defer p.probesMu.Unlock()
	next := map[netip.AddrPort]bool{}
	if m := p.probeSrcs.Load(); m != nil {
		for k := range *m {
			next[k] = true
		}
	}
	if on {
		next[src] = true
	} else {
		delete(next, src)
	}
	if len(next) == 0 {
		p.probeSrcs.Store(nil)
		return
	}
	p.probeSrcs.Store(&next)
}

// probing reports whether src is one of the proxy's own probes. It is on
// the hot path: one atomic load when no probe runs.
func (p *Proxy) probing(src netip.AddrPort) bool {
	m := p.probeSrcs.Load()
	if m == nil {
		return false
	}
	return (*m)[unmapPort(src)]
}

func unmapPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
