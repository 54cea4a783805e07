package dnsproxy

import (
	"net"
	"sync"
	"time"
)

// coalesceMax bounds the bytes a coalescingConn holds before Write waits
// for the socket.
const coalesceMax = 64 << 10

// coalescingConn gathers the writes made while its previous write to the
// socket is still being scheduled or in progress, and sends them with one
// write. It sits under the DoH listener's TLS: net/http's HTTP/2 server
// flushes after every frame when its queue runs empty, so an answer's
// HEADERS and DATA frames, and the answers of concurrent streams, were one
// TLS record and one write syscall each. A long-lived flusher goroutine
// per connection does the socket writes, in order; the socket's deadlines
// (set through the embedded Conn) bound them. A failed socket write is
// returned by the following Write and by Close.
type coalescingConn struct {
	net.Conn
	wake      chan struct{} // one pending wake-up of the flusher
	closeWait time.Duration // how long Close waits for pending bytes

	mu       sync.Mutex
	space    sync.Cond // signalled when pending shrinks or flushing ends
	pending  []byte    // bytes not yet handed to the socket
	spare    []byte    // the flusher's last batch, reused
	flushing bool      // the flusher has been woken and not finished
	err      error     // first socket write error, or net.ErrClosed
	closed   bool
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, wake: make(chan struct{}, 1), closeWait: encryptedWriteTimeout}
	cc.space.L = &cc.mu
	go cc.flusher()
	return cc
}

func (c *coalescingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && len(c.pending) > 0 && len(c.pending)+len(b) > coalesceMax {
		c.space.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	c.pending = append(c.pending, b...)
	if !c.flushing {
		c.flushing = true
		c.wake <- struct{}{} // cannot block: flushing was false, so the slot is empty
	}
	return len(b), nil
}

// flusher writes pending to the socket until Close.
func (c *coalescingConn) flusher() {
	for range c.wake {
		c.mu.Lock()
		for len(c.pending) > 0 && c.err == nil {
			batch := c.pending
			c.pending = c.spare[:0]
			c.mu.Unlock()
			_, err := c.Conn.Write(batch)
			c.mu.Lock()
			if cap(batch) <= coalesceMax {
				c.spare = batch[:0]
			}
			if err != nil && c.err == nil {
				c.err = err
			}
			c.space.Broadcast()
		}
		c.flushing = false
		c.space.Broadcast()
		c.mu.Unlock()
	}
}

// Close waits for the pending bytes to reach the socket, for at most
// closeWait (the last answer, a GOAWAY or TLS close_notify must
// not be dropped; a peer that stops reading must not hold Close), then
// closes it.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	if c.flushing && c.err == nil {
		c.Conn.SetWriteDeadline(time.Now().Add(c.closeWait)) //nolint:errcheck // Close reports the socket's error
	}
	for c.flushing && c.err == nil {
		c.space.Wait()
	}
	if c.err == nil {
		c.err = net.ErrClosed
	}
	close(c.wake)
	c.space.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}

// coalescingListener wraps each accepted connection in a coalescingConn.
type coalescingListener struct{ net.Listener }

func (l coalescingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newCoalescingConn(c), nil
}
