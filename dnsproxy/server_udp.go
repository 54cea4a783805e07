package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

const (
	// udpReadBuf is the read buffer of one UDP read loop.
	udpReadBuf = 65535
	// udpSocketBuffer is the SO_RCVBUF/SO_SNDBUF asked for (the kernel caps
	// it at net.core.rmem_max/wmem_max); bursts queue instead of dropping.
	udpSocketBuffer = 4 << 20
	// maxBindAttempts bounds retries when an ephemeral UDP port is taken for TCP.
	maxBindAttempts = 8
)

// listenerSet is the UDP sockets (one per core, SO_REUSEPORT) and the TCP
// server of one listen address. Its goroutines exit when close is called.
type listenerSet struct {
	addr  netip.Addr
	udp   []*net.UDPConn
	tcpLn net.Listener
	tcp   *dns.Server
	wg    sync.WaitGroup
	once  sync.Once
	err   error

	files   []*os.File  // the UDP sockets detachUDP took out of Go's poller
	closing atomic.Bool // set before they are woken and closed
}

func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// bind opens the UDP sockets and TCP listener for a on port (0: ephemeral,
// the same port for UDP and TCP) and starts their loops.
func (p *Proxy) bind(ctx context.Context, a netip.Addr, port uint16) (*listenerSet, error) {
	udpNet, tcpNet := "udp4", "tcp4"
	if a.Is6() {
		udpNet, tcpNet = "udp6", "tcp6"
	}
	lc := net.ListenConfig{Control: reusePort}
	n := max(1, workProcs())
	var lastErr error
	for attempt := 0; attempt < maxBindAttempts; attempt++ {
		ls := &listenerSet{addr: a}
		first, err := lc.ListenPacket(ctx, udpNet, netip.AddrPortFrom(a, port).String())
		if err != nil {
			return nil, fmt.Errorf("listen udp %s: %w", netip.AddrPortFrom(a, port), err)
		}
		ls.udp = append(ls.udp, first.(*net.UDPConn))
		bound := first.LocalAddr().(*net.UDPAddr).AddrPort()
		for len(ls.udp) < n && err == nil {
			var c net.PacketConn
			if c, err = lc.ListenPacket(ctx, udpNet, bound.String()); err == nil {
				ls.udp = append(ls.udp, c.(*net.UDPConn))
			}
		}
		if err == nil {
			var tcpLC net.ListenConfig
			ls.tcpLn, err = tcpLC.Listen(ctx, tcpNet, bound.String())
		}
		if err != nil {
			for _, c := range ls.udp {
				c.Close()
			}
			lastErr = fmt.Errorf("listen %s: %w", bound, err)
			if port == 0 && errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, lastErr
		}
		p.serveSet(ls)
		return ls, nil
	}
	return nil, lastErr
}

func (p *Proxy) serveSet(ls *listenerSet) {
	for i, c := range ls.udp {
		if err := c.SetReadBuffer(udpSocketBuffer); err != nil {
			p.log.Debug("set dns udp receive buffer", "error", err)
		}
		if err := c.SetWriteBuffer(udpSocketBuffer); err != nil {
			p.log.Debug("set dns udp send buffer", "error", err)
		}
		var f *os.File
		if p.wait == UDPWaitKernel {
			if f = detachUDP(c); f != nil {
				ls.files = append(ls.files, f)
				holdThreads(1) // before Start returns, not when the goroutine gets to run
			}
		}
		ls.wg.Add(1)
		go func() {
			defer ls.wg.Done()
			if f != nil {
				defer holdThreads(-1)
			}
			p.runUDP(c, f, i, &ls.closing)
		}()
	}
	ls.tcp = p.newTCPServer(ls.tcpLn)
	started := make(chan struct{})
	ls.tcp.NotifyStartedFunc = func() { close(started) }
	ls.wg.Add(1)
	go func() {
		defer ls.wg.Done()
		if err := ls.tcp.ActivateAndServe(); err != nil {
			p.log.Error("dns tcp listener stopped", "addr", ls.tcpLn.Addr().String(), "error", err)
		}
	}()
	<-started
}

