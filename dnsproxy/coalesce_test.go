package dnsproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestCoalescingConnOrderAndClose: concurrent writers' bytes all reach the
// peer, each write's bytes contiguous and every writer's writes in order,
// the ones still pending at Close included; writes after Close fail.
func TestCoalescingConnOrderAndClose(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newCoalescingConn(a)
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	const writers, perWriter = 4, 300
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				if _, err := fmt.Fprintf(c, "<%d:%04d>", w, i); err != nil {
					t.Errorf("write %d/%d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v, want net.ErrClosed", err)
	}
	var all []byte
	select {
	case all = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not finish")
	}
	next := make([]int, writers)
	for len(all) > 0 {
		var w, i int
		if _, err := fmt.Sscanf(string(all[:8]), "<%d:%04d>", &w, &i); err != nil || w < 0 || w >= writers {
			t.Fatalf("stream broken at %q: %v", all[:min(len(all), 16)], err)
		}
		if i != next[w] {
			t.Fatalf("writer %d: got write %d, want %d", w, i, next[w])
		}
		next[w]++
		all = all[8:]
	}
	for w, n := range next {
		if n != perWriter {
			t.Errorf("writer %d: %d writes arrived, want %d", w, n, perWriter)
		}
	}
}

// TestCoalescingConnStuckPeer: a peer that never reads cannot hold Close
// past its bound, and the error reaches later writes.
func TestCoalescingConnStuckPeer(t *testing.T) {
	a, b := net.Pipe() // unbuffered: writes block until read
	defer b.Close()
	c := newCoalescingConn(a)
	c.closeWait = 50 * time.Millisecond
	if _, err := c.Write(bytes.Repeat([]byte("x"), 100)); err != nil {
		t.Fatalf("first write: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked on a peer that does not read")
	}
	if _, err := c.Write([]byte("y")); err == nil {
		t.Error("write after a failed flush succeeded")
	}
}
