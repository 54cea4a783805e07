package dnsproxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
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

// TestDoHHTTP1Close: over HTTP/1.1 with "Connection: close" the server
// writes the answer and closes at once; the answer still arrives whole
// (the coalescing connection flushes what is pending on Close).
func TestDoHHTTP1Close(t *testing.T) {
	up := startFake(t, answerA("198.51.100.12", 300))
	p, roots := encryptedProxy(t, up.addr, nil)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: testServerName},
		TLSNextProto:      map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
		DisableKeepAlives: true,
	}}
	q := newQuery("www.example.", dns.TypeA)
	wire, _ := q.Pack()
	for i := range 5 {
		req, _ := http.NewRequest(http.MethodPost, dohURL(t, p), bytes.NewReader(wire))
		req.Header.Set("Content-Type", dohContentType)
		req.Close = true
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if resp.ProtoMajor != 1 {
			t.Errorf("protocol %s, want HTTP/1.1", resp.Proto)
		}
		if r := readDoH(t, resp); firstA(t, r) != "198.51.100.12" {
			t.Errorf("request %d: answer %v", i, r)
		}
	}
}
