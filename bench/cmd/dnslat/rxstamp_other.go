//go:build !linux

package main

import (
	"net"
	"time"
)

// rxStamped is a no-op here: round trips end at the read (readStamped).
func rxStamped(*net.UDPConn) error { return nil }

const oobSize = 0

// readStamped reads one datagram; there is no kernel receive time here.
func readStamped(c *net.UDPConn, buf, _ []byte) (int, time.Time, error) {
	n, err := c.Read(buf)
	return n, time.Time{}, err
}
