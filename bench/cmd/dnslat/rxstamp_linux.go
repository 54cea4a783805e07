package main

import (
	"encoding/binary"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// rxStamped asks the kernel to stamp every datagram c receives with the
// time it arrived (SO_TIMESTAMPNS), which readStamped hands back: a round
// trip then ends when the answer reached the client's socket, not when
// the worker waiting for it was next scheduled — with 64 workers on one
// core that wait is the load generator's, not the server's.
func rxStamped(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return err
	}
	return serr
}

// oobSize holds one SCM_TIMESTAMPNS control message (unix.CmsgSpace(16):
// 32 bytes on 64-bit Linux).
const oobSize = 64

// readStamped reads one datagram into buf and returns its length and the
// kernel's receive time, or the zero time when the datagram carries none.
func readStamped(c *net.UDPConn, buf, oob []byte) (int, time.Time, error) {
	n, oobn, _, _, err := c.ReadMsgUDP(buf, oob)
	if err != nil {
		return 0, time.Time{}, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return n, time.Time{}, nil
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_TIMESTAMPNS {
			continue
		}
		switch len(m.Data) { // a struct timespec of this platform's word size
		case 16:
			return n, time.Unix(int64(binary.NativeEndian.Uint64(m.Data)), int64(binary.NativeEndian.Uint64(m.Data[8:]))), nil
		case 8:
			return n, time.Unix(int64(int32(binary.NativeEndian.Uint32(m.Data))), int64(int32(binary.NativeEndian.Uint32(m.Data[4:])))), nil
		}
	}
	return n, time.Time{}, nil
}
