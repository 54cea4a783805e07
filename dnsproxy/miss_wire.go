//go:build linux

package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// The UDP miss path. A cache miss of the plain shape parseQuery reads
// (nearly every miss) is forwarded from the client's bytes: the listener
// itself makes serveMsg's checks on the question, packs the upstream query
// from the client's question and queues it on the carrier of the group's
// first upstream (startMiss, carry); once the whole batch of datagrams is
// read, one sendmmsg per carrier sends the batch's queries (flush). The
// carrier poller matches the answer (answerMatchesWire), reads it on
// the wire (readAnswer), caches the entry it makes, lands the flight,
// accounts the query and renders the client's answer with writeHit from
// the entry (completeMiss); one sendmmsg sends the answers of a read
// (replyBatch), and only then are the upstream's health and the miss's
// resources seen to (doneMiss). Whatever is not that case, the general
// path (slowWire) answers; an answer of another shape, and a try that
// fails, go to a worker (finishMiss), which goes on like group.exchange
// with the other upstreams of the group, in the same flight and within
// the same deadline.
//
// The protections are the general path's: a random source port that
// carries at most spareMaxUses queries within spareMaxAge, a random ID per
// query, and an answer must repeat the ID and the question or it is
// dropped, and its port retired (carrier).

// missFlight is a miss whose upstream query the listener sent; the
// carrier poller, or a worker, finishes it.
type missFlight struct {
	job   slowJob
	st    *state
	g     *group
	view  *groupView
	q     query
	name  string
	key   string // shares name's allocation (keyAndName)
	f     flight // the flight this miss leads; see shared
	uq    upQuery
	start time.Time // the query's arrival
	end   time.Time // the whole query's deadline (Deadline)

	u      *upstream // the first try's upstream
	sent   time.Time
	tryEnd time.Time // the first try's deadline

	// Set before a worker takes m (finishMiss): the first try's answer
	// when it was not of the wire reader's shape, else why it failed.
	raw []byte
	err error

	trim bool // its entry's cache shard went over its share (answerMiss)
	// Queries joined f: they read f.res after the flight landed, so m
	// is left to the collector instead of going back to missPool.
	shared bool
}

// startMiss starts the miss in ls (the query handleWire just parsed, from
// src, a cache miss): its query goes out on a carrier, whose poller
// finishes it (completeMiss). false when the general path must answer it.
// It runs on the listener goroutine.
func (p *Proxy) startMiss(ls *loopState, pkt []byte, src netip.AddrPort, to replyTo, c *net.UDPConn, b *upstreamBatch) bool {
	q := ls.q
	if q.qtype == dns.TypeANY {
		return false
	}
	st := p.st.Load()
	key, name := keyAndName(ls.key[:ls.keyLen], pkt[headerLen:headerLen+q.nameLen])
	if name == "" || st.policy.check(name) != "" {
		return false
	}
	g := st.router.route(name)
	if len(g.ups) == 0 {
		return false
	}
	view := viewOf(st, ls.who)
	if view.check(name, g) != "" || st.servesName(name, q.qclass) {
		return false
	}
	u := g.first()
	if u.spec.Proto != "udp" {
		return false
	}
	if !p.slowAcquire() {
		return false // the general path drops it too (overload)
	}
	if !p.inflight.acquire() {
		p.slow.Add(-1)
		return false // the general path answers SERVFAIL (overload)
	}
	// m is as release left it: zero but its buffers. f is not written
	// after lead: from then on a query may join it.
	m := missPool.Get().(*missFlight)
	if _, lead := p.lead(key, false, &m.f); !lead { // the general path joins it
		missPool.Put(m)
		p.inflight.release()
		p.slow.Add(-1)
		return false
	}
	now := time.Now()
	m.job = slowJob{c: c, pkt: append(m.job.pkt[:0], pkt...), src: src, shard: ls.shard, to: to}
	m.st, m.g, m.view, m.q = st, g, view, q
	m.name, m.key = name, key
	m.start, m.end, m.u = ls.start, now.Add(st.cfg.Deadline), u
	m.uq = newUpQuery(m.uq.wire[:0], m.job.pkt[headerLen:headerLen+q.nameLen], name, q.qtype, q.qclass,
		q.flags&flagCD != 0, q.do, st.cfg.EDNSBufferSize)
	m.sent = now
	m.tryEnd = now.Add(st.cfg.UpstreamTimeout)
	if m.end.Before(m.tryEnd) {
		m.tryEnd = m.end
	}
	if err := p.carry(u, m, b); err != nil {
		m.err = err // a worker goes on with the group's other upstreams
		p.hand(slowJob{miss: m})
	}
	return true
}

