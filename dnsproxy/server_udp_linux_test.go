package dnsproxy

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// replyToConn is the replyTo of an answer sent on the socket of rc to
// the client socket c.
func replyToConn(t *testing.T, rc syscall.RawConn, c *net.UDPConn) *replyTo {
	t.Helper()
	to := &replyTo{rc: rc, salen: unix.SizeofSockaddrInet4}
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&to.sa))
	sa.Family = unix.AF_INET
	sa.Port = ap.Port()>>8 | ap.Port()<<8
	sa.Addr = ap.Addr().As4()
	return to
}

// TestReplyBatchFlush: flush sends each queued answer to its client from
// the socket it was queued for, with answers on two sockets interleaved,
// and leaves the batch empty.
func TestReplyBatchFlush(t *testing.T) {
	la, lb := listenLoopback(t), listenLoopback(t)
	c1, c2 := listenLoopback(t), listenLoopback(t)
	rca, err := la.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rcb, err := lb.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var rb replyBatch
	for _, a := range []struct {
		rc     syscall.RawConn
		client *net.UDPConn
		text   string
	}{{rca, c1, "1"}, {rca, c2, "2"}, {rcb, c1, "3"}, {rca, c1, "4"}} {
		rb.add(append(rb.buf(), a.text...), replyToConn(t, a.rc, a.client))
	}
	rb.flush()
	if rb.n != 0 || rb.rc[0] != nil {
		t.Errorf("batch not emptied: n=%d", rb.n)
	}
	from := func(l *net.UDPConn) netip.AddrPort { return l.LocalAddr().(*net.UDPAddr).AddrPort() }
	want := map[*net.UDPConn][]struct {
		text string
		from netip.AddrPort
	}{
		c1: {{"1", from(la)}, {"3", from(lb)}, {"4", from(la)}},
		c2: {{"2", from(la)}},
	}
	buf := make([]byte, 64)
	for c, answers := range want {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for _, w := range answers {
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("client %v: waiting for %q: %v", from(c), w.text, err)
			}
			if string(buf[:n]) != w.text || src != w.from {
				t.Errorf("client %v got %q from %v, want %q from %v", from(c), buf[:n], src, w.text, w.from)
			}
		}
	}
}
