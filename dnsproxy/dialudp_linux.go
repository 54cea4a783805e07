package dnsproxy

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// dialUDP makes a non-blocking UDP socket connected to addr, from a port the
// kernel picks at random, and hands it to Go's poller as an *os.File. That
// is socket, connect and one poller registration: net.DialUDP adds
// setsockopt, getsockname and getpeername, none of which a query needs.
func dialUDP(addr netip.AddrPort) (udpConn, error) {
	var sa unix.Sockaddr
	family := unix.AF_INET
	if a := addr.Addr(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	f := os.NewFile(uintptr(fd), "udp:"+addr.String())
	if f == nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect %s: bad descriptor", addr)
	}
	return f, nil
}