// missPool keeps missFlights with their packet and query buffers: a miss
// allocates the cache entry it keeps, not its scaffolding.
var missPool = sync.Pool{New: func() any { return new(missFlight) }}

// release returns m to missPool, keeping only its buffers; unless
// queries joined its flight (shared).
func (m *missFlight) release() {
	if m.shared {
		return
	}
	pkt, wire := m.job.pkt[:0], m.uq.wire[:0]
	*m = missFlight{}
	if cap(pkt) <= maxUDPAnswer && cap(wire) <= maxUDPAnswer {
		m.job.pkt, m.uq.wire = pkt, wire
	}
	missPool.Put(m)
}

// first is the upstream a query tries first (order's first).
func (g *group) first() *upstream {
	best := g.ups[0]
	for _, u := range g.ups[1:] {
		if tryBefore(u, best) {
			best = u
		}
	}
	return best
}

// completeMiss finishes m with its answer raw, on the carrier poller:
// the common case (entryFromWire) is answered into rb, and true says the
// caller ends m (doneMiss) once rb is sent; anything else goes to a
// worker (finishMiss).
func (p *Proxy) completeMiss(m *missFlight, raw []byte, rb *replyBatch) bool {
	if e, addrTTL, ok := p.entryFromWire(m, raw); ok {
		p.answerMiss(m, e, addrTTL, rb)
		return true
	}
	m.raw = raw
	p.hand(slowJob{miss: m})
	return false
}

// doneMiss ends a miss completeMiss answered, its answer sent: the cache
// evicts what the answer's entry displaced, the upstream's health learns
// of the success (the answer came in at got), and what startMiss took is
// released. Kept until after the send: none of it is the client's
// business.
func (p *Proxy) doneMiss(m *missFlight, got time.Time) {
	if m.trim {
		p.cache.trim(m.key)
	}
	m.u.success(got.Sub(m.sent))
	p.endMiss(m)
}

// endMiss releases what startMiss took for m.
func (p *Proxy) endMiss(m *missFlight) {
	p.inflight.release()
	p.slow.Add(-1)
	m.release()
}

// finishMiss finishes m on a worker: an answer of a shape the wire reader
// leaves alone (or one this peer may not see) is unpacked and used like
// group.exchange does; a failed first try goes on with the group's other
// upstreams, in the same flight and within the same deadline.
func (p *Proxy) finishMiss(m *missFlight) {
	defer p.endMiss(m)
	st, g := m.st, m.g
	err := m.err
	if m.raw != nil {
		var res groupResult
		if res, err = p.missMsg(m, m.raw); err == nil {
			m.u.success(time.Since(m.sent))
			p.cacheResult(st, g, &m.uq, m.key, &res)
			p.answerGeneral(m, res)
			return
		}
	}
	threshold := st.cfg.Health.Failures
	var prior *priorTry // errLargeAnswer: the same upstream, with a buffer for any datagram
	if !errors.Is(err, errLargeAnswer) {
		prior = &priorTry{u: m.u, network: m.u.tryFailed(err, time.Since(m.sent), threshold)}
	}
	res := g.exchange(p.ctx, m.end, &m.uq, &p.ids, st.cfg.UpstreamTimeout, threshold, prior)
	p.cacheResult(st, g, &m.uq, m.key, &res)
	p.answerGeneral(m, res)
}

// missMsg is exchangeRaw's and group.exchange's handling of an answer the
// wire reader left alone: unpacked, SERVFAIL and REFUSED are failures of
// the try, TC is asked again over TCP.
func (p *Proxy) missMsg(m *missFlight, raw []byte) (groupResult, error) {
	msg := new(dns.Msg)
	if err := msg.Unpack(raw); err != nil {
		return groupResult{}, &upstreamError{kind: errKindMalformed, err: fmt.Errorf("unpack answer from %s: %w", m.u.label, err)}
	}
	res := groupResult{msg: msg, raw: raw, upstream: m.u.label}
	if msg.Truncated && msg.Rcode != dns.RcodeServerFailure && msg.Rcode != dns.RcodeRefused {
		r, err := m.u.exchangeStream(p.ctx, m.end, &m.uq, false)
		if err != nil {
			return groupResult{}, err
		}
		msg, res = r, groupResult{msg: r, upstream: m.u.label}
	}
	if err := rcodeError(msg.Rcode); err != nil {
		return groupResult{}, err
	}
	return res, nil
}

