package main

import (
	"net"
	"testing"
	"time"
)

// TestReadStampedArrival: a datagram read 30 ms after it arrived carries
// its arrival time, not the read's: a round trip stops at the answer's
// arrival whatever the reader was doing meanwhile.
func TestReadStampedArrival(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := rxStamped(c); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 64), make([]byte, oobSize)
	// The kernel turns receive timestamps on for the first such socket
	// from a work queue: until then a datagram is stamped when it is read.
	// Wait (bounded) for a datagram stamped on arrival.
	for i := 0; ; i++ {
		if i == 200 {
			t.Fatal("no datagram stamped on arrival within 2 s")
		}
		if _, err := srv.WriteToUDP([]byte("probe"), c.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, rx, err := readStamped(c, buf, oob); err != nil {
			t.Fatal(err)
		} else if !rx.IsZero() && time.Since(rx) > 5*time.Millisecond {
			break
		}
	}
	sent := time.Now()
	if _, err := srv.WriteToUDP([]byte("answer"), c.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, rx, err := readStamped(c, buf, oob)
	read := time.Now()
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if rx.IsZero() {
		t.Fatal("no receive time on a socket with SO_TIMESTAMPNS")
	}
	if rx.Before(sent.Add(-time.Millisecond)) || !rx.Before(read.Add(-20*time.Millisecond)) {
		t.Errorf("receive time %v after the send and %v before the read; want it at the send, 30 ms before the read",
			rx.Sub(sent), read.Sub(rx))
	}
}
