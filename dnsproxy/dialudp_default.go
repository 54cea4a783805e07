//go:build !linux

package dnsproxy

import (
	"net"
	"net/netip"
)

// dialUDP makes a UDP socket connected to addr from a random port.
func dialUDP(addr netip.AddrPort) (udpConn, error) {
	return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
}
