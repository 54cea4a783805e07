package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// carrierSweep is how often the poller looks for carriers' tries whose
// deadline has passed and for retired carriers to close: a try fails at
// most this much after its deadline (the default upstream timeout is
// 600 ms).
const carrierSweep = 10 * time.Millisecond

// carrierPoller reads the answers of every carrier of a proxy on one
// goroutine that waits for them in epoll_wait, a blocking system call,
// the way a C resolver's receiver thread does: not in Go's poller. An
// answer then wakes that thread straight into its read, where Go's poller
// would wake a thread that finds the goroutine, schedules it and polls
// again before sleeping (two more system calls and a scheduler round per
// answer, most of the distance to dnsdist at one query at a time; see
// bench/README.md). The carriers' sockets are not in Go's poller at all
// (dialCarrier), so their answers wake nothing else.
//
// A thread blocked in a system call keeps its P in Go's scheduler until
// sysmon takes it away; the proxy raises GOMAXPROCS by the threads it
// blocks (holdThreads), so the rest of the process keeps its Ps. With
// UDPWaitPoller the same loop waits in Go's poller instead (epollWaiter).
//
// Deadlines are the poller's too: every carrierSweep it fails the tries
// whose deadline passed, and closes retired carriers with nothing in
// flight. It starts with the first carrier and stops at Close.
type carrierPoller struct {
	mu      sync.Mutex // protects the fields below, and orders add against stop
	ep      int        // the epoll descriptor, -1 before start
	wake    int        // eventfd in ep: stop writes it
	crs     map[int32]*carrier
	started bool
	stopped bool

	wg *sync.WaitGroup // the proxy's carrierWG
	p  *Proxy
}

func (cp *carrierPoller) init(p *Proxy) {
	cp.p, cp.wg, cp.ep, cp.wake = p, &p.carrierWG, -1, -1
}

// add makes cr's socket one the poller waits on, starting the poller
// with the first carrier.
func (cp *carrierPoller) add(cr *carrier) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return errors.New("proxy closed")
	}
	if !cp.started {
		if err := cp.start(); err != nil {
			return err
		}
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: cr.c.fd}
	if err := unix.EpollCtl(cp.ep, unix.EPOLL_CTL_ADD, int(cr.c.fd), &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	cp.crs[cr.c.fd] = cr
	return nil
}

// start makes the epoll set and starts the poller; cp.mu is held.
func (cp *carrierPoller) start() error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return os.NewSyscallError("epoll_ctl", err)
	}
	cp.ep, cp.wake, cp.crs, cp.started = ep, wake, map[int32]*carrier{}, true
	if cp.p.wait == UDPWaitKernel {
		holdThreads(1) // released by the poller's waiter (close) as it ends
	}
	cp.wg.Add(1)
	go cp.run()
	return nil
}

// stop ends the poller: it fails what is still in flight, closes every
// carrier and returns (cp.wg).
func (cp *carrierPoller) stop() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return
	}
	cp.stopped = true
	if cp.started {
		one := uint64(1)
		unix.Write(cp.wake, (*[8]byte)(unsafe.Pointer(&one))[:]) //nolint:errcheck // the counter cannot overflow from one write
	}
}

// run is the poller: wait, read what is ready, sweep on time.
func (cp *carrierPoller) run() {
	defer cp.wg.Done()
	read := &carrierReader{p: cp.p, r: newCarrierRead()}
	read.fn = read.recv
	w, err := cp.newWaiter(read)
	if err != nil {
		cp.p.log.Error("dns carrier poller", "error", err)
	}
	now := time.Now()
	next := now.Add(carrierSweep)
	for {
		if w != nil {
			w.wait(next, now)
		} else {
			time.Sleep(next.Sub(now)) // bounded: the sweep fails what cannot be read
		}
		cp.mu.Lock()
		stopped := cp.stopped
		cp.mu.Unlock()
		if stopped {
			cp.sweep(time.Now(), true)
			if w != nil {
				w.close()
			}
			unix.Close(cp.ep)
			unix.Close(cp.wake)
			return
		}
		if now = time.Now(); !now.Before(next) {
			cp.sweep(now, false)
			next = now.Add(carrierSweep)
		}
	}
}

