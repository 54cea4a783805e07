package dnsproxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// maxUDPAnswer is the read buffer for upstream UDP answers.
	maxUDPAnswer = 65535
	// maxStrayReads bounds how many mismatched answers one try reads past.
	maxStrayReads = 64
	// poolIdleMax and poolIdleTimeout bound idle TCP/TLS upstream connections.
	poolIdleMax     = 8
	poolIdleTimeout = 10 * time.Second
	// ewmaWeight is the share of a new latency sample in the EWMA (1/4).
	ewmaShift = 2
)

// Error kinds in sluice_dns_upstream_errors_total.
const (
	errKindTimeout   = "timeout"
	errKindNetwork   = "network"
	errKindServfail  = "servfail"
	errKindRefused   = "refused"
	errKindMalformed = "malformed"
	errKindTLS       = "tls"
)

var errServfail = errors.New("upstream answered SERVFAIL")
var errRefused = errors.New("upstream answered REFUSED")

// upstreamError classifies a failed try.
type upstreamError struct {
	kind string
	err  error
}

func (e *upstreamError) Error() string { return e.kind + ": " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

func classify(err error) *upstreamError {
	var ue *upstreamError
	if errors.As(err, &ue) {
		return ue
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()):
		return &upstreamError{kind: errKindTimeout, err: err}
	case isTLSError(err):
		return &upstreamError{kind: errKindTLS, err: err}
	}
	return &upstreamError{kind: errKindNetwork, err: err}
}

func isTLSError(err error) bool {
	var ce *tls.CertificateVerificationError
	var re tls.RecordHeaderError
	var ae tls.AlertError
	var he x509.HostnameError
	var ue x509.UnknownAuthorityError
	return errors.As(err, &ce) || errors.As(err, &re) || errors.As(err, &ae) || errors.As(err, &he) ||
		errors.As(err, &ue)
}

// idSource hands out DNS message IDs from crypto/rand, refilling a buffer
// instead of making a syscall per query.
type idSource struct {
	mu  sync.Mutex // protects buf, pos
	buf [512]byte
	pos int
}

func (s *idSource) next() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pos == 0 || s.pos+2 > len(s.buf) {
		if _, err := rand.Read(s.buf[:]); err != nil {
			// crypto/rand does not fail on Linux; degrade to the clock rather than panic.
			binary.BigEndian.PutUint64(s.buf[:], uint64(time.Now().UnixNano()))
		}
		s.pos = 0
	}
	id := binary.BigEndian.Uint16(s.buf[s.pos:])
	s.pos += 2
	if s.pos+2 > len(s.buf) {
		s.pos = 0
	}
	return id
}

// upstream is one resolver of a group with its health state. It survives
// Reload when the group and address are unchanged.
type upstream struct {
	spec  Upstream
	label string
	group string
	log   *slog.Logger

	healthy atomic.Bool
	fails   atomic.Int32
	ewmaNs  atomic.Int64

	latency      prometheus.Observer
	healthyGauge prometheus.Gauge
	errors       *prometheus.CounterVec

	tlsConf  *tls.Config   // tls only
	spares   *spareSockets // udp only
	carriers               // udp only: the miss path's sockets (carrier_linux.go)

	poolMu sync.Mutex // protects idle, closed
	idle   []idleConn
	closed bool
}

type idleConn struct {
	c     net.Conn
	since time.Time
}

func newUpstream(spec Upstream, group string, m *metrics, tlsConf *tls.Config, log *slog.Logger) *upstream {
	u := &upstream{
		spec:         spec,
		label:        spec.String(),
		group:        group,
		log:          log,
		latency:      m.upstreamLatency.WithLabelValues(group, spec.String()),
		healthyGauge: m.upstreamHealthy.WithLabelValues(group, spec.String()),
		errors:       m.upstreamErrors,
	}
	if spec.Proto == "tls" {
		c := tlsConf.Clone()
		c.ServerName = spec.ServerName
		u.tlsConf = c
	}
	if spec.Proto == "udp" {
		u.spares = newSpareSockets(spec.Addr)
	}
	u.healthy.Store(true)
	u.healthyGauge.Set(1)
	return u
}

