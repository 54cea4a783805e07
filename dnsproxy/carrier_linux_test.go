package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// TestCarrierPollerSweep: the poller's sweep fails a try whose deadline
// has passed (a worker gets it with a deadline error) and retires its
// carrier, keeps a try still within its deadline, and closes a retired
// carrier only once it has nothing in flight and retireLinger has passed.
func TestCarrierPollerSweep(t *testing.T) {
	// The poller's state without its goroutine: the sweeps below are the
	// only ones, at the times they are given.
	p := &Proxy{slowJobs: make(chan slowJob, 4)}
	p.cpoll.init(p)
	cr, _ := carrierTo(t)
	u := cr.u
	p.cpoll.crs = map[int32]*carrier{cr.c.fd: cr}
	u.carriers.carriers = map[*carrier]struct{}{cr: {}}
	now := time.Now()
	late := &missFlight{tryEnd: now.Add(-time.Millisecond)}
	live := &missFlight{tryEnd: now.Add(time.Minute)}
	u.carrierMu.Lock()
	cr.track(late)
	cr.track(live)
	u.carrierMu.Unlock()

	p.cpoll.sweep(now, false)
	select {
	case job := <-p.slowJobs:
		if job.miss != late || !errors.Is(job.miss.err, os.ErrDeadlineExceeded) {
			t.Errorf("worker got %p (err %v), want the late try %p with a deadline error", job.miss, job.miss.err, late)
		}
	default:
		t.Fatal("the late try was not failed over to a worker")
	}
	if len(p.slowJobs) != 0 || len(cr.pending) != 1 || cr.pending[0] != live {
		t.Fatalf("after the sweep: %d more jobs, in flight %v; want only the live try in flight", len(p.slowJobs), cr.pending)
	}
	if !cr.retired {
		t.Error("a carrier whose try went unanswered was not retired")
	}

	// Retired with a try in flight, then empty but within retireLinger:
	// kept open; past it: closed and off the poller and the upstream.
	p.cpoll.sweep(now.Add(time.Second), false)
	if !isPolled(p, cr) {
		t.Fatal("a carrier with a try in flight was closed")
	}
	u.carrierMu.Lock()
	cr.drop(live)
	u.carrierMu.Unlock()
	p.cpoll.sweep(cr.retiredAt.Add(retireLinger/2), false)
	if !isPolled(p, cr) {
		t.Fatal("a retired carrier was closed before retireLinger passed")
	}
	p.cpoll.sweep(cr.retiredAt.Add(retireLinger), false)
	if isPolled(p, cr) || len(u.carriers.carriers) != 0 {
		t.Fatal("a retired, empty carrier past retireLinger is still open")
	}
	if _, err := cr.c.Write([]byte("q")); err == nil {
		t.Error("the swept carrier's socket is still open")
	}
}

// TestCarrierPollerStop: stopping the poller fails what is still in
// flight (a worker gets it) and closes every carrier; later carriers are
// refused.
func TestCarrierPollerStop(t *testing.T) {
	p := &Proxy{slowJobs: make(chan slowJob, 4)}
	p.cpoll.init(p)
	cr, _ := carrierTo(t)
	if err := p.cpoll.add(cr); err != nil {
		t.Fatal(err)
	}
	m := &missFlight{tryEnd: time.Now().Add(time.Minute)}
	cr.u.carrierMu.Lock()
	cr.track(m)
	cr.u.carrierMu.Unlock()
	p.cpoll.stop()
	done := make(chan struct{})
	go func() { p.carrierWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the poller did not stop")
	}
	select {
	case job := <-p.slowJobs:
		if job.miss != m || !errors.Is(job.miss.err, net.ErrClosed) {
			t.Errorf("worker got %p (err %v), want %p closed", job.miss, job.miss.err, m)
		}
	default:
		t.Fatal("the try in flight was not failed over at stop")
	}
	if _, err := cr.c.Write([]byte("q")); err == nil {
		t.Error("the carrier's socket is still open after stop")
	}
	other, _ := carrierTo(t)
	if err := p.cpoll.add(other); err == nil {
		t.Error("a stopped poller took a carrier")
	}
}

