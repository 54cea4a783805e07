//go:build !linux

package dnsproxy

import "net"

// runUDP serves c until it is closed.
func (p *Proxy) runUDP(c *net.UDPConn, shard int) { p.udpLoop(c, shard) }
