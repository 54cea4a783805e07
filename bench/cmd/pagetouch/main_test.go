package main

import (
	"net"
	"testing"
	"time"
)

// TestMeasureEchoes: two servers, one reading pages per datagram, both
// answer every datagram, and the client counts each and orders its
// percentiles.
func TestMeasureEchoes(t *testing.T) {
	var addrs []string
	for _, pages := range []int{0, 8} {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		tc := newToucher(1, pages, 0)
		if tc.set != 256 {
			t.Fatalf("1 MiB holds %d pages, want 256", tc.set)
		}
		done := make(chan error, 1)
		go func() { done <- serve(c, tc) }()
		t.Cleanup(func() {
			c.Close()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
		addrs = append(addrs, c.LocalAddr().String())
	}
	res, err := measure(addrs, 200, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Count != 200 || r.Errors != 0 {
			t.Errorf("%s: %d answered, %d errors; want 200, 0", r.Target, r.Count, r.Errors)
		}
		if !(r.P50 > 0 && r.P50 <= r.P90 && r.P90 <= r.P99) {
			t.Errorf("%s: percentiles %v %v %v not ordered", r.Target, r.P50, r.P90, r.P99)
		}
	}
}

// TestToucherSet: -set bounds the pages read to the first N.
func TestToucherSet(t *testing.T) {
	tc := newToucher(1, 64, 4)
	if tc.set != 4 {
		t.Fatalf("set %d, want 4", tc.set)
	}
	for i := range tc.mem {
		tc.mem[i] = 0
	}
	for i := 0; i < 4*4096; i += 64 {
		tc.mem[i] = 1
	}
	tc.touch()
	if tc.sink != 64 {
		t.Errorf("64 reads in the first 4 pages summed %d, want 64 (a read outside them)", tc.sink)
	}
}