// close drops idle connections; later exchanges dial fresh ones and do not pool.
func (u *upstream) close() {
	u.closeCarriers()
	if u.spares != nil {
		u.spares.close()
	}
	u.poolMu.Lock()
	defer u.poolMu.Unlock()
	u.closed = true
	for _, ic := range u.idle {
		ic.c.Close()
	}
	u.idle = nil
}

// success records an answered try.
func (u *upstream) success(d time.Duration) {
	u.latency.Observe(d.Seconds())
	u.observeLatency(d)
	u.fails.Store(0)
	if !u.healthy.Swap(true) {
		u.healthyGauge.Set(1)
		u.log.Info("dns upstream re-admitted", "group", u.group, "upstream", u.label)
	}
}

// failure records a failed try; after threshold consecutive failures the
// upstream is ejected until an active check (or a later try) succeeds.
func (u *upstream) failure(kind string, d time.Duration, threshold int) {
	u.errors.WithLabelValues(u.group, u.label, kind).Inc()
	if kind == errKindTimeout {
		u.observeLatency(d)
	}
	if n := u.fails.Add(1); int(n) >= threshold && u.healthy.Swap(false) {
		u.healthyGauge.Set(0)
		u.log.Warn("dns upstream ejected", "group", u.group, "upstream", u.label, "failures", n, "last_error", kind)
	}
}

func (u *upstream) observeLatency(d time.Duration) {
	for range 8 {
		old := u.ewmaNs.Load()
		nv := int64(d)
		if old != 0 {
			nv = old + (int64(d)-old)>>ewmaShift
		}
		if u.ewmaNs.CompareAndSwap(old, nv) {
			return
		}
	}
}

// upQuery is one question for the upstreams, packed once (see
// appendUpQuery); each try writes its own ID into the wire.
type upQuery struct {
	wire   []byte
	name   string // the question name, for answerMatches
	qtype  uint16
	qclass uint16
	cd     bool
}

// id is the ID of the current try.
func (uq *upQuery) id() uint16 { return binary.BigEndian.Uint16(uq.wire) }

func (uq *upQuery) setID(id uint16) { binary.BigEndian.PutUint16(uq.wire, id) }

// appendUpQuery packs an upstream query into b: ID 0 (setID sets it), RD,
// CD as the client asked, the question (qname in wire form, as the client
// wrote it), and our OPT advertising ednsSize, with DO as the client asked.
func appendUpQuery(b, qname []byte, qtype, qclass uint16, cd, do bool, ednsSize int) []byte {
	flags := uint16(flagRD)
	if cd {
		flags |= flagCD
	}
	b = append(b, 0, 0, byte(flags>>8), byte(flags), 0, 1, 0, 0, 0, 0, 0, 1)
	b = append(b, qname...)
	b = binary.BigEndian.AppendUint16(b, qtype)
	b = binary.BigEndian.AppendUint16(b, qclass)
	return appendOPT(b, ednsSize, do)
}

// newUpQuery is the upstream query for a question: name (as the client
// wrote it, presentation form) is qname in wire form; packed into buf.
func newUpQuery(buf, qname []byte, name string, qtype, qclass uint16, cd, do bool, ednsSize int) upQuery {
	return upQuery{wire: appendUpQuery(buf, qname, qtype, qclass, cd, do, ednsSize),
		name: name, qtype: qtype, qclass: qclass, cd: cd}
}

// upQueryOf packs q (one question) as it stands, ID included.
func upQueryOf(q *dns.Msg) (*upQuery, error) {
	if len(q.Question) != 1 {
		return nil, fmt.Errorf("pack query: %d questions", len(q.Question))
	}
	wire, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	qq := q.Question[0]
	return &upQuery{wire: wire, name: qq.Name, qtype: qq.Qtype, qclass: qq.Qclass, cd: q.CheckingDisabled}, nil
}

