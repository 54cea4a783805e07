package dnsproxy

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	limiterShards = 64
	// limiterShardMax bounds the peers one shard remembers; idle ones are
	// forgotten when it is reached.
	limiterShardMax = 4096
)

// bucket is a GCRA token bucket: tat is the theoretical arrival time (unix
// nanoseconds) of the next conforming query. One CAS per query, no lock.
type bucket struct {
	tat atomic.Int64
}

type limiterShard struct {
	mu sync.Mutex                             // serializes writers of m
	m  atomic.Pointer[map[netip.Addr]*bucket] // copy-on-write: readers never lock
	_  [48]byte
}

// limiter is a per-source rate limit, sharded by address. Lookups of known
// peers are lock-free; a new peer copies its shard's map (peers are the
// tunnel's devices, so this is rare and bounded).
type limiter struct {
	interval atomic.Int64 // nanoseconds per query; 0 = unlimited
	tol      atomic.Int64 // burst * interval
	shards   [limiterShards]limiterShard
}

func newLimiter(qps, burst int) *limiter {
	l := &limiter{}
	for i := range l.shards {
		m := map[netip.Addr]*bucket{}
		l.shards[i].m.Store(&m)
	}
	l.set(qps, burst)
	return l
}

func (l *limiter) set(qps, burst int) {
	if qps <= 0 {
		l.interval.Store(0)
		return
	}
	iv := max(int64(time.Second)/int64(qps), 1)
	l.tol.Store(iv * int64(max(burst, qps)))
	l.interval.Store(iv)
}

// allow reports whether src may send one more query at now (unix nanoseconds).
func (l *limiter) allow(src netip.Addr, now int64) bool {
	iv := l.interval.Load()
	if iv == 0 {
		return true
	}
	tol := l.tol.Load()
	s := &l.shards[addrHash(src)&(limiterShards-1)]
	b := (*s.m.Load())[src]
	if b == nil {
		b = s.add(src, now)
	}
	for range 16 {
		tat := b.tat.Load()
		next := max(tat, now) + iv
		if next-now > tol {
			return false
		}
		if b.tat.CompareAndSwap(tat, next) {
			return true
		}
	}
	return false
}

// add returns src's bucket, creating it (and forgetting idle peers when the
// shard is full).
func (s *limiterShard) add(src netip.Addr, now int64) *bucket {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.m.Load()
	if b := old[src]; b != nil {
		return b
	}
	next := make(map[netip.Addr]*bucket, len(old)+1)
	for a, b := range old {
		// A bucket whose tat has passed is full again: it carries no state.
		if len(old) < limiterShardMax || b.tat.Load() > now {
			next[a] = b
		}
	}
	if len(next) >= limiterShardMax {
		clear(next) // a flood of sources must not grow memory
	}
	b := &bucket{}
	next[src] = b
	s.m.Store(&next)
	return b
}

// limitKey is the address src's queries are counted under: its peer's
// IPv4 tunnel address (else its IPv6 one), so a dual-stack peer's queries
// over either family share one budget; a source no identity knows counts
// on its own.
func (p *Proxy) limitKey(src netip.Addr) netip.Addr {
	return limitKeyOf(src, p.identify(src))
}

// limitKeyOf is limitKey for a source whose peer (nil: none) is known.
func limitKeyOf(src netip.Addr, who *Peer) netip.Addr {
	if who != nil {
		if who.V4.IsValid() {
			return who.V4
		}
		if who.V6.IsValid() {
			return who.V6
		}
	}
	return src
}

// addrHash mixes the 16 bytes of a into a shard index source.
func addrHash(a netip.Addr) uint64 {
	b := a.As16()
	h := binary.LittleEndian.Uint64(b[:8])*0x9E3779B97F4A7C15 ^ binary.LittleEndian.Uint64(b[8:])
	h ^= h >> 29
	h *= 0xBF58476D1CE4E5B9
	return h ^ h>>32
}

// inflight caps concurrent upstream queries.
type inflight struct {
	n   atomic.Int64
	max atomic.Int64 // 0 = unlimited
}

func (f *inflight) acquire() bool {
	m := f.max.Load()
	if n := f.n.Add(1); m > 0 && n > m {
		f.n.Add(-1)
		return false
	}
	return true
}

func (f *inflight) release() { f.n.Add(-1) }
