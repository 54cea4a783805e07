//go:build linux

// Command minfwd is the smallest UDP DNS forwarder Go's poller allows, for
// the README's comparison of where a miss's time goes (Performance): one
// goroutine reads clients' queries and writes them to the upstream on one
// connected socket, one goroutine reads the upstream's answers and sends
// each to the client that used its ID, both with raw non-blocking system
// calls that wait in the poller only when a read finds the socket empty.
// Nothing else: no cache, no checks of any kind, one fixed source port and
// the client's own IDs. With -wait kernel both goroutines wait in the
// kernel instead (kernel.go), the way dnsproxy's UDP path does since
// 2026-12-07. It is a measuring stick, not a resolver — never let
// anything but a benchmark talk to it.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// forwarder relays between one listening socket and one upstream.
type forwarder struct {
	lc, uc *net.UDPConn
	lrc    syscall.RawConn
	urc    syscall.RawConn
	// clients maps a query's ID to the client that sent it: the last one
	// to use the ID wins, which a benchmark asking one query at a time,
	// or with distinct IDs, never notices. mu guards it: both directions
	// use it, and an uncontended lock is tens of nanoseconds of a round
	// trip of tens of microseconds.
	mu      sync.Mutex
	clients [1 << 16]client
}

// client is a query's source address as recvfrom gave it.
type client struct {
	sa  unix.RawSockaddrInet6
	len uint32
}

func newForwarder(listen, upstream netip.AddrPort) (*forwarder, error) {
	lc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(listen))
	if err != nil {
		return nil, err
	}
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(upstream))
	if err != nil {
		lc.Close()
		return nil, err
	}
	f := &forwarder{lc: lc, uc: uc}
	if f.lrc, err = lc.SyscallConn(); err == nil {
		f.urc, err = uc.SyscallConn()
	}
	if err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

func (f *forwarder) close() {
	f.lc.Close()
	f.uc.Close()
}

// serve runs both directions until the sockets are closed.
func (f *forwarder) serve() {
	done := make(chan struct{})
	go func() {
		f.answers()
		close(done)
	}()
	f.queries()
	<-done
}

// queries reads clients' queries and writes each to the upstream.
func (f *forwarder) queries() {
	buf := make([]byte, 4096)
	for {
		err := f.lrc.Read(func(fd uintptr) bool {
			for {
				var sa unix.RawSockaddrInet6
				sl := uint32(unsafe.Sizeof(sa))
				n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
					unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&sl)))
				switch {
				case e == unix.EAGAIN:
					return false
				case e != 0:
					return true
				case n < 12:
					continue
				}
				f.mu.Lock()
				f.clients[int(buf[0])<<8|int(buf[1])] = client{sa, sl}
				f.mu.Unlock()
				f.urc.Write(func(ufd uintptr) bool {
					unix.RawSyscall(unix.SYS_WRITE, ufd, uintptr(unsafe.Pointer(&buf[0])), n)
					return true
				})
			}
		})
		if err != nil {
			return
		}
	}
}

// answers reads the upstream's answers, two at a time, and sends each to
// its client.
func (f *forwarder) answers() {
	var hdr [2]unix.Mmsghdr
	var iov [2]unix.Iovec
	var bufs [2][4096]byte
	var c client // the answer's client, copied out under mu
	for i := range hdr {
		iov[i].Base = &bufs[i][0]
		iov[i].SetLen(len(bufs[i]))
		hdr[i].Hdr.Iov = &iov[i]
		hdr[i].Hdr.SetIovlen(1)
	}
	for {
		err := f.urc.Read(func(fd uintptr) bool {
			for {
				got, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hdr[0])), uintptr(len(hdr)),
					unix.MSG_DONTWAIT, 0, 0)
				switch {
				case e == unix.EAGAIN:
					return false
				case e != 0:
					return true
				}
				for k := range int(got) {
					buf, n := &bufs[k], uintptr(hdr[k].Len)
					if n < 12 {
						continue
					}
					f.mu.Lock()
					c = f.clients[int(buf[0])<<8|int(buf[1])]
					f.mu.Unlock()
					f.lrc.Write(func(lfd uintptr) bool {
						unix.RawSyscall6(unix.SYS_SENDTO, lfd, uintptr(unsafe.Pointer(&buf[0])), n, unix.MSG_DONTWAIT,
							uintptr(unsafe.Pointer(&c.sa)), uintptr(c.len))
						return true
					})
				}
				if int(got) < len(hdr) {
					return false // the queue was empty: wait in the poller
				}
			}
		})
		if err != nil {
			return
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:5450", "address to listen on")
	upstream := flag.String("upstream", "127.0.0.1:5300", "the upstream resolver")
	wait := flag.String("wait", "poller", "where the goroutines wait for datagrams: poller (Go's) or kernel (blocking reads)")
	flag.Parse()
	l, err := netip.ParseAddrPort(*listen)
	if err == nil && *wait != "poller" && *wait != "kernel" {
		err = fmt.Errorf("-wait %q: want poller or kernel", *wait)
	}
	if err == nil {
		var u netip.AddrPort
		if u, err = netip.ParseAddrPort(*upstream); err == nil {
			var f *forwarder
			if f, err = newForwarder(l, u); err == nil {
				fmt.Fprintf(os.Stderr, "minfwd: %s → %s, waiting in the %s\n", l, u, *wait)
				if *wait == "poller" {
					f.serve()
					return
				}
				var k *kernelForwarder
				if k, err = kernelWait(f); err == nil {
					k.serve()
					return
				}
			}
		}
	}
	fmt.Fprintln(os.Stderr, "minfwd:", err)
	os.Exit(1)
}