// exchange sends q (whose ID the caller set) and returns the matching answer
// received before deadline. ctx only cancels (the proxy shutting down): the
// hot path sets socket deadlines instead of creating a timer context per try.
// UDP answers with TC set are retried over TCP on the same address.
func (u *upstream) exchange(ctx context.Context, deadline time.Time, q *dns.Msg) (*dns.Msg, error) {
	uq, err := upQueryOf(q)
	if err != nil {
		return nil, &upstreamError{kind: errKindMalformed, err: err}
	}
	r, _, err := u.exchangeRaw(ctx, deadline, uq)
	return r, err
}

// exchangeRaw is exchange for a packed query; it also returns the answer's
// bytes as received when it came over UDP (nil otherwise), for cacheWire.
func (u *upstream) exchangeRaw(ctx context.Context, deadline time.Time, uq *upQuery) (*dns.Msg, []byte, error) {
	switch u.spec.Proto {
	case "tcp":
		r, err := u.exchangeStream(ctx, deadline, uq, false)
		return r, nil, err
	case "tls":
		r, err := u.exchangeStream(ctx, deadline, uq, true)
		return r, nil, err
	}
	r, raw, err := u.exchangeUDP(ctx, deadline, uq)
	if err == nil && r.Truncated {
		r, err = u.exchangeStream(ctx, deadline, uq, false)
		return r, nil, err
	}
	return r, raw, err
}

var udpBufPool = sync.Pool{New: func() any { b := make([]byte, maxUDPAnswer); return &b }}

// exchangeUDP sends one try on a socket of its own for the try (a random
// source port, see spareSockets) and reads past answers whose ID or
// question do not match until the deadline.
func (u *upstream) exchangeUDP(ctx context.Context, deadline time.Time, uq *upQuery) (r *dns.Msg, raw []byte, err error) {
	sp, err := u.spares.get()
	if err != nil {
		return nil, nil, fmt.Errorf("dial udp %s: %w", u.label, err)
	}
	// Only a socket whose try was answered cleanly carries another query.
	clean := true
	defer func() { u.spares.release(sp, err == nil && clean) }()
	c := sp.c
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(uq.wire); err != nil {
		return nil, nil, fmt.Errorf("write udp %s: %w", u.label, err)
	}
	bp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bp)
	buf := *bp
	var lastErr error
	for range maxStrayReads {
		n, err := c.Read(buf)
		if errors.Is(err, io.EOF) { // an empty datagram (os.File reports it as EOF)
			lastErr = errors.New("empty answer")
			clean = false
			continue
		}
		if err != nil {
			if lastErr != nil && classify(err).kind == errKindTimeout {
				return nil, nil, &upstreamError{kind: errKindMalformed, err: fmt.Errorf("read udp %s: %w (after %v)", u.label, err, lastErr)}
			}
			return nil, nil, fmt.Errorf("read udp %s: %w", u.label, err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			lastErr = fmt.Errorf("unpack answer: %w", err)
			clean = false
			continue
		}
		if !answerMatches(uq, m) {
			lastErr = errors.New("answer does not match query")
			clean = false
			continue
		}
		return m, append([]byte(nil), buf[:n]...), nil
	}
	return nil, nil, &upstreamError{kind: errKindMalformed, err: fmt.Errorf("read udp %s: %w", u.label, lastErr)}
}

// answerMatches reports whether r answers uq: same ID, QR set, same question.
func answerMatches(uq *upQuery, r *dns.Msg) bool {
	if r.Id != uq.id() || !r.Response || len(r.Question) != 1 {
		return false
	}
	a := r.Question[0]
	return a.Qtype == uq.qtype && a.Qclass == uq.qclass && strings.EqualFold(a.Name, uq.name)
}

