//go:build linux

package main

import (
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelForwarder is the same forwarder with its two goroutines waiting in
// the kernel, as dnsproxy's UDP path does: both sockets are taken out of
// Go's poller (a blocking duplicate of each descriptor; the net.UDPConn
// closed), and each goroutine sleeps in a blocking recvfrom that Go's
// scheduler is told of. GOMAXPROCS gets one P per waiting goroutine on top
// of what it was. This is the shape of a C resolver's receiver threads:
// a datagram wakes the thread straight into its read.
type kernelForwarder struct {
	lfd, ufd int
	closing  atomic.Bool
	mu       sync.Mutex // guards clients: both goroutines use it
	clients  [1 << 16]client
}

// detach returns a blocking duplicate of c's descriptor and closes c.
func detach(c *net.UDPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	if err := unix.SetNonblock(dup, false); err != nil {
		unix.Close(dup)
		return -1, err
	}
	c.Close()
	return dup, nil
}

// kernelWait turns f into a kernelForwarder (f's sockets are closed).
func kernelWait(f *forwarder) (*kernelForwarder, error) {
	k := &kernelForwarder{}
	var err error
	if k.lfd, err = detach(f.lc); err != nil {
		f.close()
		return nil, err
	}
	if k.ufd, err = detach(f.uc); err != nil {
		unix.Close(k.lfd)
		return nil, err
	}
	return k, nil
}

// serve runs both directions until close.
func (k *kernelForwarder) serve() {
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 2)
	done := make(chan struct{})
	go func() {
		k.relay(k.ufd, k.lfd, false)
		close(done)
	}()
	k.relay(k.lfd, k.ufd, true)
	<-done
	unix.Close(k.lfd)
	unix.Close(k.ufd)
}

// close wakes both reads (shutdown) and makes serve return.
func (k *kernelForwarder) close() {
	k.closing.Store(true)
	unix.Shutdown(k.lfd, unix.SHUT_RD) //nolint:errcheck // ENOTCONN: it wakes the read all the same
	unix.Shutdown(k.ufd, unix.SHUT_RD) //nolint:errcheck
}

// relay reads datagrams from in and writes each to out: queries (a
// client's, remembered by ID) to the connected upstream socket, or
// answers to the client that used their ID.
func (k *kernelForwarder) relay(in, out int, queries bool) {
	buf := make([]byte, 4096)
	for !k.closing.Load() {
		var sa unix.RawSockaddrInet6
		sl := uint32(unsafe.Sizeof(sa))
		n, _, e := syscall.Syscall6(unix.SYS_RECVFROM, uintptr(in), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
			0, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&sl)))
		if e != 0 || n < 12 {
			continue
		}
		id := int(buf[0])<<8 | int(buf[1])
		k.mu.Lock()
		if queries {
			k.clients[id] = client{sa, sl}
		} else {
			sa, sl = k.clients[id].sa, k.clients[id].len
		}
		k.mu.Unlock()
		if queries {
			unix.RawSyscall(unix.SYS_WRITE, uintptr(out), uintptr(unsafe.Pointer(&buf[0])), n)
			continue
		}
		unix.RawSyscall6(unix.SYS_SENDTO, uintptr(out), uintptr(unsafe.Pointer(&buf[0])), n, unix.MSG_DONTWAIT,
			uintptr(unsafe.Pointer(&sa)), uintptr(sl))
	}
}
