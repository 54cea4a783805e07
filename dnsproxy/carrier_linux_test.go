package dnsproxy

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestCarrierRearmsAfterWake: once a carrier's reader has woken on a
// passed deadline with no try late (here: nothing in flight), arm leaves
// the socket without a deadline, so the next read waits for an answer.
// Before, arm took the socket's passed deadline for "none" and left it:
// every read failed at once and the reader spun until the next query.
func TestCarrierRearmsAfterWake(t *testing.T) {
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := dialUDP(l.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	sock := c.(*upstreamSocket)
	t.Cleanup(func() { sock.Close() })
	if _, err := sock.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, from, err := l.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}

	u := &upstream{label: "test"}
	cr := &carrier{u: u, c: sock, born: time.Now()}
	u.carriers.carriers = map[*carrier]struct{}{cr: {}}
	u.carrierMu.Lock()
	cr.setDeadline(time.Now().Add(5 * time.Millisecond))
	u.carrierMu.Unlock()
	if _, err := sock.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read before the deadline passed: %v, want a deadline error", err)
	}
	(&Proxy{}).expireCarrier(cr, os.ErrDeadlineExceeded)
	if !cr.arm() {
		t.Fatal("arm ended a carrier that is not retired")
	}

	go func() {
		time.Sleep(50 * time.Millisecond)
		l.WriteToUDPAddrPort([]byte("answer"), from) //nolint:errcheck // the read below fails if it is lost
	}()
	start := time.Now()
	n, err := sock.Read(buf)
	if err != nil {
		t.Fatalf("read after arm with nothing in flight: %v after %v (the socket kept its passed deadline)", err, time.Since(start))
	}
	if string(buf[:n]) != "answer" {
		t.Fatalf("read %q", buf[:n])
	}

	// Retired with nothing in flight: arm ends it and takes it off the
	// upstream's carriers.
	u.carrierMu.Lock()
	cr.retire()
	u.carrierMu.Unlock()
	if cr.arm() {
		t.Fatal("arm kept a retired carrier with nothing in flight")
	}
	if len(u.carriers.carriers) != 0 {
		t.Fatal("a finished carrier is still listed")
	}
}