// entryFromWire makes the cache entry of raw (which it takes over), the
// answer to m, and returns the longest TTL the upstream gave its
// addresses: false when raw is not a cacheable answer of the plain shape
// (readAnswer, cacheWire), or leads into a zone m's peer may not see.
func (p *Proxy) entryFromWire(m *missFlight, raw []byte) (*cacheEntry, time.Duration, bool) {
	facts, ok := readAnswer(raw)
	if !ok {
		return nil, 0, false
	}
	st, g := m.st, m.g
	var xz []uint32
	for _, off := range facts.names {
		name, _, err := dns.UnpackDomainName(raw, int(off))
		if err != nil {
			return nil, 0, false
		}
		if z := st.router.route(name).zidx; z != g.zidx && z != zoneDefault && !slices.Contains(xz, z) {
			xz = append(xz, z)
		}
	}
	if !m.view.seesAll(g.zidx, xz) {
		return nil, 0, false
	}
	ttl := min(time.Duration(facts.ttl)*time.Second, st.cfg.Cache.MaxTTL)
	if ttl < time.Second {
		return nil, 0, false
	}
	addrTTL := time.Duration(facts.addrTTL) * time.Second
	e, ok := rawEntry(m.key, raw, ttl, p.now().UnixNano(), g, facts.rcode, facts.addrs, addrTTL)
	if !ok {
		return nil, 0, false
	}
	e.xz = xz
	e.gen.Store(st.gen)
	return e, addrTTL, true
}

// answerMiss caches the fresh entry e, lands the flight (unpacking e for
// joiners, which read a message), accounts the query and answers m's
// client from e.
// addrTTL is the longest TTL the upstream gave e's addresses. The answer
// is rendered into rb and sent with the rest of the poller's batch (its
// flush): m came from a batched listener (startMiss), which gave it the
// socket to answer on.
func (p *Proxy) answerMiss(m *missFlight, e *cacheEntry, addrTTL time.Duration, rb *replyBatch) {
	st := m.st
	maxSize := maxUDPSize(m.q.edns, m.q.udpSize, st.cfg.EDNSBufferSize)
	out := writeHit(rb.buf(), e, m.job.pkt[headerLen:headerLen+m.q.nameLen], &m.q,
		e.stored, st.cfg.EDNSBufferSize, maxSize)
	if out[2]&byte(flagTC>>8) == 0 {
		// Egress learning before the client can use the addresses, for
		// as long as the upstream gave them (like observe).
		p.observeAddrs(p.ctx, m.job.src.Addr(), e.addrs, addrTTL)
	}
	// In the cache and the flight landed before the client has the
	// answer: its next query hits, and never joins this flight. What the
	// insert displaces, doneMiss evicts after the answer is sent.
	m.trim = p.cache.putThenTrim(e)
	m.f.res = groupResult{entry: e, upstream: m.u.label}
	if p.unlist(m.key, &m.f) > 0 {
		m.shared = true
		// Joiners read a message (serveMsg).
		msg := new(dns.Msg)
		if err := msg.Unpack(e.wire); err == nil {
			m.f.res.msg = msg
		} else {
			m.f.res = groupResult{ede: dns.ExtendedErrorCodeOther, text: "cached answer unreadable: " + err.Error()}
		}
	}
	m.f.wake()
	// Counted before the client has the answer, like every other answer:
	// whoever asks next (metrics, status, a trace) sees this query.
	info := answerInfo{transport: TransportUDP, group: m.g.label, peerGroup: m.view.label(), upstream: m.u.label,
		cacheMiss: true}
	p.accountRcode(m.job.shard, m.start, m.q.qtype, m.name, e.rcode, info, m.job.src)
	rb.add(out, &m.job.to)
}

// answerGeneral answers m's client from a result of the general exchange
// (res, already cached by cacheResult) the way serveMsg does, and lands the
// flight.
func (p *Proxy) answerGeneral(m *missFlight, res groupResult) {
	m.f.res = res
	m.shared = p.unlist(m.key, &m.f) > 0
	m.f.wake()
	info := answerInfo{transport: TransportUDP, group: m.g.label, peerGroup: m.view.label(), upstream: res.upstream,
		cacheMiss: true}
	req := new(dns.Msg)
	if err := req.Unpack(m.job.pkt); err != nil {
		return // parseQuery read it; miekg/dns cannot: no answer, like the general path
	}
	var e *cacheEntry
	resp := p.answerResolved(m.st, req, m.view, m.g, res, &info, true)
	if resp == nil {
		e, info.entry = info.entry, nil
	}
	if out := p.writeAnswer(p.ctx, m.st, m.job.pkt, &m.q, m.name, req, resp, e, info, m.job.src, m.job.shard, m.start); out != nil {
		m.job.reply(out)
	}
}
