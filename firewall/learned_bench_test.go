package firewall

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// benchPairs fills f's learned map with n pairs across peers peers (the
// table writes them on the next Apply).
func benchPairs(f *Firewall, n, peers int) {
	exp := time.Now().Add(2 * DefaultEgressMinTTL).UnixNano() // as Learn installs them
	f.learn.mu.Lock()
	defer f.learn.mu.Unlock()
	for i := range n {
		p := netip.AddrFrom4([4]byte{10, 20, byte(i % peers >> 8), byte(i % peers)})
		d := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if i >= 1<<16 {
			d = netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		}
		f.learn.pairs[pair{p, d}] = exp
	}
}

// percentiles reports the p50 and p99 of ds in microseconds.
func percentiles(b *testing.B, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	at := func(q float64) float64 { return float64(ds[int(q*float64(len(ds)-1))]) / 1e3 }
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}

// BenchmarkLearn is the time from an answer's addresses handed to the
// firewall to the kernel's ack of the new pair (what an answer waits for),
// one answer at a time and 16 at once (they share batches), with 100,000
// pairs already learned.
func BenchmarkLearn(b *testing.B) {
	for _, par := range []int{1, 16} {
		b.Run(map[int]string{1: "serial", 16: "concurrent16"}[par], func(b *testing.B) {
			_, f := nsFirewall(b)
			s := testSpec("wg0")
			s.EgressMode = EgressResolved
			benchPairs(f, 100000, 1000)
			if err := f.Apply(s); err != nil {
				b.Fatal(err)
			}
			var mu sync.Mutex
			var lat []time.Duration
			next := make(chan int)
			var wg sync.WaitGroup
			for range par {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range next {
						dst := netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)})
						peer := netip.AddrFrom4([4]byte{10, 21, byte(i >> 16), 1})
						start := time.Now()
						if err := f.Learn(context.Background(), peer, netip.Addr{}, []netip.Addr{dst}, time.Minute); err != nil {
							b.Error(err)
							return
						}
						d := time.Since(start)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				}()
			}
			b.ResetTimer()
			i := 0
			for b.Loop() {
				next <- i
				i++
			}
			close(next)
			wg.Wait()
			b.StopTimer()
			percentiles(b, lat)
		})
	}
}

// BenchmarkApplyLearned is one table write carrying 100,000 learned pairs
// of 1,000 peers (a reload or a re-apply after `nft flush ruleset`).
func BenchmarkApplyLearned(b *testing.B) {
	_, f := nsFirewall(b)
	s := testSpec("wg0")
	s.EgressMode = EgressResolved
	benchPairs(f, 100000, 1000)
	for b.Loop() {
		if err := f.Apply(s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCovered is the fast path's check with 100,000 pairs learned.
func BenchmarkCovered(b *testing.B) {
	f, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	benchPairs(f, 100000, 1000)
	f.gating.Store(true)
	peer := netip.AddrFrom4([4]byte{10, 20, 0, 7})
	dsts := []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 0, 7})}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !f.Covered(peer, netip.Addr{}, dsts, time.Minute) {
				b.Fatal("not covered")
			}
		}
	})
}

// TestCoveredZeroAllocs: the fast path's check allocates nothing.
func TestCoveredZeroAllocs(t *testing.T) {
	f, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	benchPairs(f, 1000, 10)
	f.gating.Store(true)
	peer, dst := netip.AddrFrom4([4]byte{10, 20, 0, 7}), netip.AddrFrom4([4]byte{198, 18, 0, 7})
	dsts := []netip.Addr{dst}
	if !f.Covered(peer, netip.Addr{}, dsts, time.Minute) {
		t.Fatal("not covered")
	}
	if n := testing.AllocsPerRun(1000, func() { f.Covered(peer, netip.Addr{}, dsts, time.Minute) }); n != 0 {
		t.Errorf("Covered allocates %v", n)
	}
}

