package dnsproxy

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// carrierBatch is how many answers one recvmmsg of a carrier reads.
const carrierBatch = 16

// carriers is an upstream's carrier state (see carrier).
type carriers struct {
	carrierMu      sync.Mutex
	carrier        *carrier              // the one taking queries
	next           *carrier              // made ahead, already in the poller: the one after (prepare)
	carriers       map[*carrier]struct{} // every one the poller watches
	carriersClosed bool
}

// A carrier is a connected UDP socket (random source port, dialCarrier) that
// carries the miss path's queries to one upstream, several at a time,
// each under its own random ID, up to spareMaxUses queries and for at
// most spareMaxAge; then it is retired and a fresh one takes over. The
// proxy's carrier poller (carrierPoller) reads the answers of every
// carrier in batches and matches each to its query by ID and question
// (answerMatchesWire). An answer
// that matches no query in flight, or repeats an ID with another question,
// retires the carrier at once: like a spare whose try saw a forged
// answer, its port carries no further query.
//
// This is the spares' defence (port, ID and question to guess, a port
// good for at most spareMaxUses queries within spareMaxAge) without a
// goroutine, a poller wait and a socket per query: under load, one
// recvmmsg and one wake-up serve a batch of answers.
type carrier struct {
	u    *upstream
	c    *carrierSocket
	born time.Time

	// Guarded by u.carrierMu.
	pending   []*missFlight
	carried   int       // queries sent
	retired   bool      // takes no more queries
	retiredAt time.Time // when retired was set
}

// retire stops cr taking queries; the poller closes it once its queries
// in flight are answered or late, and no sooner than retireLinger from
// now; u.carrierMu is held.
func (cr *carrier) retire() {
	if !cr.retired {
		cr.retired = true
		cr.retiredAt = time.Now()
	}
}

// retireLinger is how long a retired carrier stays open at least. Not
// closed at once: a carrier is retired by the query that moves to the
// next one, and closing it then (system calls) would come before that
// query's answer. Its port carries nothing meanwhile: an answer arriving
// there matches no query.
const retireLinger = 50 * time.Millisecond

// carry registers m on u's current carrier (a fresh one when there is
// none, or it is full, old or retired) under a random ID unique among the
// carrier's queries in flight, and queues a copy of m's query in the
// listener's batch b, whose flush sends it. It runs on a listener
// goroutine; once m is registered, the carrier poller owns it and may
// finish it at any moment. On error m is not registered and still the
// caller's.
func (p *Proxy) carry(u *upstream, m *missFlight, b *upstreamBatch) error {
	u.carrierMu.Lock()
	cr := u.carrier
	if cr == nil || cr.retired || cr.carried >= spareMaxUses || time.Since(cr.born) >= spareMaxAge {
		if cr != nil {
			cr.retire()
			u.carrier = nil
		}
		if u.carriersClosed {
			u.carrierMu.Unlock()
			return errors.New("upstream closed")
		}
		if cr = u.takeNext(); cr == nil {
			var err error
			if cr, err = p.newCarrier(u); err != nil {
				u.carrierMu.Unlock()
				return err
			}
		}
		u.carrier = cr
	}
	id := p.ids.next()
	for collides(cr.pending, id) {
		id = p.ids.next()
	}
	m.uq.setID(id)
	cr.track(m)
	// Copied under the lock: from here on the poller owns m, and may
	// finish and recycle it (the proxy closing, its try deadline) before
	// the batch is sent.
	b.add(cr, m)
	u.carrierMu.Unlock()
	return nil
}

// unsent takes m, whose query under id could not be sent, off cr's
// queries in flight and retires cr: true when m was still there (and is
// the caller's again); false when the poller already took it.
func (cr *carrier) unsent(m *missFlight, id uint16) bool {
	cr.u.carrierMu.Lock()
	defer cr.u.carrierMu.Unlock()
	cr.retire()
	// By pointer and ID: in flight, m is the carrier's and its ID stays;
	// once finished it may be reused for another query meanwhile.
	for _, x := range cr.pending {
		if x == m && m.uq.id() == id {
			return cr.drop(m)
		}
	}
	return false
}

// upstreamBatch is the upstream queries a listener's batch of datagrams
// starts (carry): flush sends each carrier's share with one
// sendmmsg once the whole batch is read. One system call and, with the
// upstream on the same core, one wake-up of it per batch, not per miss.
// The queries are copies: a query's missFlight belongs to the carrier's
// poller from the moment carry registers it.
type upstreamBatch struct {
	n    int
	cr   [udpBatch]*carrier
	m    [udpBatch]*missFlight
	id   [udpBatch]uint16
	wire [udpBatch][]byte
	hdr  [udpBatch]unix.Mmsghdr
	iov  [udpBatch]unix.Iovec
	sent int // of the run being sent (send)
	run  int // its length
	from int // its first index
	err  syscall.Errno
	fn   func(fd uintptr) bool // built once: a closure passed to RawConn escapes
}

