package dnsproxy

import (
	"net/netip"
	"sync"
	"time"
)

const (
	// sparesMax is how many ready sockets the worker keeps made ahead of
	// queries for one UDP upstream.
	sparesMax = 8
	// sparesPoolMax is how many idle sockets one UDP upstream keeps in all:
	// sockets coming back from a burst of concurrent queries stay for the
	// next ones (within spareMaxUses and spareMaxAge) up to this many.
	sparesPoolMax = 64
	// spareMaxAge bounds how long a socket serves queries from its
	// creation: a connected socket keeps the source address chosen when it
	// was made, so old ones are replaced in case the host's addresses
	// changed, and a source port stays open for at most this long.
	spareMaxAge = 10 * time.Second
	// spareMaxUses is how many queries one socket (one random source
	// port) carries before it is closed. What bounds a port an attacker
	// could learn is mostly spareMaxAge: at the rates where this many
	// queries come within it, a port lives well under a second. Under
	// 1 % of misses pay for a new port (socket, first packet through
	// conntrack, a reader), which keeps that cost out of the p99: at 16
	// it was 6 % and added about 45 µs to the p99 (carrier_linux.go).
	spareMaxUses = 128
)

// udpConn is a connected UDP socket to one upstream, used for one try.
type udpConn interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	SetDeadline(t time.Time) error
	Close() error
}

// spare is a connected UDP socket that is not carrying a query.
type spare struct {
	c    udpConn
	born time.Time
	uses int // queries it has carried
}

// spareSockets keeps a few connected UDP sockets to one upstream ready
// before queries need them, and lets a socket carry a few queries one after
// the other before it is closed.
//
// The defence against off-path spoofing is the pair (source port, ID)
// that a forged answer must hit. The port of each socket is picked at
// random by the kernel at connect; the ID of each query comes from
// crypto/rand; an answer must also repeat the question. A socket carries at
// most one query at a time (get takes it out of the pool until release), at
// most spareMaxUses queries and only for spareMaxAge from its creation,
// and only after answered tries: a try that failed (timeout, mismatched
// answers) closes its socket, so a port an attacker is aiming at is never
// reused. An off-path attacker never sees the port, so one query still
// costs them the whole port range times 65,536 IDs; what reuse changes is
// that a port they did learn (e.g. by an ICMP side channel, which takes
// seconds of probing) is good for up to spareMaxUses queries within
// spareMaxAge instead of one, while a ready socket was already open and
// connected for up to spareMaxAge before its one query when each socket
// carried one try.
//
// The UDP miss path (carrier_linux.go) makes its own sockets, out of Go's
// poller (dialCarrier), and keeps the same bounds (spareMaxUses queries,
// spareMaxAge, retired at the first answer that matches no query), but
// lets a socket carry its queries several at a time, each under its own
// ID, so that one recvmmsg serves a burst of answers.
//
// What moves off the query's path is the socket's creation (socket,
// connect, poller registration) and its close, amortized over its uses and
// done by a worker goroutine when the pool runs low. Without the worker
// (before first use, after close) get and release fall back to doing that
// work inline.
type spareSockets struct {
	addr netip.AddrPort

	ready chan spare    // made, unused
	used  chan udpConn  // used once, to be closed by the worker
	wake  chan struct{} // cap 1: the worker has work

	mu    sync.Mutex // protects state; orders release against close
	state spareState
	stop  chan struct{}
	done  chan struct{}
}

// spareState is the worker's life: not started, running, closed.
type spareState int

const (
	sparesIdle spareState = iota
	sparesRunning
	sparesClosed
)

func newSpareSockets(addr netip.AddrPort) *spareSockets {
	return &spareSockets{
		addr:  addr,
		ready: make(chan spare, sparesPoolMax),
		used:  make(chan udpConn, sparesMax*4),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
}

// dial makes a connected socket (see dialUDP).
func (s *spareSockets) dial() (udpConn, error) {
	return dialUDP(s.addr)
}

// get returns a socket for one try, which the caller owns until it hands
// it to release: a ready one when there is one young enough, else a new one.
func (s *spareSockets) get() (spare, error) {
	if !s.start() {
		c, err := s.dial()
		return spare{c: c, born: time.Now()}, err
	}
	for {
		select {
		case sp := <-s.ready:
			if time.Since(sp.born) < spareMaxAge {
				if len(s.ready) < sparesMax/2 {
					s.poke()
				}
				return sp, nil
			}
			s.retire(sp.c)
		default:
			s.poke()
			c, err := s.dial()
			return spare{c: c, born: time.Now()}, err
		}
	}
}

// release takes back a socket from get after its try. answered says the
// try got its matching answer; only then may the socket carry another
// query (see spareSockets), else it is closed.
func (s *spareSockets) release(sp spare, answered bool) {
	sp.uses++
	if answered && sp.uses < spareMaxUses && time.Since(sp.born) < spareMaxAge {
		s.mu.Lock()
		running := s.state == sparesRunning
		if running {
			select {
			case s.ready <- sp:
				s.mu.Unlock()
				return
			default:
			}
		}
		s.mu.Unlock()
	}
	s.retire(sp.c)
}

// retire hands a socket that will carry no more queries to be closed.
func (s *spareSockets) retire(c udpConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == sparesClosed {
		c.Close()
		return
	}
	select {
	case s.used <- c:
		s.poke()
	default:
		c.Close()
	}
}

func (s *spareSockets) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// start runs the worker on first use; false once closed.
func (s *spareSockets) start() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == sparesIdle {
		s.state = sparesRunning
		go s.work()
	}
	return s.state == sparesRunning
}

// work closes used sockets and keeps the ready ones topped up and fresh.
func (s *spareSockets) work() {
	defer close(s.done)
	tick := time.NewTicker(spareMaxAge / 2)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-tick.C:
			s.expire()
		}
		s.closeUsed()
		s.fill()
	}
}

func (s *spareSockets) closeUsed() {
	for {
		select {
		case c := <-s.used:
			c.Close()
		default:
			return
		}
	}
}

func (s *spareSockets) fill() {
	for len(s.ready) < sparesMax {
		c, err := s.dial()
		if err != nil {
			return // the query path dials itself and reports the error
		}
		select {
		case s.ready <- spare{c: c, born: time.Now()}:
		default:
			c.Close()
			return
		}
	}
}

// expire closes ready sockets older than spareMaxAge.
func (s *spareSockets) expire() {
	for range len(s.ready) {
		select {
		case sp := <-s.ready:
			if time.Since(sp.born) >= spareMaxAge {
				sp.c.Close()
				continue
			}
			select {
			case s.ready <- sp:
			default:
				sp.c.Close()
			}
		default:
			return
		}
	}
}

// close stops the worker and closes every socket it held. Sockets of tries
// still in flight are closed by their release.
func (s *spareSockets) close() {
	s.mu.Lock()
	prev := s.state
	s.state = sparesClosed
	s.mu.Unlock()
	switch prev {
	case sparesClosed:
		return
	case sparesRunning:
		close(s.stop)
		<-s.done
	}
	s.closeUsed()
	for {
		select {
		case sp := <-s.ready:
			sp.c.Close()
		default:
			return
		}
	}
}
