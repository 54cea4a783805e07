package dnsproxy

import (
	"net/netip"
	"testing"
	"time"
)

// TestLimiterManySources: every one of 20,000 new sources gets its own
// bucket (its burst, then refusals), whether it is still waiting to be
// merged into its shard's map or already there, and a known source keeps
// its state across merges.
func TestLimiterManySources(t *testing.T) {
	const qps, burst = 1, 3
	l := newLimiter(qps, burst)
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC).UnixNano()
	first := netip.MustParseAddr("10.40.0.1")
	for range burst {
		if !l.allow(first, now) {
			t.Fatal("first source refused within its burst")
		}
	}
	a := first.Next()
	for i := range 20000 {
		for k := range burst {
			if !l.allow(a, now) {
				t.Fatalf("source %d refused at query %d of its burst", i, k+1)
			}
		}
		if l.allow(a, now) {
			t.Fatalf("source %d allowed past its burst", i)
		}
		a = a.Next()
	}
	if l.allow(first, now) {
		t.Error("the first source's bucket was lost while others were added")
	}
	if !l.allow(first, now+int64(time.Second)) {
		t.Error("the first source did not refill")
	}
}

// BenchmarkLimiterNewSources is the rate limiter learning 50,000 sources
// that each send one query, as when every peer of a big gateway asks once
// after a start: ns/op is per new source.
func BenchmarkLimiterNewSources(b *testing.B) {
	srcs := make([]netip.Addr, 50000)
	a := netip.MustParseAddr("10.40.0.1")
	for i := range srcs {
		srcs[i] = a
		a = a.Next()
	}
	now := time.Now().UnixNano()
	b.ReportAllocs()
	for i := 0; i < b.N; {
		b.StopTimer()
		l := newLimiter(1<<20, 1<<20)
		b.StartTimer()
		for _, s := range srcs {
			if i >= b.N {
				break
			}
			l.allow(s, now)
			i++
		}
	}
}