// TestCarrierSocketNotPolled: a carrier's socket stays out of Go's poller
// (its descriptor is blocking, so os.NewFile does not register it) and
// every read on it still returns at once.
func TestCarrierSocketNotPolled(t *testing.T) {
	cr, _ := carrierTo(t)
	var nb bool
	var ferr error
	cr.c.rc.Control(func(fd uintptr) { nb, ferr = isNonblock(int(fd)) })
	if ferr != nil || nb {
		t.Fatalf("carrier descriptor non-blocking %v (%v), want blocking", nb, ferr)
	}
	if err := cr.c.SetReadDeadline(time.Now()); err == nil {
		t.Error("the carrier's file takes a deadline: it is in Go's poller")
	}
	r := newCarrierRead()
	rd := &carrierReader{p: &Proxy{}, r: r}
	rd.fn = rd.recv
	start := time.Now()
	rd.carrier(cr) // nothing queued: EAGAIN, not a wait
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("reading an empty carrier took %v", d)
	}
}

// carrierTo is a carrier of a bare upstream whose socket is connected to
// a fresh loopback listener, which it returns too.
func carrierTo(t *testing.T) (*carrier, *net.UDPConn) {
	t.Helper()
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := dialCarrier(l.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	u := &upstream{label: "test " + l.LocalAddr().String()}
	return &carrier{u: u, c: c, born: time.Now()}, l
}

// queue registers a miss with query wire (ID first) on cr and queues it
// in b, as carry does with a batch.
func queue(b *upstreamBatch, cr *carrier, wire string) *missFlight {
	m := &missFlight{tryEnd: time.Now().Add(time.Minute)}
	m.uq.wire = []byte(wire)
	cr.u.carrierMu.Lock()
	cr.track(m)
	b.add(cr, m)
	cr.u.carrierMu.Unlock()
	return m
}

func readN(t *testing.T, l *net.UDPConn, n int) []string {
	t.Helper()
	var got []string
	buf := make([]byte, 512)
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range n {
		k, _, err := l.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, string(buf[:k]))
	}
	return got
}

// TestUpstreamBatchFlush: flush sends every queued query to its own
// carrier's upstream, in order, with queries of two carriers interleaved;
// a query that cannot be sent (a closed socket) fails its try at once
// (the worker gets it, off the carrier's queries in flight, and the
// carrier is retired), and the batch is empty afterwards.
func TestUpstreamBatchFlush(t *testing.T) {
	a, la := carrierTo(t)
	b, lb := carrierTo(t)
	p := &Proxy{slowJobs: make(chan slowJob, 4)}
	var batch upstreamBatch
	queue(&batch, a, "a1")
	queue(&batch, a, "a2")
	queue(&batch, b, "b1")
	queue(&batch, a, "a3")
	p.flush(&batch)
	if got := readN(t, la, 3); !slices.Equal(got, []string{"a1", "a2", "a3"}) {
		t.Errorf("upstream a got %q, want a1 a2 a3", got)
	}
	if got := readN(t, lb, 1); !slices.Equal(got, []string{"b1"}) {
		t.Errorf("upstream b got %q, want b1", got)
	}
	if batch.n != 0 || batch.m[0] != nil || batch.cr[3] != nil {
		t.Errorf("batch not emptied: n=%d", batch.n)
	}
	if len(p.slowJobs) != 0 {
		t.Fatalf("%d tries failed; every query went out", len(p.slowJobs))
	}

	// b's socket closed: both of its queries fail their try, a's goes out.
	b.c.Close()
	m1 := queue(&batch, b, "b2")
	m2 := queue(&batch, b, "b3")
	queue(&batch, a, "a4")
	p.flush(&batch)
	if got := readN(t, la, 1); !slices.Equal(got, []string{"a4"}) {
		t.Errorf("upstream a got %q, want a4", got)
	}
	for _, m := range []*missFlight{m1, m2} {
		select {
		case job := <-p.slowJobs:
			if job.miss != m || job.miss.err == nil || !strings.Contains(job.miss.err.Error(), "write udp") {
				t.Errorf("worker got %p (err %v), want %p failed with a write error", job.miss, job.miss.err, m)
			}
		default:
			t.Fatalf("query %s not failed over to a worker", m.uq.wire)
		}
	}
	if len(b.pending) != 1 || !b.retired { // b1 is still in flight there
		t.Errorf("carrier b: %d in flight, retired %v; want 1 (b1) and retired", len(b.pending), b.retired)
	}
	if a.retired {
		t.Error("carrier a retired though its queries went out")
	}
}