// exchangeStream sends one query over TCP or TLS, reusing an idle pooled
// connection when there is one (and retrying once on a fresh one if the
// pooled connection turns out to be dead).
func (u *upstream) exchangeStream(ctx context.Context, deadline time.Time, uq *upQuery, useTLS bool) (*dns.Msg, error) {
	for attempt := 0; attempt < 2; attempt++ {
		c, pooled := u.takeIdle()
		if c == nil {
			var err error
			if c, err = u.dial(ctx, deadline, useTLS); err != nil {
				return nil, err
			}
		}
		r, err := u.streamRoundTrip(ctx, deadline, c, uq)
		if err == nil {
			u.putIdle(c)
			return r, nil
		}
		c.Close()
		if !pooled || ctx.Err() != nil || !time.Now().Before(deadline) {
			return nil, err
		}
	}
	return nil, errors.New("unreachable")
}

func (u *upstream) dial(ctx context.Context, deadline time.Time, useTLS bool) (net.Conn, error) {
	addr := u.spec.Addr.String()
	if useTLS {
		d := &tls.Dialer{NetDialer: &net.Dialer{Deadline: deadline}, Config: u.tlsConf}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, &upstreamError{kind: classify(err).kind, err: fmt.Errorf("dial tls %s: %w", u.label, err)}
		}
		return c, nil
	}
	d := net.Dialer{Deadline: deadline}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s: %w", u.label, err)
	}
	return c, nil
}

func (u *upstream) streamRoundTrip(ctx context.Context, deadline time.Time, c net.Conn, uq *upQuery) (*dns.Msg, error) {
	wire := uq.wire
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	out := make([]byte, 2+len(wire))
	binary.BigEndian.PutUint16(out, uint16(len(wire)))
	copy(out[2:], wire)
	if _, err := c.Write(out); err != nil {
		return nil, fmt.Errorf("write %s: %w", u.label, err)
	}
	var lenBuf [2]byte
	for range maxStrayReads {
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return nil, fmt.Errorf("read %s: %w", u.label, err)
		}
		buf := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, fmt.Errorf("read %s: %w", u.label, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf); err != nil {
			return nil, &upstreamError{kind: errKindMalformed, err: fmt.Errorf("unpack answer from %s: %w", u.label, err)}
		}
		if answerMatches(uq, r) {
			return r, nil
		}
	}
	return nil, &upstreamError{kind: errKindMalformed, err: fmt.Errorf("read %s: no matching answer", u.label)}
}

func (u *upstream) takeIdle() (net.Conn, bool) {
	u.poolMu.Lock()
	defer u.poolMu.Unlock()
	for len(u.idle) > 0 {
		ic := u.idle[len(u.idle)-1]
		u.idle = u.idle[:len(u.idle)-1]
		if time.Since(ic.since) < poolIdleTimeout {
			return ic.c, true
		}
		ic.c.Close()
	}
	return nil, false
}

func (u *upstream) putIdle(c net.Conn) {
	c.SetDeadline(time.Time{})
	u.poolMu.Lock()
	defer u.poolMu.Unlock()
	if u.closed || len(u.idle) >= poolIdleMax {
		c.Close()
		return
	}
	u.idle = append(u.idle, idleConn{c: c, since: time.Now()})
}

// group is the set of upstreams that alone answer one zone.
type group struct {
	zone     string // canonical zone name, "" for the default group
	label    string
	zidx     uint32 // stable zone index (groups.go)
	ups      []*upstream
	counters *groupCounters
}