// add queues a copy of m's query on cr; u.carrierMu is held.
func (b *upstreamBatch) add(cr *carrier, m *missFlight) {
	i := b.n
	b.n++
	b.cr[i], b.m[i], b.id[i] = cr, m, m.uq.id()
	b.wire[i] = append(b.wire[i][:0], m.uq.wire...)
}

// flush sends the queued queries, one sendmmsg per run of queries on the
// same carrier (nearly always one run: a group's first upstream has one
// carrier at a time). A query the kernel refuses fails its try at once:
// the worker goes on with the group's other upstreams.
func (p *Proxy) flush(b *upstreamBatch) {
	if b.fn == nil {
		b.fn = b.send
	}
	for i := 0; i < b.n; {
		cr := b.cr[i]
		j := i
		for j < b.n && b.cr[j] == cr {
			b.iov[j].Base = &b.wire[j][0]
			b.iov[j].SetLen(len(b.wire[j]))
			b.hdr[j] = unix.Mmsghdr{}
			b.hdr[j].Hdr.Iov = &b.iov[j]
			b.hdr[j].Hdr.SetIovlen(1)
			j++
		}
		b.from, b.run, b.sent = i, j-i, 0
		for b.sent < b.run {
			b.err = 0
			if err := cr.c.rc.Write(b.fn); err != nil { // closed: none of the rest goes
				for k := b.from + b.sent; k < j; k++ {
					p.failUnsent(cr, b.m[k], b.id[k], err)
				}
				break
			}
			if b.err != 0 { // the kernel refused the query at b.sent
				p.failUnsent(cr, b.m[b.from+b.sent], b.id[b.from+b.sent], os.NewSyscallError("sendmmsg", b.err))
				b.sent++
			}
		}
		i = j
	}
	for i := range b.n {
		b.cr[i], b.m[i] = nil, nil
	}
	b.n = 0
}

// failUnsent fails the try of m, queued under id on cr, whose query could
// not be sent (unless the poller already took m).
func (p *Proxy) failUnsent(cr *carrier, m *missFlight, id uint16, err error) {
	if cr.unsent(m, id) {
		m.err = fmt.Errorf("write udp %s: %w", cr.u.label, err)
		p.hand(slowJob{miss: m})
	}
}

// send is flush's sendmmsg of the current run from b.sent (sendBatch);
// b.err is the error at the datagram b.sent.
func (b *upstreamBatch) send(fd uintptr) bool {
	done, e := sendBatch(fd, b.hdr[b.from:b.from+b.run], &b.sent, false)
	b.err = e
	return done
}

// newCarrier makes a carrier of u (a fresh socket, see dialCarrier) and
// hands it to the proxy's carrier poller; u.carrierMu is held.
func (p *Proxy) newCarrier(u *upstream) (*carrier, error) {
	sock, err := dialCarrier(u.spec.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial udp %s: %w", u.label, err)
	}
	cr := &carrier{u: u, c: sock, born: time.Now()}
	if err := p.cpoll.add(cr); err != nil {
		sock.Close()
		return nil, fmt.Errorf("dial udp %s: %w", u.label, err)
	}
	if u.carriers.carriers == nil {
		u.carriers.carriers = map[*carrier]struct{}{}
	}
	u.carriers.carriers[cr] = struct{}{}
	return cr, nil
}

// takeNext returns the carrier prepare made ahead when it may still take
// queries, else nil; u.carrierMu is held.
func (u *upstream) takeNext() *carrier {
	n := u.next
	u.next = nil
	if n != nil && (n.retired || time.Since(n.born) >= spareMaxAge) {
		n.retire() // the poller closes it
		return nil
	}
	return n
}

// prepareAt is how many queries the current carrier has carried when
// prepare makes the next one: soon before it is needed, so that the next
// port is not open long before it carries anything.
const prepareAt = spareMaxUses * 3 / 4

// prepare makes u's next carrier ahead of need (its socket made and
// watched by the poller) when the current one nears its last query. The
// poller calls it after its answers are sent: a carrier's start (socket,
// connect, epoll_ctl) is then no part of the query that needs the new
// carrier, which only swaps it in.
func (p *Proxy) prepare(u *upstream) {
	u.carrierMu.Lock()
	defer u.carrierMu.Unlock()
	if cr := u.carrier; u.next != nil || u.carriersClosed || cr == nil ||
		(cr.carried < prepareAt && time.Since(cr.born) < spareMaxAge*3/4) {
		return
	}
	u.next, _ = p.newCarrier(u) // on error, carry makes one when it needs it (and reports it)
}