// TestCarrierUnsent: a query that could not be sent comes back to the
// caller only while it is still the carrier's under the ID it was sent
// with; once the poller took it (or it was reused under another ID), it
// is not the caller's to fail.
func TestCarrierUnsent(t *testing.T) {
	cr, _ := carrierTo(t)
	var batch upstreamBatch
	m := queue(&batch, cr, "\x12\x34q")
	if cr.unsent(m, 0x1235) {
		t.Error("unsent took a query reused under another ID")
	}
	if !cr.unsent(m, 0x1234) {
		t.Error("unsent left a query still in flight")
	}
	if len(cr.pending) != 0 || !cr.retired {
		t.Errorf("after unsent: %d in flight, retired %v", len(cr.pending), cr.retired)
	}
	if cr.unsent(m, 0x1234) {
		t.Error("unsent took a query the poller had already taken")
	}
}

// TestCarrierPreparedAhead: once the carrier in use has carried prepareAt
// queries, the next one is made ahead (a fresh port already in the poller),
// and the query that needs a new carrier takes that one; every query is
// answered from the port it went out on, each port carrying at most
// spareMaxUses.
func TestCarrierPreparedAhead(t *testing.T) {
	addr, ports := portCountingUpstream(t)
	p, _ := startProxy(t, testConfig(addr), Options{})
	u := p.st.Load().router.def.ups[0]
	state := func() (cur, next *carrier) {
		u.carrierMu.Lock()
		defer u.carrierMu.Unlock()
		return u.carrier, u.next
	}
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	ask := func(i int) {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("p%d.example.", i), dns.TypeA)
		if r, _, err := c.Exchange(m, proxyAddr(t, p, "udp")); err != nil || len(r.Answer) != 1 {
			t.Fatalf("query %d: %v %v", i, r, err)
		}
	}
	ask(0)
	first, next := state()
	if first == nil || next != nil {
		t.Fatalf("after one query: carrier %p, next %p; want a carrier and none made ahead", first, next)
	}
	for i := 1; i < prepareAt; i++ {
		ask(i)
	}
	// prepare runs after the answers are out: wait for it, bounded.
	deadline := time.Now().Add(3 * time.Second)
	for _, next = state(); next == nil && time.Now().Before(deadline); _, next = state() {
		time.Sleep(time.Millisecond)
	}
	if next == nil || next == first {
		t.Fatalf("after %d queries on one carrier no next carrier was made ahead", prepareAt)
	}
	for i := prepareAt; i <= spareMaxUses; i++ {
		ask(i)
	}
	if cur, _ := state(); cur != next {
		t.Errorf("query %d went out on carrier %p, want the one made ahead (%p)", spareMaxUses+1, cur, next)
	}
	if got := ports(); len(got) != 2 {
		t.Errorf("%d source ports for %d queries, want 2: %v", len(got), spareMaxUses+1, got)
	}
}

func isPolled(p *Proxy, cr *carrier) bool {
	p.cpoll.mu.Lock()
	defer p.cpoll.mu.Unlock()
	return p.cpoll.crs[cr.c.fd] == cr
}

func isNonblock(fd int) (bool, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	return fl&unix.O_NONBLOCK != 0, err
}
