package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpBatch is how many datagrams one recvmmsg/sendmmsg moves.
const udpBatch = 32

// mmsgLoop is the state of one batched UDP read loop: every buffer, header
// and socket address is allocated once, so a batch of cache hits costs two
// system calls and no allocation.
type mmsgLoop struct {
	p     *Proxy
	c     *net.UDPConn
	rc    syscall.RawConn
	ls    *loopState
	shard int

	rhdr  [udpBatch]unix.Mmsghdr
	riov  [udpBatch]unix.Iovec
	addr  [udpBatch]unix.RawSockaddrInet6
	bufs  [udpBatch][]byte
	shdr  [udpBatch]unix.Mmsghdr
	siov  [udpBatch]unix.Iovec
	outs  [udpBatch][]byte
	nRecv int // datagrams of the batch being handled
	nSend int
	sent  int
	errno syscall.Errno

	recvFn func(fd uintptr) bool // built once: closures passed to RawConn escape
	sendFn func(fd uintptr) bool

	closing *atomic.Bool // the listener set is closing (unblockUDP woke the read)

	up upstreamBatch // the misses' upstream queries, sent before the hits' answers
}

// runUDP serves the listening socket until it is closed, with
// recvmmsg/sendmmsg: f, when detachUDP took the socket out of Go's poller,
// with reads that block in the kernel (recvBlocking); else c, waiting in
// the poller (recv).
func (p *Proxy) runUDP(c *net.UDPConn, f *os.File, shard int, closing *atomic.Bool) {
	var rc syscall.RawConn
	var err error
	if f != nil {
		rc, err = f.SyscallConn()
	} else {
		rc, err = c.SyscallConn()
	}
	if err != nil {
		if f == nil {
			p.udpLoop(c, shard)
		}
		return
	}
	m := &mmsgLoop{p: p, c: c, rc: rc, ls: newLoopState(shard), shard: shard, closing: closing}
	for i := range udpBatch {
		m.bufs[i] = make([]byte, udpReadBuf)
		m.outs[i] = make([]byte, 0, 4096)
		m.riov[i].Base = &m.bufs[i][0]
		m.riov[i].SetLen(len(m.bufs[i]))
		m.rhdr[i].Hdr.Iov = &m.riov[i]
		m.rhdr[i].Hdr.SetIovlen(1)
		m.rhdr[i].Hdr.Name = (*byte)(unsafe.Pointer(&m.addr[i]))
		m.shdr[i].Hdr.Iov = &m.siov[i]
		m.shdr[i].Hdr.SetIovlen(1)
	}
	m.recvFn = m.recv
	m.sendFn = m.send
	if f != nil {
		m.recvFn = m.recvBlocking // serveSet holds its thread (holdThreads)
	}
	for {
		m.errno = 0
		if err := rc.Read(m.recvFn); err != nil || closing.Load() {
			return // closed
		}
		switch {
		case m.errno == 0:
		case f != nil:
			// recvBlocking returns only for a closing set or an error
			// other than EINTR; the socket is not going to work.
			p.log.Error("dns udp listener stopped", "addr", f.Name(), "error", os.NewSyscallError("recvmmsg", m.errno))
			return
		case m.errno == unix.ENOSYS:
			p.udpLoop(c, shard)
			return
		}
	}
}

// recv reads and answers batches until the socket is empty, then returns
// false to wait in the poller. A batch shorter than udpBatch means
// recvmmsg found the queue empty (MSG_DONTWAIT reads until it is), so the
// loop waits at once instead of asking again for an EAGAIN: the poller is
// edge-triggered, and any datagram queued after that recvmmsg has raised
// an edge that wakes it. That saves a system call per wake-up, which at
// one query at a time is one per query on the listener. recv is true
// (RawConn.Read returns) only on an error other than EAGAIN/EINTR.
//
// recv and send are raw system calls (MSG_DONTWAIT: they cannot block);
// see rawSyscall.
func (m *mmsgLoop) recv(fd uintptr) bool {
	for {
		m.resetRecv()
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdr[0])), udpBatch,
			unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
		case unix.EAGAIN:
			return false
		case unix.EINTR:
			continue
		default:
			m.errno = e
			return true
		}
		m.nRecv = int(n)
		m.handle()
		if m.nRecv < udpBatch {
			return false
		}
	}
}

