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
	// limiterShardMax bounds the buckets one shard remembers; idle buckets
	// are swept when it is reached.
	limiterShardMax = 4096
)

type bucket struct {
	tokens float64
	last   int64 // unix nanoseconds of the last refill
}

type limiterShard struct {
	mu sync.Mutex // protects m
	m  map[netip.Addr]*bucket
	_  [48]byte
}

// limiter is a per-source token bucket table, sharded by address hash.
type limiter struct {
	qps    atomic.Int64 // tokens per second; 0 = unlimited
	burst  atomic.Int64
	shards [limiterShards]limiterShard
}

func newLimiter(qps, burst int) *limiter {
	l := &limiter{}
	for i := range l.shards {
		l.shards[i].m = make(map[netip.Addr]*bucket)
	}
	l.set(qps, burst)
	return l
}

func (l *limiter) set(qps, burst int) {
	l.qps.Store(int64(qps))
	l.burst.Store(int64(max(burst, qps)))
}

// allow takes one token from src's bucket at time now (unix nanoseconds).
func (l *limiter) allow(src netip.Addr, now int64) bool {
	qps := l.qps.Load()
	if qps <= 0 {
		return true
	}
	burst := float64(l.burst.Load())
	s := &l.shards[addrHash(src)&(limiterShards-1)]
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[src]
	if b == nil {
		if len(s.m) >= limiterShardMax {
			s.sweep(now, qps, burst)
		}
		b = &bucket{tokens: burst, last: now}
		s.m[src] = b
	}
	if d := now - b.last; d > 0 {
		b.tokens = min(burst, b.tokens+float64(d)*float64(qps)/float64(time.Second))
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep forgets buckets that have refilled completely (they carry no state).
// If none has, it forgets all of them: a flood of sources must not grow memory.
func (s *limiterShard) sweep(now, qps int64, burst float64) {
	full := time.Duration(burst / float64(qps) * float64(time.Second))
	for a, b := range s.m {
		if time.Duration(now-b.last) >= full {
			delete(s.m, a)
		}
	}
	if len(s.m) >= limiterShardMax {
		clear(s.m)
	}
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

// addrHash mixes the 16 bytes of a into a shard index source.
func addrHash(a netip.Addr) uint64 {
	b := a.As16()
	h := binary.LittleEndian.Uint64(b[:8])*0x9E3779B97F4A7C15 ^ binary.LittleEndian.Uint64(b[8:])
	h ^= h >> 29
	h *= 0xBF58476D1CE4E5B9
	return h ^ h>>32
}
