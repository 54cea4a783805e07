package firewall

import (
	"context"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// tcpServe listens on addr in ns and hands every accepted connection to
// handle on its own goroutine until cleanup, which closes the listener and
// waits for every handler.
func tcpServe(tb testing.TB, ns *netnstest.NS, addr string, handle func(net.Conn)) {
	tb.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed in cleanup
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
}

// tcpEcho echoes every connection on addr in ns until cleanup.
func tcpEcho(t *testing.T, ns *netnstest.NS, addr string) {
	tcpServe(t, ns, addr, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.Copy(c, c)
	})
}

// egressNet is a gateway in full mode masquerading out of hole0 to a sink
// that answers TCP on port 8080 of 198.51.100.80, .81, 203.0.113.99 and
// 2001:db8:1::80, .81.
func egressNet(t *testing.T) (gw, peer, sink *netnstest.NS, f *Firewall, s Spec) {
	gw, peer, sink, wg := gatewaySink(t)
	for _, a := range []string{"198.51.100.80/32", "198.51.100.81/32", "203.0.113.99/32"} {
		sink.Run("ip", "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{"2001:db8:1::80/128", "2001:db8:1::81/128"} {
		sink.Run("ip", "addr", "add", a, "dev", "lo", "nodad")
	}
	sink.Run("ip", "link", "set", "lo", "up")
	tcpEcho(t, sink, "[::]:8080")
	f = nsFirewallIn(t, gw)
	s = testSpec(wg)
	s.FullTunnel, s.Egress = true, "hole0"
	s.EgressAllow = prefixes("203.0.113.99")
	return gw, peer, sink, f, s
}

// refused reports whether a TCP connect was answered by a reset (not a
// timeout, not a success).
func refused(t *testing.T, ns *netnstest.NS, addr string) bool {
	t.Helper()
	err := tcpDial(t, ns, addr, 3*time.Second)
	return err != nil && !isTimeout(err)
}

func TestKernelEgressResolved(t *testing.T) {
	gw, peer, _, f, s := egressNet(t)
	s.EgressMinTTL = 2 * time.Hour
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	peer4, peer6 := netip.MustParseAddr("10.20.0.2"), netip.MustParseAddr("fd20::2")
	dst4, dst6 := netip.MustParseAddr("198.51.100.80"), netip.MustParseAddr("2001:db8:1::80")

	for _, addr := range []string{"198.51.100.80:8080", "[2001:db8:1::80]:8080"} {
		if !refused(t, peer, addr) {
			t.Errorf("TCP %s before any answer: want a reset", addr)
		}
	}
	if _, err := udpExchange(t, peer, "198.51.100.80:5353", 2*time.Second); err == nil || isTimeout(err) {
		t.Errorf("UDP 5353 to an unresolved address: %v, want an ICMP error", err)
	}
	if err := tcpDial(t, peer, "203.0.113.99:8080", 3*time.Second); err != nil {
		t.Errorf("allowlisted address: %v", err)
	}
	cs, err := f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cs[ReasonEgressUnresolved].Packets < 3 {
		t.Errorf("egress_unresolved = %+v, want >= 3", cs[ReasonEgressUnresolved])
	}
	pc, err := f.PeerCounters(peer4, peer6)
	if err != nil {
		t.Fatal(err)
	}
	if pc[ReasonEgressUnresolved].Packets < 3 {
		t.Errorf("per-peer egress_unresolved = %+v, want >= 3", pc[ReasonEgressUnresolved])
	}

	if f.Covered(peer4, peer6, []netip.Addr{dst4, dst6}, time.Minute) {
		t.Fatal("Covered before Learn")
	}
	if err := f.Learn(context.Background(), peer4, peer6, []netip.Addr{dst4, dst6}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if !f.Covered(peer4, peer6, []netip.Addr{dst4, dst6}, time.Minute) {
		t.Error("not Covered after Learn")
	}
	if n := f.LearnedPairs(); n != 2 {
		t.Errorf("LearnedPairs = %d, want 2", n)
	}
	for _, addr := range []string{"198.51.100.80:8080", "[2001:db8:1::80]:8080"} {
		if err := tcpDial(t, peer, addr, 3*time.Second); err != nil {
			t.Errorf("TCP %s after Learn: %v", addr, err)
		}
	}
	for _, addr := range []string{"198.51.100.81:8080", "[2001:db8:1::81]:8080"} {
		if !refused(t, peer, addr) {
			t.Errorf("TCP %s (learned only .80): want a reset", addr)
		}
	}
	// The floor, not the TTL: a minute's answer stays two hours at least
	// (installed for twice that, refreshed by an answer once less is left).
	if out := gw.Run("nft", "list", "set", "inet", s.Table, setLearned4); !strings.Contains(out, "10.20.0.2 . 198.51.100.80 timeout 4h") {
		t.Errorf("learned element without twice the 2h floor:\n%s", out)
	}

	// An established flow survives its pair going away.
	var conn net.Conn
	if err := peer.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", "198.51.100.80:8080", 3*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gw.Run("nft", "flush", "set", "inet", s.Table, setLearned4)
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Errorf("established flow after its pair was removed: %q, %v", buf, err)
	}

	// A re-apply (after the set was flushed, or the whole ruleset) carries
	// the learned pairs over from userspace.
	gw.Run("nft", "flush", "ruleset")
	f.ensure()
	if err := tcpDial(t, peer, "198.51.100.80:8080", 3*time.Second); err != nil {
		t.Errorf("learned pair after flush ruleset and re-apply: %v", err)
	}
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	if err := tcpDial(t, peer, "[2001:db8:1::80]:8080", 3*time.Second); err != nil {
		t.Errorf("learned pair after a second Apply: %v", err)
	}
}

func TestKernelEgressAuditAndInbound(t *testing.T) {
	_, peer, sink, f, s := egressNet(t)
	s.EgressMode = EgressAudit
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	if err := tcpDial(t, peer, "198.51.100.81:8080", 3*time.Second); err != nil {
		t.Errorf("audit: TCP to an unresolved address: %v, want it allowed", err)
	}
	cs, err := f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cs[ReasonEgressUnresolved].Packets != 1 {
		t.Errorf("audit: egress_unresolved = %+v, want the one SYN", cs[ReasonEgressUnresolved])
	}

	// Inbound: the egress side routes the tunnel prefix to the gateway; a
	// new connection toward a peer is dropped, in every mode.
	tcpEcho(t, peer, "10.20.0.2:9090")
	sink.Run("ip", "route", "add", "10.20.0.0/24", "via", "192.0.2.1")
	for _, mode := range []EgressMode{EgressAudit, EgressOpen} {
		s.EgressMode = mode
		if err := f.Apply(s); err != nil {
			t.Fatal(err)
		}
		if err := tcpDial(t, sink, "10.20.0.2:9090", time.Second); err == nil {
			t.Errorf("%s: the egress side opened a connection to a peer", mode)
		}
	}
	cs, err = f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cs[ReasonInboundDropped].Packets == 0 {
		t.Errorf("inbound_dropped = %+v, want > 0", cs[ReasonInboundDropped])
	}
	s.InboundAllow = prefixes("192.0.2.0/24")
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	if err := tcpDial(t, sink, "10.20.0.2:9090", 3*time.Second); err != nil {
		t.Errorf("inbound_allow: %v", err)
	}
}

func TestKernelEgressRestart(t *testing.T) {
	gw, peer, _, f, s := egressNet(t)
	file := filepath.Join(t.TempDir(), "learned")
	f.learnedFile = file
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	peer4 := netip.MustParseAddr("10.20.0.2")
	if err := f.Learn(context.Background(), peer4, netip.Addr{}, []netip.Addr{netip.MustParseAddr("198.51.100.80")}, time.Minute); err != nil {
		t.Fatal(err)
	}
	s.KeepOnStop = true
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	gw.Run("nft", "delete", "table", "inet", s.Table) // as after a reboot

	h := gw.Handle()
	defer h.Close()
	g, err := New(Options{NetNS: int(h), LearnedFile: file})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	s.KeepOnStop = false
	if err := g.Apply(s); err != nil {
		t.Fatal(err)
	}
	if n := g.LearnedPairs(); n != 1 {
		t.Errorf("LearnedPairs after restart = %d, want 1", n)
	}
	if err := tcpDial(t, peer, "198.51.100.80:8080", 3*time.Second); err != nil {
		t.Errorf("learned pair after restart: %v", err)
	}
}

// TestKernelEgressConcurrentLearn: many concurrent Learn calls share
// batches, and each returns only once its pair is in the kernel.
func TestKernelEgressConcurrentLearn(t *testing.T) {
	gw, _, _, f, s := egressNet(t)
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	peer4 := netip.MustParseAddr("10.20.0.2")
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			errs <- f.Learn(context.Background(), peer4, netip.Addr{}, []netip.Addr{dst}, time.Minute)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	out := gw.Run("nft", "list", "set", "inet", s.Table, setLearned4)
	if n := strings.Count(out, "10.20.0.2 . 198.51.100."); n != 200 {
		t.Errorf("%d learned elements in the kernel, want 200", n)
	}
}

// TestKernelEgressEvents: a refused flow is reported with its destination
// and port through NFLOG.
func TestKernelEgressEvents(t *testing.T) {
	_, peer, _, f, s := egressNet(t)
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan EgressEvent, 16)
	errc := make(chan error, 1)
	go func() {
		errc <- f.EgressEvents(ctx, func(ev EgressEvent) {
			select {
			case events <- ev:
			default:
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("EgressEvents: %v", err)
		}
	}()
	// The bind happens on the reader's goroutine: retry the refused dial
	// until an event arrives (bounded).
	deadline := time.After(10 * time.Second)
	for {
		if !refused(t, peer, "198.51.100.81:8443") {
			t.Fatal("TCP to an unresolved address not refused")
		}
		select {
		case ev := <-events:
			want := EgressEvent{Src: netip.MustParseAddr("10.20.0.2"), Dst: netip.MustParseAddr("198.51.100.81"), Proto: "tcp", Port: 8443, Refused: true}
			ev.Time = time.Time{}
			if ev != want {
				t.Errorf("event %+v, want %+v", ev, want)
			}
			return
		case <-deadline:
			t.Fatal("no egress event within 10s")
		case <-time.After(200 * time.Millisecond):
		}
	}
}