// close stops the set's sockets and waits for its goroutines.
func (ls *listenerSet) close() error {
	ls.once.Do(func() {
		var errs []error
		ls.closing.Store(true)
		for _, f := range ls.files {
			unblockUDP(f)
			if err := f.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, c := range ls.udp {
			if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) { // a detached one is closed
				errs = append(errs, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ls.tcp.ShutdownContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down dns tcp listener: %w", err))
		}
		ls.wg.Wait()
		ls.err = errors.Join(errs...)
	})
	return ls.err
}

// loopState is owned by one UDP read loop: its buffers and metric shard,
// and what handleWire learned of the query it last sent to the slow path.
type loopState struct {
	shard int
	key   [keyMax]byte
	q     query
	out   []byte

	miss   bool      // the query is a plain cache miss (startMiss may take it)
	keyLen int       // of key, when miss
	who    *Peer     // the query's peer, when miss
	start  time.Time // the query's arrival, when miss
}

func newLoopState(shard int) *loopState {
	return &loopState{shard: shard, out: make([]byte, 0, udpReadBuf+64)}
}

// udpLoop reads queries from c one at a time until it is closed (the
// portable loop; Linux uses the batched runUDP). Cache hits are answered
// inline without allocating; everything else is handed to a goroutine.
func (p *Proxy) udpLoop(c *net.UDPConn, shard int) {
	ls := newLoopState(shard)
	buf := make([]byte, udpReadBuf)
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		resp, slow := p.handlePacket(ls, buf[:n], src)
		if resp != nil {
			c.WriteToUDPAddrPort(resp, src) //nolint:errcheck // the client may be gone; nothing to do
			continue
		}
		if slow {
			p.dispatchSlow(c, buf[:n], src, shard, replyTo{})
		}
	}
}

// slowJob is one UDP query for the slow path.
type slowJob struct {
	c     *net.UDPConn
	pkt   []byte
	src   netip.AddrPort
	shard int
	to    replyTo     // how to answer src on c without the net package (Linux)
	miss  *missFlight // a miss the listener started: finishMiss, not slowPacket
}

const (
	// maxSlowWorkers bounds the slow-path goroutines that stay alive between
	// misses; beyond them a miss gets a goroutine of its own.
	maxSlowWorkers = 64
	// slowWorkerIdle is how long an idle worker waits before it exits.
	slowWorkerIdle = 30 * time.Second
)

// dispatchSlow hands a copy of pkt to the slow path, which writes its answer
// on c itself. Beyond the cap the packet is dropped. An idle worker takes it
// when there is one: a worker keeps the stack the slow path grew, where a
// goroutine per miss would start small and copy its stack while resolving.
func (p *Proxy) dispatchSlow(c *net.UDPConn, pkt []byte, src netip.AddrPort, shard int, to replyTo) {
	if !p.slowAcquire() {
		p.met.overload.Inc()
		return
	}
	p.hand(slowJob{c: c, pkt: append([]byte(nil), pkt...), src: src, shard: shard, to: to})
}

// hand gives job (counted in p.slow by the caller) to an idle worker, a
// new one, or beyond maxSlowWorkers a goroutine of its own.
func (p *Proxy) hand(job slowJob) {
	select {
	case p.slowJobs <- job:
		return
	default:
	}
	p.wg.Add(1)
	if p.slowWorkers.Add(1) <= maxSlowWorkers {
		go p.slowWorker(job)
		return
	}
	p.slowWorkers.Add(-1)
	go func() {
		defer p.wg.Done()
		p.runSlow(job)
	}()
}

// slowWorker runs job, then further jobs until it has been idle for
// slowWorkerIdle (to twice that) or the proxy closes.
func (p *Proxy) slowWorker(job slowJob) {
	defer p.wg.Done()
	defer p.slowWorkers.Add(-1)
	p.runSlow(job)
	// The timer is re-armed when it fires, not per job (a timer reset per
	// miss is measurable): the worker exits after one to two idle periods.
	idle := time.NewTimer(slowWorkerIdle)
	defer idle.Stop()
	busy := false
	for {
		select {
		case job := <-p.slowJobs:
			p.runSlow(job)
			busy = true
		case <-idle.C:
			if !busy {
				return
			}
			busy = false
			idle.Reset(slowWorkerIdle)
		case <-p.ctx.Done():
			return
		}
	}
}

func (p *Proxy) runSlow(job slowJob) {
	if job.miss != nil {
		p.finishMiss(job.miss)
		return
	}
	defer p.slow.Add(-1)
	if resp := p.slowPacket(p.ctx, job.pkt, job.src, job.shard); resp != nil {
		job.reply(resp)
	}
}

func (p *Proxy) slowAcquire() bool {
	limit := int64(defaultMaxSlow)
	if m := p.inflight.max.Load(); m > 0 {
		limit = m * maxSlowPerInflight
	}
	if p.slow.Add(1) > limit {
		p.slow.Add(-1)
		return false
	}
	return true
}

// handlePacket is the UDP fast path. It returns the answer to write, or
// slow=true when the packet needs the slow path, or neither to drop it.
func (p *Proxy) handlePacket(ls *loopState, pkt []byte, src netip.AddrPort) (resp []byte, slow bool) {
	ls.miss = false
	if p.probing(src) {
		return nil, true // the proxy's own probe: answered and left out of the counters on the slow path
	}
	return p.handleWire(ls, pkt, src, TransportUDP)
}

// handleWire is the fast path of every transport that hands the proxy a
// wire-format query (UDP, DoT, DoH): ACL, rate limit, cache hit. Stream
// transports (tr.stream()) are never truncated.
func (p *Proxy) handleWire(ls *loopState, pkt []byte, src netip.AddrPort, tr Transport) (resp []byte, slow bool) {
	start := p.now()
	now := start.UnixNano()
	st := p.st.Load()
	a := src.Addr().Unmap()
	p.enc.requests[tr].inc(ls.shard)
	q := &ls.q
	kn, ok := parseQuery(pkt, q, &ls.key)
	// One identity lookup serves the rate limit, the group view and the
	// egress check below.
	var who *Peer
	rc, admitted := dns.RcodeRefused, st.allowed(a)
	if admitted {
		who = p.identify(a)
		rc, admitted = p.admitPeer(a, who, now)
	}
	if !admitted {
		if !ok {
			return nil, false
		}
		out := append(ls.out[:0], pkt[:q.questEnd]...)
		binary.BigEndian.PutUint16(out[2:], flagQR|q.flags&(flagRD|flagCD)|uint16(rc))
		binary.BigEndian.PutUint16(out[10:], 0)
		ls.out = out
		p.localCounters.inc(ls.shard, q.qtype, rc)
		if p.tapped(a) { // a peer's address passes the ACL: it was rate-limited
			p.offer(logRecord{time: start, src: src, name: wireName(pkt[headerLen:]), qtype: q.qtype,
				rcode: rc, group: localGroup, blocked: "rate_limit", latency: p.now().Sub(start), transport: tr})
		}
		return out, false
	}
	if !ok {
		return nil, true
	}
	e := p.cache.get(ls.key[:kn], now)
	if e == nil {
		ls.miss, ls.keyLen, ls.who, ls.start = true, kn, who, start
		return nil, true
	}
	if e.gen.Load() != st.gen {
		return nil, true
	}
	view := viewOf(st, who)
	if !view.hitAllowed(e, ls.key[:q.nameLen]) {
		return nil, true // the slow path refuses it (groups.go)
	}
	if p.obs != nil && len(e.addrs) > 0 {
		// Egress learning: the slow path installs what is not there yet
		// before it answers.
		// The TTL the answer will carry, not the one it was stored with: a
		// pair learned when the entry was made covers the entry's lifetime.
		if v4, v6 := addrsOf(a, who); !p.obs.Covered(v4, v6, e.addrs, e.addrTTLAt(now)) {
			return nil, true
		}
	}
	maxSize := maxUDPSize(q.edns, q.udpSize, st.cfg.EDNSBufferSize)
	if tr.stream() {
		maxSize = dns.MaxMsgSize
	}
	out := writeHit(ls.out, e, pkt[headerLen:headerLen+q.nameLen], q, now, st.cfg.EDNSBufferSize, maxSize)
	ls.out = out
	p.met.cacheHits.inc(ls.shard)
	e.counters.inc(ls.shard, q.qtype, e.rcode)
	lat := p.now().Sub(start)
	p.met.duration.observe(ls.shard, lat)
	if p.wantRecord(a) {
		p.record(logRecord{time: start, src: src, name: wireName(pkt[headerLen:]), qtype: q.qtype,
			rcode: e.rcode, group: e.group, cacheHit: true, latency: lat, peerGroup: view.label(), transport: tr})
	}
	return out, false
}

// slowPacket answers one UDP packet that the fast path could not: unpack,
// serve, pack, truncate to the client's buffer. The packet was admitted
// (ACL, rate limit) by handlePacket, or is one of the proxy's own probes.
func (p *Proxy) slowPacket(ctx context.Context, pkt []byte, src netip.AddrPort, shard int) []byte {
	return p.slowWire(ctx, pkt, src, shard, TransportUDP)
}

// slowWire is slowPacket for any wire transport; stream transports are
// never truncated.
func (p *Proxy) slowWire(ctx context.Context, pkt []byte, src netip.AddrPort, shard int, tr Transport) []byte {
	start := p.now()
	st := p.st.Load()
	req := new(dns.Msg)
	if err := req.Unpack(pkt); err != nil {
		if len(pkt) < headerLen || pkt[2]&0x80 != 0 {
			return nil // too short to answer, or a response: never reflect
		}
		out := make([]byte, headerLen)
		copy(out, pkt[:4])
		out[2] = 0x80 | pkt[2]&0x79 // QR, keep opcode and RD
		out[3] = dns.RcodeFormatError
		p.localCounters.inc(shard, 0, dns.RcodeFormatError)
		return out
	}
	if req.Response {
		return nil
	}
	// A query of the plain shape parseQuery reads (nearly all) can be
	// answered from a cache entry with writeHit, fresh from the upstream
	// or not, instead of copying, finishing and packing a message.
	var q query
	var key [keyMax]byte
	_, plain := parseQuery(pkt, &q, &key)
	resp, e, info := p.serveEntry(ctx, st, req, shard, src.Addr().Unmap(), plain)
	info.transport = tr
	_, name := questionOf(req)
	return p.writeAnswer(ctx, st, pkt, &q, name, req, resp, e, info, src, shard, start)
}

// writeAnswer renders a slow-path answer to the question name: the cache
// entry e with writeHit (q is then the parsed query), else resp packed,
// truncated to the client's buffer on UDP. It observes the answer (egress
// learning) and accounts it.
func (p *Proxy) writeAnswer(ctx context.Context, st *state, pkt []byte, q *query, name string, req, resp *dns.Msg, e *cacheEntry, info answerInfo, src netip.AddrPort, shard int, start time.Time) []byte {
	tr := info.transport
	if e != nil {
		maxSize := maxUDPSize(q.edns, q.udpSize, st.cfg.EDNSBufferSize)
		if tr.stream() {
			maxSize = dns.MaxMsgSize
		}
		out := writeHit(make([]byte, 0, len(e.wire)+64), e, pkt[headerLen:headerLen+q.nameLen], q,
			p.now().UnixNano(), st.cfg.EDNSBufferSize, maxSize)
		if binary.BigEndian.Uint16(out[2:])&flagTC == 0 {
			if info.fresh != nil {
				p.observe(ctx, src.Addr(), info.fresh)
			} else {
				p.observeAddrs(ctx, src.Addr(), e.addrs, e.addrTTLAt(p.now().UnixNano()))
			}
		}
		p.accountRcode(shard, start, q.qtype, name, e.rcode, info, src)
		return out
	}
	size := minEDNSBufferSize
	if opt := req.IsEdns0(); opt != nil {
		size = maxUDPSize(true, opt.UDPSize(), st.cfg.EDNSBufferSize)
	}
	out, err := resp.Pack()
	if err == nil && len(out) > size && !tr.stream() {
		// Like the fast path: header, question, OPT, TC; the client retries over TCP.
		resp.Truncated = true
		resp.Answer, resp.Ns = nil, nil
		extra := resp.Extra[:0]
		for _, rr := range resp.Extra {
			if rr.Header().Rrtype == dns.TypeOPT {
				extra = append(extra, rr)
			}
		}
		resp.Extra = extra
		out, err = resp.Pack()
	}
	if err == nil {
		p.observe(ctx, src.Addr(), resp)
	}
	if err != nil {
		p.log.Debug("pack dns answer", "error", err)
		fail := new(dns.Msg)
		fail.SetRcode(req, dns.RcodeServerFailure)
		if out, err = fail.Pack(); err != nil {
			return nil
		}
	}
	p.account(shard, start, req, resp, info, src)
	return out
}
