//go:build !linux

package dnsproxy

import "net"

// replyTo is empty where answers go through the net package.
type replyTo struct{}

// reply writes the slow path's answer to the job's client.
func (j *slowJob) reply(b []byte) {
	j.c.WriteToUDPAddrPort(b, j.src) //nolint:errcheck // the client may be gone
}

// runUDP serves c until it is closed.
func (p *Proxy) runUDP(c *net.UDPConn, shard int) { p.udpLoop(c, shard) }