// track puts m, its ID set, in cr's queries in flight (the poller fails
// its try once m.tryEnd has passed); u.carrierMu is held.
func (cr *carrier) track(m *missFlight) {
	cr.pending = append(cr.pending, m)
	cr.carried++
}

func collides(ms []*missFlight, id uint16) bool {
	for _, m := range ms {
		if m.uq.id() == id {
			return true
		}
	}
	return false
}

// drop removes m from cr's queries in flight; u.carrierMu is held.
func (cr *carrier) drop(m *missFlight) bool {
	for i, x := range cr.pending {
		if x == m {
			last := len(cr.pending) - 1
			cr.pending[i] = cr.pending[last]
			cr.pending[last] = nil
			cr.pending = cr.pending[:last]
			return true
		}
	}
	return false
}

// carrierRead is the poller's recvmmsg state: buffers for a batch of
// answers of any size UDP carries.
type carrierRead struct {
	hdr   [carrierBatch]unix.Mmsghdr
	iov   [carrierBatch]unix.Iovec
	bufs  [carrierBatch][]byte
	errno syscall.Errno
	rb    replyBatch // the answers to the clients
}

// carrierReadSize is the buffer for one answer on a carrier: above the
// EDNS buffer size the proxy advertises (at most 4096), so a conforming
// upstream's answer fits; a larger one (MSG_TRUNC) is asked again by the
// general path, whose buffer takes any datagram.
const carrierReadSize = 4096 + 512

func newCarrierRead() *carrierRead {
	r := new(carrierRead)
	for i := range carrierBatch {
		r.bufs[i] = make([]byte, carrierReadSize)
		r.iov[i].Base = &r.bufs[i][0]
		r.iov[i].SetLen(carrierReadSize)
		r.hdr[i].Hdr.Iov = &r.iov[i]
		r.hdr[i].Hdr.SetIovlen(1)
	}
	return r
}

// errLargeAnswer is a first try whose answer did not fit a carrier's
// buffer: the general path asks the same upstream again (not a failure).
var errLargeAnswer = errors.New("answer larger than the carrier's buffer")

// unlist takes cr off u's carriers; u.carrierMu is held.
func (u *upstream) unlist(cr *carrier) {
	if u.carrier == cr {
		u.carrier = nil
	}
	if u.next == cr {
		u.next = nil
	}
	delete(u.carriers.carriers, cr)
}

// carried finishes the queries whose answers are the n datagrams of r.
func (p *Proxy) carried(cr *carrier, r *carrierRead, n int) {
	got := time.Now()
	var done [carrierBatch]*missFlight // answered here: ended once the answers are out
	nd := 0
	for i := range n {
		raw := r.bufs[i][:r.hdr[i].Len]
		m := cr.match(raw)
		if m == nil {
			continue
		}
		if r.hdr[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
			m.err = errLargeAnswer
			p.hand(slowJob{miss: m})
			continue
		}
		// A copy the size of the answer: the cache keeps it.
		if p.completeMiss(m, append(make([]byte, 0, len(raw)), raw...), &r.rb) {
			done[nd] = m
			nd++
		}
	}
	r.rb.flush()
	for _, m := range done[:nd] {
		p.doneMiss(m, got)
	}
	if nd > 0 {
		p.prepare(cr.u)
	}
}

// match takes the query raw answers off cr's queries in flight. An answer
// that answers none of them retires cr (see carrier).
func (cr *carrier) match(raw []byte) *missFlight {
	u := cr.u
	u.carrierMu.Lock()
	defer u.carrierMu.Unlock()
	if len(raw) >= 2 {
		id := binary16(raw)
		for _, m := range cr.pending {
			if m.uq.id() == id && answerMatchesWire(&m.uq, raw) {
				cr.drop(m)
				return m
			}
		}
	}
	cr.retire()
	u.log.Debug("dns upstream answer matches no query: port retired", "group", u.group, "upstream", u.label)
	return nil
}

// closeCarriers retires every carrier of u and lets no new one start
// (Close, or u removed by a reload): the poller fails what they have in
// flight and closes them at its next round (see carrierPoller.sweep), and
// at once when the proxy closes.
func (u *upstream) closeCarriers() {
	u.carrierMu.Lock()
	defer u.carrierMu.Unlock()
	u.carriersClosed = true
	u.carrier, u.next = nil, nil
	for cr := range u.carriers.carriers {
		cr.retire()
	}
}