// order appends the upstreams to dst healthy first, each part by latency
// EWMA.
func (g *group) order(dst []*upstream) []*upstream {
	out := append(dst[:0], g.ups...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && tryBefore(out[j], out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// tryBefore reports whether a is tried before b: healthy first, then the
// lower latency EWMA.
func tryBefore(a, b *upstream) bool {
	ha, hb := a.healthy.Load(), b.healthy.Load()
	if ha != hb {
		return ha
	}
	return a.ewmaNs.Load() < b.ewmaNs.Load()
}

// rcodeError is the failure an answer's rcode makes of a try: SERVFAIL
// and REFUSED (a live server that will not answer), else nil.
func rcodeError(rcode int) error {
	switch rcode {
	case dns.RcodeServerFailure:
		return &upstreamError{kind: errKindServfail, err: errServfail}
	case dns.RcodeRefused:
		return &upstreamError{kind: errKindRefused, err: errRefused}
	}
	return nil
}

// groupResult is the outcome of asking a group.
type groupResult struct {
	msg      *dns.Msg
	raw      []byte      // msg as received over UDP; nil over TCP/TLS
	entry    *cacheEntry // msg as cached (resolve), when it was cacheable
	upstream string
	ede      uint16 // set when msg is nil
	text     string
	// tried and allNetwork describe a failed result (failedResult).
	tried      int
	allNetwork bool
}

// priorTry is a failed try the caller made before calling exchange.
type priorTry struct {
	u       *upstream
	network bool // it failed for the network (tryFailed)
}

// exchange asks the group's upstreams in health order (but the one of
// prior, which the caller asked already), each for at most perTry, until one answers,
// deadline (the whole query's) passes or ctx is cancelled. It never asks
// any other group.
func (g *group) exchange(ctx context.Context, deadline time.Time, uq *upQuery, ids *idSource, perTry time.Duration, threshold int, prior *priorTry) groupResult {
	if len(g.ups) == 0 {
		return groupResult{ede: dns.ExtendedErrorCodeNoReachableAuthority,
			text: fmt.Sprintf("group %q has no upstreams", g.label)}
	}
	allNetwork := true
	tried := 0
	if prior != nil {
		tried, allNetwork = 1, prior.network
	}
	var buf [8]*upstream // most groups have a few upstreams: no allocation
	for _, u := range g.order(buf[:0]) {
		if prior != nil && u == prior.u {
			continue
		}
		start := time.Now()
		if ctx.Err() != nil || !start.Before(deadline) {
			break
		}
		tried++
		uq.setID(ids.next())
		tryDeadline := start.Add(perTry)
		if deadline.Before(tryDeadline) {
			tryDeadline = deadline
		}
		r, raw, err := u.exchangeRaw(ctx, tryDeadline, uq)
		d := time.Since(start)
		if err == nil {
			err = rcodeError(r.Rcode)
		}
		if err == nil {
			u.success(d)
			return groupResult{msg: r, raw: raw, upstream: u.label}
		}
		if !u.tryFailed(err, d, threshold) {
			allNetwork = false
		}
	}
	return failedResult(g, tried, allNetwork)
}

// tryFailed records a failed try that took d and reports whether it failed
// for the network (or TLS).
func (u *upstream) tryFailed(err error, d time.Duration, threshold int) (network bool) {
	ue := classify(err)
	// A live server answering SERVFAIL/REFUSED is not ejected for it.
	if ue.kind == errKindServfail || ue.kind == errKindRefused {
		u.errors.WithLabelValues(u.group, u.label, ue.kind).Inc()
	} else {
		u.failure(ue.kind, d, threshold)
	}
	u.log.Debug("dns upstream try failed", "group", u.group, "upstream", u.label, "error", err)
	return ue.kind == errKindNetwork || ue.kind == errKindTLS
}

// failedResult is the result of a group none of whose tried upstreams
// answered; allNetwork says every failure was a network (or TLS) error.
func failedResult(g *group, tried int, allNetwork bool) groupResult {
	code := dns.ExtendedErrorCodeNoReachableAuthority
	if allNetwork && tried > 0 {
		code = dns.ExtendedErrorCodeNetworkError
	}
	return groupResult{ede: code, text: fmt.Sprintf("no upstream of group %q answered (%d tried)", g.label, tried),
		tried: tried, allNetwork: allNetwork}
}

// loadTLSConfig builds the client TLS configuration for DoT upstreams; it is
// only called when a tls upstream is configured.
func loadTLSConfig(caFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		// Load the system roots now rather than lazily inside the first
		// handshake, where it would eat into a query's deadline.
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("load system certificate pool: %w", err)
		}
		c.RootCAs = pool
		return c, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read tls ca file %q: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("parse tls ca file %q: no certificates", caFile)
	}
	c.RootCAs = pool
	return c, nil
}
