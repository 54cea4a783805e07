//go:build !linux

package dnsproxy

import (
	"net"
	"os"
	"sync/atomic"
)

// replyTo is empty where answers go through the net package.
type replyTo struct{}

// reply writes the slow path's answer to the job's client.
func (j *slowJob) reply(b []byte) {
	j.c.WriteToUDPAddrPort(b, j.src) //nolint:errcheck // the client may be gone
}

// runUDP serves c until it is closed.
func (p *Proxy) runUDP(c *net.UDPConn, _ *os.File, shard int, _ *atomic.Bool) { p.udpLoop(c, shard) }

// detachUDP leaves c in Go's poller, where udpLoop waits.
func detachUDP(*net.UDPConn) *os.File { return nil }

// unblockUDP has nothing to wake.
func unblockUDP(*os.File) {}
