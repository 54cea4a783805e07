package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
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

// TestUDPListenerBlocksInKernel: a started proxy's listening sockets are
// out of Go's poller (blocking descriptors; the net.UDPConn they came
// from closed), the listeners and, once a miss made a carrier, the
// carrier poller each hold a P of their own (GOMAXPROCS raised by them and
// put back at Close), queries are answered, and Close returns while
// every listener waits in recvmmsg.
func TestUDPListenerBlocksInKernel(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	addr, _ := portCountingUpstream(t)
	p, closed := startClosable(t, testConfig(addr), Options{Registerer: prometheus.NewRegistry()})
	var files int
	for _, ls := range p.listeners {
		for _, c := range ls.udp {
			if _, err := c.LocalAddr(), c.SetReadBuffer(1); !errors.Is(err, net.ErrClosed) {
				t.Errorf("listener %s: its net.UDPConn is still open (%v): the socket is in Go's poller", c.LocalAddr(), err)
			}
		}
		for _, f := range ls.files {
			files++
			rc, err := f.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var nb bool
			var ferr error
			rc.Control(func(fd uintptr) { nb, ferr = isNonblock(int(fd)) })
			if ferr != nil || nb {
				t.Errorf("listener %s: non-blocking %v (%v), want a blocking descriptor", f.Name(), nb, ferr)
			}
		}
	}
	if files == 0 {
		t.Fatal("no listening socket was detached from Go's poller")
	}
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("blocking.example.", dns.TypeA)
	if r, _, err := c.Exchange(m, proxyAddr(t, p, "udp")); err != nil || len(r.Answer) != 1 {
		t.Fatalf("query: %v %v", r, err)
	}
	if got, want := runtime.GOMAXPROCS(0), before+files+1; got != want {
		t.Errorf("GOMAXPROCS %d with %d listeners and the carrier poller running, want %d (%d before)", got, files, want, before)
	}
	time.Sleep(20 * time.Millisecond) // every listener back in recvmmsg
	closeWithin(t, p, closed)
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("GOMAXPROCS %d after Close, want %d back", got, before)
	}
}

// TestUDPWaitModes: with either UDPWait the miss path answers across a
// carrier's rotation (more than spareMaxUses misses), a try the upstream
// leaves unanswered fails (SERVFAIL) once its deadline has passed (the
// poller's sweep), GOMAXPROCS is raised only while threads wait in the
// kernel, and Close returns.
func TestUDPWaitModes(t *testing.T) {
	for _, mode := range []struct {
		name string
		wait UDPWait
	}{{"kernel", UDPWaitKernel}, {"poller", UDPWaitPoller}} {
		t.Run(mode.name, func(t *testing.T) { testUDPWait(t, mode.wait) })
	}
}

func testUDPWait(t *testing.T, wait UDPWait) {
	before := runtime.GOMAXPROCS(0)
	up := rawUDP(t, func(q *dns.Msg, send func([]byte)) {
		if strings.HasPrefix(q.Question[0].Name, "slow") {
			return // never answered
		}
		m := new(dns.Msg)
		m.SetReply(q)
		rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 192.0.2.7")
		m.Answer = append(m.Answer, rr)
		b, _ := m.Pack()
		send(b)
	})
	cfg := testConfig(up)
	cfg.UpstreamTimeout = 150 * time.Millisecond
	p, closed := startClosable(t, cfg, Options{Registerer: prometheus.NewRegistry(), UDPWait: wait})
	addr := proxyAddr(t, p, "udp")
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	ask := func(name string) (*dns.Msg, time.Duration) {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		start := time.Now()
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r, time.Since(start)
	}
	for i := range spareMaxUses + 12 {
		if r, _ := ask(fmt.Sprintf("n%d.example.", i)); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
			t.Fatalf("miss %d: %v", i, r)
		}
	}
	r, took := ask("slow.example.")
	if r.Rcode != dns.RcodeServerFailure || took < cfg.UpstreamTimeout || took > 8*cfg.UpstreamTimeout {
		t.Errorf("unanswered try: %s after %v, want SERVFAIL once the %v timeout has passed (and well before 8 times that)",
			dns.RcodeToString[r.Rcode], took, cfg.UpstreamTimeout)
	}
	var files int
	for _, ls := range p.listeners {
		files += len(ls.files)
	}
	procs := runtime.GOMAXPROCS(0)
	switch {
	case wait == UDPWaitKernel && (files == 0 || procs != before+files+1):
		t.Errorf("kernel: %d detached listeners, GOMAXPROCS %d (from %d), want detached listeners and one P more for each and the poller", files, procs, before)
	case wait == UDPWaitPoller && (files != 0 || procs != before):
		t.Errorf("poller: %d detached listeners, GOMAXPROCS %d (from %d), want none and GOMAXPROCS unchanged", files, procs, before)
	}
	closeWithin(t, p, closed)
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("GOMAXPROCS %d after Close, want %d", got, before)
	}
}

// closeWithin closes p, failing the test if Close takes over 5 s (a
// listener blocked in recvmmsg that was not woken); *closed says it
// returned, so that a cleanup does not call it again.
func closeWithin(t *testing.T, p *Proxy, closed *bool) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		*closed = true
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: a listener blocked in recvmmsg was not woken")
	}
}

// startClosable starts a proxy that the test closes itself (closeWithin);
// the cleanup closes it only if the test did not get that far.
func startClosable(t *testing.T, cfg Config, opts Options) (*Proxy, *bool) {
	t.Helper()
	p, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	closed := new(bool)
	t.Cleanup(func() {
		if !*closed {
			p.Close()
		}
	})
	return p, closed
}