// tcpSink discards every connection's data on addr in ns until cleanup.
func tcpSink(b *testing.B, ns *netnstest.NS, addr string) {
	tcpServe(b, ns, addr, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
}

// BenchmarkForward is peer traffic forwarded through the gateway (full
// mode, masquerade) with the egress gate open and with egress: resolved and
// 100,000 learned pairs of 1,000 peers (plus the one the benchmark uses):
// new connections (each one a lookup in the learned set) and bulk
// throughput of one connection (established packets return at the gate's
// first rule). Over veth, not WireGuard: the figure is the table's cost.
func BenchmarkForward(b *testing.B) {
	for _, variant := range []string{"open", "learned100k"} {
		b.Run(variant, func(b *testing.B) {
			gw, peer, sink, wg := gatewaySink(b)
			_ = gw
			sink.Run("ip", "addr", "add", "198.51.100.80/32", "dev", "lo")
			sink.Run("ip", "link", "set", "lo", "up")
			tcpSink(b, sink, "198.51.100.80:9000")
			f := nsFirewallIn(b, gw)
			s := testSpec(wg)
			s.FullTunnel, s.Egress, s.EgressMode = true, "hole0", EgressOpen
			if variant != "open" {
				s.EgressMode = EgressResolved
				benchPairs(f, 100000, 1000)
			}
			if err := f.Apply(s); err != nil {
				b.Fatal(err)
			}
			if variant != "open" {
				if err := f.Learn(context.Background(), netip.MustParseAddr("10.20.0.2"), netip.Addr{},
					[]netip.Addr{netip.MustParseAddr("198.51.100.80")}, time.Minute); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("connect", func(b *testing.B) {
				if err := peer.Do(func() error {
					for b.Loop() {
						c, err := net.DialTimeout("tcp", "198.51.100.80:9000", 2*time.Second)
						if err != nil {
							return err
						}
						c.Close()
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			})
			b.Run("throughput", func(b *testing.B) {
				const chunk = 1 << 20
				buf := make([]byte, 64<<10)
				b.SetBytes(chunk)
				if err := peer.Do(func() error {
					c, err := net.DialTimeout("tcp", "198.51.100.80:9000", 2*time.Second)
					if err != nil {
						return err
					}
					defer c.Close()
					for b.Loop() {
						for sent := 0; sent < chunk; sent += len(buf) {
							if _, err := c.Write(buf); err != nil {
								return err
							}
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// TestLearnedLifetime: an answer leaves its pair covered for at least
// max(TTL, floor), so an answer right after Learn needs no kernel update,
// and one once less than that is left does.
func TestLearnedLifetime(t *testing.T) {
	f, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.gating.Store(true)
	f.minTTL.Store(int64(time.Hour))
	for _, tc := range []struct {
		ttl, install, least time.Duration
	}{
		{time.Minute, 2 * time.Hour, time.Hour},       // the floor
		{3 * time.Hour, 6 * time.Hour, 3 * time.Hour}, // a TTL above it
		{0, 2 * time.Hour, time.Hour},
	} {
		install, least := f.need(tc.ttl)
		if install != tc.install || least != tc.least {
			t.Errorf("ttl %v: install %v least %v, want %v %v", tc.ttl, install, least, tc.install, tc.least)
		}
		peer, dst := netip.MustParseAddr("10.20.0.2"), netip.MustParseAddr("192.0.2.9")
		now := time.Now().UnixNano()
		f.learn.mu.Lock()
		f.learn.pairs[pair{peer, dst}] = now + int64(install) - int64(time.Second) // just learned
		f.learn.mu.Unlock()
		if !f.Covered(peer, netip.Addr{}, []netip.Addr{dst}, tc.ttl) {
			t.Errorf("ttl %v: not covered right after learning", tc.ttl)
		}
		f.learn.mu.Lock()
		f.learn.pairs[pair{peer, dst}] = now + int64(least) - int64(time.Second) // aged
		f.learn.mu.Unlock()
		if f.Covered(peer, netip.Addr{}, []netip.Addr{dst}, tc.ttl) {
			t.Errorf("ttl %v: covered with less than %v left", tc.ttl, least)
		}
		// The other family has no peer address: nothing to cover.
		if !f.Covered(peer, netip.Addr{}, []netip.Addr{netip.MustParseAddr("2001:db8::9")}, tc.ttl) {
			t.Errorf("ttl %v: an IPv6 destination without a peer IPv6 address is not covered", tc.ttl)
		}
	}
	// Expired pairs are swept.
	f.learn.mu.Lock()
	f.learn.pairs[pair{netip.MustParseAddr("10.20.0.3"), netip.MustParseAddr("192.0.2.1")}] = time.Now().Add(-time.Second).UnixNano()
	f.learn.mu.Unlock()
	f.sweepLearned()
	if n := len(f.learn.pairs); n != 1 {
		t.Errorf("%d pairs after sweep, want 1", n)
	}
}
