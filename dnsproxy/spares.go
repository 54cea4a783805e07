package dnsproxy

import (
	"net/netip"
	"sync"
	"time"
)

const (
	// sparesMax is how many ready sockets one UDP upstream keeps.
	sparesMax = 8
	// spareMaxAge bounds how long a ready socket waits for a query: a
	// connected socket keeps the source address chosen when it was made,
	// so old ones are replaced in case the host's addresses changed.
	spareMaxAge = 10 * time.Second
)

// udpConn is a connected UDP socket to one upstream, used for one try.
type udpConn interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	SetDeadline(t time.Time) error
	Close() error
}

// spare is a connected UDP socket that no query has used yet.
type spare struct {
	c    udpConn
	born time.Time
}

// spareSockets keeps a few connected UDP sockets to one upstream ready
// before queries need them. Every socket still carries exactly one try and
// is closed afterwards, so each upstream query leaves from its own random
// source port (picked by the kernel at connect); what moves off the query's
// path is the socket's creation (socket, connect, poller registration) and
// its close, which a worker goroutine does when the proxy would otherwise
// be waiting. Without the worker (before first use, after close) get and
// release fall back to doing that work inline.
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
		ready: make(chan spare, sparesMax),
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

// get returns a socket for one try: a ready one when there is one young
// enough, else a new one.
func (s *spareSockets) get() (udpConn, error) {
	if !s.start() {
		return s.dial()
	}
	defer s.poke()
	for {
		select {
		case sp := <-s.ready:
			if time.Since(sp.born) < spareMaxAge {
				return sp.c, nil
			}
			s.release(sp.c)
		default:
			return s.dial()
		}
	}
}

// release hands a used socket back to be closed.
func (s *spareSockets) release(c udpConn) {
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
	for len(s.ready) < cap(s.ready) {
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