// recvBlocking reads and answers batches, waiting in the kernel: the
// listening socket is in blocking mode, and recvmmsg (a system call Go's
// scheduler is told of, which may then hand this thread's P to another)
// sleeps until the first datagram comes and takes up to udpBatch of what
// is queued then (MSG_WAITFORONE). A query wakes this thread straight
// into its read, as a C resolver's listener thread is woken; Go's poller
// would wake a thread that then finds, schedules and runs this goroutine,
// and polls again before sleeping. It returns (true) on an error other
// than EINTR, and when the set is closing: unblockUDP shuts the socket's
// reading down, which ends a read that waits.
func (m *mmsgLoop) recvBlocking(fd uintptr) bool {
	for !m.closing.Load() {
		m.resetRecv()
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdr[0])), udpBatch,
			unix.MSG_WAITFORONE, 0, 0)
		switch e {
		case 0:
		case unix.EINTR, unix.EAGAIN:
			continue
		case unix.ENOMEM, unix.ENOBUFS: // the host is short of memory: again, a little later
			time.Sleep(time.Millisecond)
			continue
		default:
			m.errno = e
			return true
		}
		m.nRecv = int(n)
		m.handle()
	}
	return true
}

// detachUDP takes c's socket out of Go's poller for recvBlocking: a
// duplicate of its descriptor, in blocking mode, becomes an *os.File that
// the poller does not watch, and c is closed (the poller drops it; the
// socket stays open through the duplicate). A socket left in the poller
// would wake the poller's thread for every datagram, for nothing. nil
// when that fails: c then serves as before, waiting in the poller.
//
// The file's sends pass MSG_DONTWAIT; with nothing to wait in, a send
// that finds the socket buffer full drops the rest of its batch, as a
// full receive queue drops queries: the client asks again.
func detachUDP(c *net.UDPConn) *os.File {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return nil
	}
	if err := unix.SetNonblock(dup, false); err != nil {
		unix.Close(dup)
		return nil
	}
	f := os.NewFile(uintptr(dup), "udp:"+c.LocalAddr().String())
	if f == nil {
		unix.Close(dup)
		return nil
	}
	c.Close()
	return f
}

// unblockUDP ends a recvBlocking waiting on f: shutting a UDP socket's
// reading down wakes a read that sleeps on it (and makes later ones
// return at once), so that the loop sees the set closing and Close goes
// on.
func unblockUDP(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RD) }) //nolint:errcheck // ENOTCONN: an unconnected socket is woken all the same
	}
}

// resetRecv readies the receive headers for the next recvmmsg.
func (m *mmsgLoop) resetRecv() {
	for i := range udpBatch {
		m.rhdr[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		m.rhdr[i].Len = 0
	}
}

func (m *mmsgLoop) send(fd uintptr) bool {
	done, _ := sendBatch(fd, m.shdr[:m.nSend], &m.sent, true)
	return done
}

// sendBatch sends hdrs from *sent on with sendmmsg (MSG_DONTWAIT), as a
// RawConn.Write callback: false (wait in the poller) when the socket
// buffer is full. A datagram the kernel refuses (e.g. unreachable) is
// skipped when skip is set; else sendBatch returns the error with *sent
// at that datagram.
func sendBatch(fd uintptr, hdrs []unix.Mmsghdr, sent *int, skip bool) (bool, syscall.Errno) {
	for *sent < len(hdrs) {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdrs[*sent])),
			uintptr(len(hdrs)-*sent), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			*sent += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false, 0
		default:
			if !skip {
				return true, e
			}
			*sent++
		}
	}
	return true, 0
}

// handle answers the received batch: hits are queued for one sendmmsg,
// misses go to the slow path.
func (m *mmsgLoop) handle() {
	m.nSend, m.sent = 0, 0
	for i := 0; i < m.nRecv; i++ {
		src, ok := sockaddrToAddrPort(&m.addr[i], m.rhdr[i].Hdr.Namelen)
		if !ok {
			continue
		}
		pkt := m.bufs[i][:m.rhdr[i].Len]
		m.ls.out = m.outs[m.nSend][:0]
		resp, slow := m.p.handlePacket(m.ls, pkt, src)
		if resp != nil {
			m.outs[m.nSend] = resp[:0]
			m.siov[m.nSend].Base = &resp[0]
			m.siov[m.nSend].SetLen(len(resp))
			m.shdr[m.nSend].Hdr.Name = (*byte)(unsafe.Pointer(&m.addr[i]))
			m.shdr[m.nSend].Hdr.Namelen = m.rhdr[i].Hdr.Namelen
			m.nSend++
			continue
		}
		if slow {
			to := replyTo{rc: m.rc, sa: m.addr[i], salen: m.rhdr[i].Hdr.Namelen}
			if m.ls.miss && m.p.startMiss(m.ls, pkt, src, to, m.c, &m.up) {
				continue
			}
			m.p.dispatchSlow(m.c, pkt, src, m.shard, to)
		}
	}
	if m.up.n > 0 {
		m.p.flush(&m.up)
	}
	if m.nSend > 0 {
		if err := m.rc.Write(m.sendFn); err != nil && !errors.Is(err, net.ErrClosed) {
			m.p.log.Debug("send dns answers", "error", err)
		}
	}
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6, n uint32) (netip.AddrPort, bool) {
	switch sa.Family {
	case unix.AF_INET:
		if n < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}, false
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := uint16(sa4.Port>>8) | uint16(sa4.Port<<8)
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), true
	case unix.AF_INET6:
		if n < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}, false
		}
		port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}

