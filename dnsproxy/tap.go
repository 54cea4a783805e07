package dnsproxy

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// QueryRecord is one answered query as a tap sees it: the query log's
// fields, for `sluice peer trace`.
type QueryRecord struct {
	Time      time.Time      `json:"time"`
	Client    netip.AddrPort `json:"client"`
	Transport string         `json:"transport"` // udp, tcp, dot, doh
	Name      string         `json:"name"`
	Type      string         `json:"type"`
	Rcode     string         `json:"rcode"`
	Group     string         `json:"group"`
	Upstream  string         `json:"upstream,omitempty"` // "" for cache hits and local answers
	CacheHit  bool           `json:"cache_hit"`
	Blocked   string         `json:"blocked,omitempty"` // policy reason when the name was blocked
	Latency   time.Duration  `json:"latency_ns"`
	// PeerGroup is the asking peer's group, "" when no groups are configured.
	PeerGroup string `json:"peer_group,omitempty"`
}

// tap is one subscriber to the queries of some source addresses.
type tap struct {
	addrs []netip.Addr
	ch    chan QueryRecord
}

// Tap returns every query answered to one of addrs from now on — cache hits,
// misses, blocked and refused ones, over UDP and TCP — until stop is called.
// The channel is never closed: the reader stops reading when it calls stop.
// Records are dropped rather than slow the proxy when the reader lags more
// than buf records behind.
func (p *Proxy) Tap(addrs []netip.Addr, buf int) (records <-chan QueryRecord, stop func()) {
	t := &tap{ch: make(chan QueryRecord, max(buf, 1))}
	for _, a := range addrs {
		t.addrs = append(t.addrs, a.Unmap().WithZone(""))
	}
	p.updateTaps(func(all []*tap) []*tap { return append(all, t) })
	var once sync.Once
	return t.ch, func() {
		once.Do(func() {
			p.updateTaps(func(all []*tap) []*tap {
				return slices.DeleteFunc(all, func(x *tap) bool { return x == t })
			})
		})
	}
}

// updateTaps replaces the tap list (copy on write: queries read it without
// a lock) with change applied to a copy; an empty list is stored as nil.
func (p *Proxy) updateTaps(change func([]*tap) []*tap) {
	p.tapsMu.Lock()
	defer p.tapsMu.Unlock()
	var cur []*tap
	if l := p.tapList.Load(); l != nil {
		cur = *l
	}
	next := change(slices.Clone(cur))
	if len(next) == 0 {
		p.tapList.Store(nil)
		return
	}
	p.tapList.Store(&next)
}

// tapped reports whether any tap wants queries from a. It is on the hot path.
func (p *Proxy) tapped(a netip.Addr) bool {
	list := p.tapList.Load()
	if list == nil {
		return false
	}
	for _, t := range *list {
		if slices.Contains(t.addrs, a) {
			return true
		}
	}
	return false
}

// offer hands r to every tap of its client address.
func (p *Proxy) offer(r logRecord) {
	list := p.tapList.Load()
	if list == nil {
		return
	}
	a := r.src.Addr().Unmap()
	var q *QueryRecord
	for _, t := range *list {
		if slices.Contains(t.addrs, a) {
			if q == nil {
				e := r.export()
				q = &e
			}
			t.send(*q)
		}
	}
}

// wantRecord reports whether a query from a is logged or tapped, so that its
// record is worth building.
func (p *Proxy) wantRecord(a netip.Addr) bool {
	return p.qlog != nil || p.tapped(a)
}

// record hands r to the query log and the taps.
func (p *Proxy) record(r logRecord) {
	if p.qlog != nil {
		p.qlog.add(r)
	}
	p.offer(r)
}

func (t *tap) send(q QueryRecord) {
	select {
	case t.ch <- q:
	default: // the reader lags: drop
	}
}

func (r logRecord) export() QueryRecord {
	qtype, ok := dns.TypeToString[r.qtype]
	if !ok {
		qtype = fmt.Sprintf("TYPE%d", r.qtype)
	}
	rcode, ok := dns.RcodeToString[r.rcode]
	if !ok {
		rcode = fmt.Sprintf("RCODE%d", r.rcode)
	}
	return QueryRecord{Time: r.time, Client: r.src, Transport: r.transport.String(), Name: r.name, Type: qtype, Rcode: rcode, Group: r.group,
		Upstream: r.upstream, CacheHit: r.cacheHit, Blocked: r.blocked, Latency: r.latency, PeerGroup: r.peerGroup}
}
