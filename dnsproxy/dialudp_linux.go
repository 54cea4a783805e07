package dnsproxy

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dialUDP makes a non-blocking UDP socket connected to addr, from a port the
// kernel picks at random, and hands it to Go's poller as an *os.File. That
// is socket, connect and one poller registration: net.DialUDP adds
// setsockopt, getsockname and getpeername, none of which a query needs.
func dialUDP(addr netip.AddrPort) (udpConn, error) {
	f, rc, _, err := connectedUDP(addr, unix.SOCK_NONBLOCK)
	if err != nil {
		return nil, err
	}
	c := &upstreamSocket{File: f, rc: rc}
	c.readFn, c.writeFn = c.read, c.write
	return c, nil
}

// connectedUDP makes a UDP socket connected to addr, from a port the
// kernel picks at random (socket and connect), as an *os.File with its
// RawConn and descriptor. flags adds to the socket's type: with
// SOCK_NONBLOCK the file is in Go's poller; without, it is not.
func connectedUDP(addr netip.AddrPort, flags int) (*os.File, syscall.RawConn, int, error) {
	var sa unix.Sockaddr
	family := unix.AF_INET
	if a := addr.Addr(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|flags, unix.IPPROTO_UDP)
	if err != nil {
		return nil, nil, -1, os.NewSyscallError("socket", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, nil, -1, fmt.Errorf("connect %s: %w", addr, err)
	}
	f := os.NewFile(uintptr(fd), "udp:"+addr.String())
	if f == nil {
		unix.Close(fd)
		return nil, nil, -1, fmt.Errorf("connect %s: bad descriptor", addr)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, -1, fmt.Errorf("connect %s: %w", addr, err)
	}
	return f, rc, fd, nil
}

// upstreamSocket is a connected non-blocking UDP socket whose reads and writes are
// raw system calls (see rawSyscall), waiting in Go's poller only when the
// kernel says EAGAIN. Read and Write keep the operation's state in it
// and build their callbacks once: only for one owner at a time (a try of
// exchangeUDP); a carrier, shared by listeners, sends with send.
type upstreamSocket struct {
	*os.File // deadlines, Close, the poller registration
	rc       syscall.RawConn

	buf   []byte
	n     int
	errno syscall.Errno

	readFn, writeFn func(fd uintptr) bool
}

func (c *upstreamSocket) Read(b []byte) (int, error) {
	c.buf, c.n, c.errno = b, 0, 0
	err := c.rc.Read(c.readFn)
	c.buf = nil
	switch {
	case err != nil:
		return 0, err
	case c.errno != 0:
		return 0, os.NewSyscallError("read", c.errno)
	case c.n == 0:
		return 0, io.EOF // an empty datagram, as *os.File reports it
	}
	return c.n, nil
}

func (c *upstreamSocket) Write(b []byte) (int, error) {
	c.buf, c.n, c.errno = b, 0, 0
	err := c.rc.Write(c.writeFn)
	c.buf = nil
	switch {
	case err != nil:
		return 0, err
	case c.errno != 0:
		return 0, os.NewSyscallError("write", c.errno)
	}
	return c.n, nil
}

func (c *upstreamSocket) read(fd uintptr) bool  { return c.call(unix.SYS_READ, fd) }
func (c *upstreamSocket) write(fd uintptr) bool { return c.call(unix.SYS_WRITE, fd) }

// call is read's and write's system call on c.buf: false (wait in the
// poller) on EAGAIN, else the result kept in c.
func (c *upstreamSocket) call(trap, fd uintptr) bool {
	n, errno := rawSyscall(trap, fd, c.buf)
	if errno == unix.EAGAIN {
		return false
	}
	c.n, c.errno = n, errno
	return true
}

// rawSyscall makes a read or write system call on b that cannot block (the
// socket is non-blocking) without telling the scheduler: a system call
// made the usual way leaves the goroutine's P in a syscall state in which
// sysmon hands it to another thread once it has seen it there twice, and
// on a busy proxy with one P that happens to short socket calls often
// enough to cost thread wake-ups (futex), yields and a sysmon ticking every
// 20 µs on the core the proxy runs on. EINTR is retried.
func rawSyscall(trap, fd uintptr, b []byte) (int, syscall.Errno) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	for {
		n, _, e := unix.RawSyscall(trap, fd, uintptr(p), uintptr(len(b)))
		if e != unix.EINTR {
			return int(n), e
		}
	}
}
