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
)

// TestCarrierRearmsAfterWake: once a carrier's reader has woken on a
// passed deadline with no try late (here: nothing in flight), arm leaves
// the socket without a deadline, so the next read waits for an answer.
// Before, arm took the socket's passed deadline for "none" and left it:
// every read failed at once and the reader spun until the next query.
func TestCarrierRearmsAfterWake(t *testing.T) {
	cr, l := carrierTo(t)
	u, sock := cr.u, cr.c
	u.carriers.carriers = map[*carrier]struct{}{cr: {}}
	if _, err := sock.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, from, err := l.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}

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

// carrierTo is a carrier of a bare upstream whose socket is connected to
// a fresh loopback listener, which it returns too.
func carrierTo(t *testing.T) (*carrier, *net.UDPConn) {
	t.Helper()
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := dialUDP(l.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	u := &upstream{label: "test " + l.LocalAddr().String()}
	return &carrier{u: u, c: c.(*upstreamSocket), born: time.Now()}, l
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
// with; once the reader took it (or it was reused under another ID), it
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
		t.Error("unsent took a query the reader had already taken")
	}
}

// TestCarrierDeadlineKept: the read deadline moves only when a try needs
// an earlier one, or when it has passed: not for every query and answer
// (each move is a runtime timer operation on the miss path).
func TestCarrierDeadlineKept(t *testing.T) {
	cr, _ := carrierTo(t)
	u := cr.u
	now := time.Now()
	try := func(d time.Duration) *missFlight { return &missFlight{tryEnd: now.Add(d)} }
	locked := func(f func()) {
		u.carrierMu.Lock()
		defer u.carrierMu.Unlock()
		f()
	}
	m1, m2, m3 := try(time.Minute), try(2*time.Minute), try(30*time.Second)
	locked(func() { cr.track(m1) })
	if !cr.deadline.Equal(m1.tryEnd) {
		t.Fatalf("deadline %v after the first try, want its %v", cr.deadline, m1.tryEnd)
	}
	locked(func() { cr.track(m2) })
	if !cr.deadline.Equal(m1.tryEnd) {
		t.Errorf("a later try moved the deadline to %v", cr.deadline)
	}
	locked(func() { cr.drop(m1); cr.drop(m2) })
	if !cr.arm() || !cr.deadline.Equal(m1.tryEnd) {
		t.Errorf("with nothing in flight, arm moved a deadline still ahead to %v", cr.deadline)
	}
	locked(func() { cr.track(m3) })
	if !cr.deadline.Equal(m3.tryEnd) {
		t.Errorf("deadline %v, want the earlier try's %v", cr.deadline, m3.tryEnd)
	}
	// Passed (the reader woke on it): arm sets the earliest try's, or
	// none when nothing is in flight.
	locked(func() { cr.deadline = time.Unix(1, 0); cr.track(m2) })
	if !cr.deadline.Equal(time.Unix(1, 0)) {
		t.Errorf("a try moved a passed deadline (the reader's to re-arm) to %v", cr.deadline)
	}
	if !cr.arm() || !cr.deadline.Equal(m3.tryEnd) {
		t.Errorf("arm after a passed deadline: %v, want %v", cr.deadline, m3.tryEnd)
	}
	locked(func() { cr.drop(m2); cr.drop(m3); cr.deadline = time.Unix(1, 0) })
	if !cr.arm() || !cr.deadline.IsZero() {
		t.Errorf("arm with nothing in flight after a passed deadline: %v, want none", cr.deadline)
	}
}

// TestCarrierPreparedAhead: once the carrier in use has carried prepareAt
// queries, the next one is made ahead (a reader waiting on a fresh port),
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