// epollWaiter waits for the poller's epoll set and reads the carriers it
// says are ready: in the kernel (UDPWaitKernel: a blocking epoll_wait, on
// a thread holdThreads counts) or in Go's poller (UDPWaitPoller: the
// epoll descriptor, readable when any carrier is, watched by Go's like a
// socket, and read inside RawConn.Read as the listeners' sockets are).
type epollWaiter struct {
	cp     *carrierPoller
	read   *carrierReader
	evs    [carrierBatch]unix.EpollEvent
	poller *os.File // UDPWaitPoller: a non-blocking duplicate of the set
	rc     syscall.RawConn
	until  time.Time             // the deadline set on poller
	fn     func(fd uintptr) bool // built once: a closure passed to RawConn escapes
}

func (cp *carrierPoller) newWaiter(read *carrierReader) (*epollWaiter, error) {
	w := &epollWaiter{cp: cp, read: read}
	if cp.p.wait != UDPWaitPoller {
		return w, nil // start held the thread
	}
	dup, err := unix.FcntlInt(uintptr(cp.ep), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, os.NewSyscallError("fcntl", err)
	}
	w.poller = os.NewFile(uintptr(dup), "epoll")
	if w.rc, err = w.poller.SyscallConn(); err != nil {
		w.poller.Close()
		return nil, err
	}
	w.fn = w.poll
	return w, nil
}

// wait reads what becomes ready until next, or until stop wakes it; now
// is the time (the caller's last clock read: one per wake-up).
func (w *epollWaiter) wait(next, now time.Time) {
	if w.poller == nil {
		ms := int((next.Sub(now) + time.Millisecond - 1) / time.Millisecond)
		n, err := unix.EpollWait(w.cp.ep, w.evs[:], max(ms, 0))
		if err != nil {
			if !errors.Is(err, unix.EINTR) {
				time.Sleep(time.Millisecond) // bounded; nothing else fails here on a valid descriptor
			}
			return
		}
		w.ready(n)
		return
	}
	if !next.Equal(w.until) {
		w.until = next
		w.poller.SetReadDeadline(next) //nolint:errcheck // the file is in the poller: deadlines work
	}
	if err := w.rc.Read(w.fn); err == nil {
		time.Sleep(time.Millisecond) // stop, or epoll_wait failed; bounded
	}
}

// poll is wait's RawConn.Read callback: it reads what is ready (an
// epoll_wait that does not block) and asks to wait in Go's poller (false)
// once a round comes back short; true to return, for stop or an error.
// The poller is edge-triggered on the set, and any answer that comes
// after the epoll_wait raises an edge.
func (w *epollWaiter) poll(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&w.evs[0])), uintptr(len(w.evs)), 0, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return true
		}
		if w.ready(int(n)) {
			return true
		}
		if int(n) < len(w.evs) {
			return false
		}
	}
}

// ready reads the carriers of the first n events; true when stop woke
// the set.
func (w *epollWaiter) ready(n int) bool {
	stop := false
	for i := range n {
		if w.evs[i].Fd == int32(w.cp.wake) {
			stop = true
			continue
		}
		w.cp.mu.Lock()
		cr := w.cp.crs[w.evs[i].Fd]
		w.cp.mu.Unlock()
		if cr != nil {
			w.read.carrier(cr)
		}
	}
	return stop
}

func (w *epollWaiter) close() {
	if w.poller != nil {
		w.poller.Close()
		return
	}
	holdThreads(-1)
}

// carrierReader reads one ready carrier (carrier) inside its socket's
// RawConn.Read, which keeps the descriptor from closing under it.
type carrierReader struct {
	p  *Proxy
	r  *carrierRead
	cr *carrier
	fn func(fd uintptr) bool // built once: a closure passed to RawConn escapes
}

// carrier reads cr's answers until a batch comes back short (the socket's
// queue was empty when it was read: epoll, level-triggered, says when more
// come) and finishes their queries; a socket that fails is dropped with
// its queries' tries failed.
func (c *carrierReader) carrier(cr *carrier) {
	c.cr, c.r.errno = cr, 0
	err := cr.c.rc.Read(c.fn)
	c.cr = nil
	if err == nil && c.r.errno != 0 {
		err = os.NewSyscallError("recvmmsg", c.r.errno)
	}
	if err != nil {
		c.p.cpoll.drop(cr, err)
	}
}

