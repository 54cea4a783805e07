package dnsproxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// dotServer is DNS over TLS (RFC 7858) on one address: TLS 1.2 or later,
// many queries per connection, pipelined queries answered as soon as each
// is ready (cache hits in order, misses whenever their upstream answers:
// clients match answers by ID), connections closed after IdleTimeout
// without a query. Its goroutines end at close.
type dotServer struct {
	p       *Proxy
	ln      net.Listener // plain TCP; the handshake runs on each connection's goroutine
	tlsConf *tls.Config
	idle    time.Duration
	max     int

	mu     sync.Mutex // protects conns, closed
	conns  map[*tls.Conn]struct{}
	closed bool

	wg sync.WaitGroup // accept loop and connection goroutines
}

func (p *Proxy) newDoTServer(ln net.Listener, cfg EncryptedConfig) *dotServer {
	s := &dotServer{p: p, ln: ln, tlsConf: p.serverTLSConfig("dot"), idle: cfg.IdleTimeout,
		max: cfg.MaxConns, conns: map[*tls.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve()
	}()
	return s
}

func (s *dotServer) serve() {
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little, bounded.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.p.log.Debug("accept dot connection", "error", err)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		tc := tls.Server(c, s.tlsConf)
		if !s.track(tc) {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(tc)
			s.handle(tc)
		}()
	}
}

// track registers a new connection; false when closing or over the cap.
func (s *dotServer) track(c *tls.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.conns) >= s.max {
		s.p.enc.refusedConns[TransportDoT].Inc()
		return false
	}
	s.conns[c] = struct{}{}
	s.p.enc.conns[TransportDoT].Inc()
	return true
}

func (s *dotServer) untrack(c *tls.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.p.enc.conns[TransportDoT].Dec()
}

// handle serves one connection until the client closes it, it idles, it
// sends something that is not DNS, or the server closes.
func (s *dotServer) handle(c *tls.Conn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(s.p.ctx, tlsHandshakeTimeout)
	err := c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.p.enc.handshakeErrors[TransportDoT].Inc()
		s.p.log.Debug("dot handshake", "client", c.RemoteAddr().String(), "error", err)
		return
	}
	var src netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort()
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())

	conn := &dotConn{s: s, c: c, src: src}
	var lenBuf [2]byte
	buf := make([]byte, 0, 512)
	for {
		c.SetReadDeadline(time.Now().Add(s.idle)) //nolint:errcheck // a failing Read reports it
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			break
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if n < headerLen {
			break // not DNS: RFC 7858 leaves nothing to answer
		}
		// The rest of a message that has started may take a moment longer.
		c.SetReadDeadline(time.Now().Add(tlsHandshakeTimeout)) //nolint:errcheck // a failing Read reports it
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(c, buf); err != nil {
			break
		}
		if !conn.query(buf) {
			break
		}
	}
	conn.pending.Wait()
}

// dotConn is one DoT connection's answering side.
type dotConn struct {
	s       *dotServer
	c       *tls.Conn
	src     netip.AddrPort
	pending sync.WaitGroup // slow-path answers not yet written
	sem     chan struct{}  // bounds pending; nil until the first miss

	wmu    sync.Mutex // serializes writes
	broken bool       // a write failed; protected by wmu
}

// query answers one query: a cache hit (or a refusal) at once, in the
// reading goroutine; a miss on a goroutine of its own, written whenever its
// upstream answers, so one slow name does not hold up the ones behind it.
// It returns false when the connection should end.
func (d *dotConn) query(pkt []byte) bool {
	p := d.s.p
	ls := wireStates.Get().(*loopState)
	ls.shard = int(addrHash(d.src.Addr()))
	ls.out = ls.out[:0]
	resp, slow := p.handleWire(ls, pkt, d.src, TransportDoT)
	if resp != nil {
		out := append(make([]byte, 0, 2+len(resp)), 0, 0)
		out = append(out, resp...)
		wireStates.Put(ls)
		return d.write(out)
	}
	shard := ls.shard
	wireStates.Put(ls)
	if !slow {
		return true // dropped: nothing to answer
	}
	if d.sem == nil {
		d.sem = make(chan struct{}, dotMaxPipeline)
	}
	d.sem <- struct{}{} // backpressure: stop reading while too many are pending
	q := append([]byte(nil), pkt...)
	d.pending.Add(1)
	go func() {
		defer d.pending.Done()
		defer func() { <-d.sem }()
		out := p.slowWire(p.ctx, q, d.src, shard, TransportDoT)
		if out != nil {
			d.write(append(append(make([]byte, 0, 2+len(out)), 0, 0), out...))
		}
	}()
	return true
}

// write sends one answer (out[:2] is filled with its length).
func (d *dotConn) write(out []byte) bool {
	binary.BigEndian.PutUint16(out, uint16(len(out)-2))
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if d.broken {
		return false
	}
	d.c.SetWriteDeadline(time.Now().Add(encryptedWriteTimeout)) //nolint:errcheck // a failing Write reports it
	if _, err := d.c.Write(out); err != nil {
		d.broken = true
		d.c.SetReadDeadline(time.Now()) //nolint:errcheck // wakes the reader so the connection ends
		return false
	}
	return true
}

// close stops accepting, lets every connection finish the queries it has
// read (new reads fail at once) and waits for the goroutines.
func (s *dotServer) close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.SetReadDeadline(time.Now()) //nolint:errcheck // best effort: the wait below is bounded by the write timeout
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