// replyTo is the listening socket and the client's address as recvmmsg
// gave it, so that the slow path answers with one raw sendto.
type replyTo struct {
	rc    syscall.RawConn
	sa    unix.RawSockaddrInet6
	salen uint32
}

// replyBatch is the answers one read of a carrier finishes (answerMiss
// renders each into it): flush sends them with one sendmmsg per listening
// socket (nearly always one) instead of a sendto each.
type replyBatch struct {
	n    int
	rc   [carrierBatch]syscall.RawConn
	sa   [carrierBatch]unix.RawSockaddrInet6
	out  [carrierBatch][]byte // the answers, rendered in place
	hdr  [carrierBatch]unix.Mmsghdr
	iov  [carrierBatch]unix.Iovec
	run  []unix.Mmsghdr // being sent (send)
	sent int
	fn   func(fd uintptr) bool // built once: a closure passed to RawConn escapes
}

// buf is the buffer the next answer is rendered into (then add).
func (rb *replyBatch) buf() []byte {
	if rb.out[rb.n] == nil {
		rb.out[rb.n] = make([]byte, 0, 1500)
	}
	return rb.out[rb.n][:0]
}

// add queues b, rendered into buf, for the client to.
func (rb *replyBatch) add(b []byte, to *replyTo) {
	i := rb.n
	rb.n++
	rb.out[i] = b[:0] // keeps a buffer that grew
	rb.rc[i], rb.sa[i] = to.rc, to.sa
	rb.iov[i].Base = &b[0]
	rb.iov[i].SetLen(len(b))
	rb.hdr[i] = unix.Mmsghdr{}
	rb.hdr[i].Hdr.Iov = &rb.iov[i]
	rb.hdr[i].Hdr.SetIovlen(1)
	rb.hdr[i].Hdr.Name = (*byte)(unsafe.Pointer(&rb.sa[i]))
	rb.hdr[i].Hdr.Namelen = to.salen
}

// flush sends the queued answers, a sendmmsg per run of answers on the
// same socket. A failure is the client's (gone) or the proxy's (stopping):
// nothing to do.
func (rb *replyBatch) flush() {
	if rb.fn == nil {
		rb.fn = rb.send
	}
	for i := 0; i < rb.n; {
		rc := rb.rc[i]
		j := i + 1
		for j < rb.n && rb.rc[j] == rc {
			j++
		}
		rb.run, rb.sent = rb.hdr[i:j], 0
		rc.Write(rb.fn) //nolint:errcheck // closed: the proxy is stopping
		i = j
	}
	clear(rb.rc[:rb.n])
	rb.n, rb.run = 0, nil
}

func (rb *replyBatch) send(fd uintptr) bool {
	done, _ := sendBatch(fd, rb.run, &rb.sent, true)
	return done
}

// reply writes the slow path's answer to the job's client: a raw sendto
// (MSG_DONTWAIT, see rawSyscall) on the socket the query came in on,
// waiting in the poller only if the socket buffer is full (a socket
// detachUDP took out of the poller drops the answer then).
func (j *slowJob) reply(b []byte) {
	if j.to.rc == nil || len(b) == 0 {
		j.c.WriteToUDPAddrPort(b, j.src) //nolint:errcheck // the client may be gone
		return
	}
	//nolint:errcheck // only a closed socket fails here: the proxy is stopping
	j.to.rc.Write(func(fd uintptr) bool {
		for {
			_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
				unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&j.to.sa)), uintptr(j.to.salen))
			if e != unix.EINTR {
				return e != unix.EAGAIN // any other error: the client may be gone, nothing to do
			}
		}
	})
}