func (c *carrierReader) recv(fd uintptr) bool {
	r := c.r
	for {
		for i := range carrierBatch {
			r.hdr[i].Len = 0
			r.hdr[i].Hdr.Flags = 0
		}
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdr[0])), carrierBatch,
			unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
		case unix.EAGAIN:
			return true
		case unix.EINTR:
			continue
		default:
			r.errno = e
			return true
		}
		c.p.carried(c.cr, r, int(n))
		if int(n) < carrierBatch {
			return true
		}
	}
}

// drop takes cr off the poller and the upstream's carriers, fails the
// tries it has in flight with err and closes it.
func (cp *carrierPoller) drop(cr *carrier, err error) {
	u := cr.u
	u.carrierMu.Lock()
	cr.retire()
	left := cr.pending
	cr.pending = nil
	u.unlist(cr)
	u.carrierMu.Unlock()
	cp.fail(u, left, err)
	cp.remove(cr)
}

// remove takes cr's socket out of the epoll set and closes it.
func (cp *carrierPoller) remove(cr *carrier) {
	cp.mu.Lock()
	if cp.crs[cr.c.fd] == cr {
		delete(cp.crs, cr.c.fd)
		unix.EpollCtl(cp.ep, unix.EPOLL_CTL_DEL, int(cr.c.fd), nil) //nolint:errcheck // closing removes it anyway
	}
	cp.mu.Unlock()
	cr.c.Close()
}

func (cp *carrierPoller) fail(u *upstream, ms []*missFlight, err error) {
	if len(ms) == 0 {
		return
	}
	err = fmt.Errorf("read udp %s: %w", u.label, err)
	for _, m := range ms {
		m.err = err
		cp.p.hand(slowJob{miss: m})
	}
}

// sweep fails the tries whose deadline has passed (and retires their
// carriers: a port whose answers do not come is not reused) and closes
// the carriers that are retired, past retireLinger and empty; with all
// (the proxy closing) or for an upstream that is closed, every carrier
// fails what it has in flight and closes.
func (cp *carrierPoller) sweep(now time.Time, all bool) {
	cp.mu.Lock()
	crs := make([]*carrier, 0, len(cp.crs))
	for _, cr := range cp.crs {
		crs = append(crs, cr)
	}
	cp.mu.Unlock()
	for _, cr := range crs {
		u := cr.u
		u.carrierMu.Lock()
		if all || u.carriersClosed {
			u.carrierMu.Unlock()
			cp.drop(cr, net.ErrClosed)
			continue
		}
		var late []*missFlight
		for i := 0; i < len(cr.pending); {
			if m := cr.pending[i]; !now.Before(m.tryEnd) {
				cr.drop(m)
				late = append(late, m)
				continue
			}
			i++
		}
		if len(late) > 0 {
			cr.retire()
		}
		done := cr.retired && len(cr.pending) == 0 && now.Sub(cr.retiredAt) >= retireLinger
		if done {
			u.unlist(cr)
		}
		u.carrierMu.Unlock()
		cp.fail(u, late, os.ErrDeadlineExceeded)
		if done {
			cp.remove(cr)
		}
	}
}

// carrierSocket is a carrier's connected UDP socket. Its descriptor is in
// blocking mode, so os.NewFile leaves it out of Go's poller, and every
// operation on it passes MSG_DONTWAIT: the carrier poller waits for it.
// The *os.File keeps a Close from reusing the descriptor while a read or
// send is on it.
type carrierSocket struct {
	*os.File
	rc syscall.RawConn
	fd int32
}

// dialCarrier makes a UDP socket connected to addr from a port the kernel
// picks at random (socket and connect; see carrierSocket).
func dialCarrier(addr netip.AddrPort) (*carrierSocket, error) {
	f, rc, fd, err := connectedUDP(addr, 0)
	if err != nil {
		return nil, err
	}
	return &carrierSocket{File: f, rc: rc, fd: int32(fd)}, nil
}
