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
	// limiterMergeMin and limiterMergeAge bound how long new sources wait
	// in a shard's pending map before it is merged into the lock-free one:
	// once they are a quarter of it (at least limiterMergeMin), or after
	// limiterMergeAge.
	limiterMergeMin = 8
	limiterMergeAge = int64(time.Second)
)

// bucket is a GCRA token bucket: tat is the theoretical arrival time (unix
// nanoseconds) of the next conforming query. One CAS per query, no lock.
type bucket struct {
	tat atomic.Int64
}

type limiterShard struct {
	m atomic.Pointer[map[netip.Addr]*bucket] // copy-on-write: readers never lock

	mu        sync.Mutex // serializes writers of m; protects pending, lastMerge
	pending   map[netip.Addr]*bucket
	lastMerge int64
	_         [24]byte
}

// limiter is a per-source rate limit, sharded by address. Lookups of known
// peers are lock-free. A new peer waits in its shard's pending map (found
// under the shard's lock) until enough have come, or enough time has
// passed, to copy the shard's map once for all of them: learning n peers
// costs O(n) copies, not O(n²/shards) as one copy per new peer did.
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

// add returns src's bucket, creating it in the pending map, and merges the
// pending map into the lock-free one when it is due (forgetting idle peers
// when the shard is full).
func (s *limiterShard) add(src netip.Addr, now int64) *bucket {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.m.Load()
	if b := old[src]; b != nil {
		return b
	}
	b := s.pending[src]
	if b == nil {
		if s.pending == nil {
			s.pending = map[netip.Addr]*bucket{}
		}
		b = &bucket{}
		s.pending[src] = b
	}
	if len(s.pending) < max(limiterMergeMin, len(old)/4) && now-s.lastMerge < limiterMergeAge {
		return b
	}
	total := len(old) + len(s.pending)
	next := make(map[netip.Addr]*bucket, total)
	for a, ob := range old {
		// A bucket whose tat has passed is full again: it carries no state.
		if total <= limiterShardMax || ob.tat.Load() > now {
			next[a] = ob
		}
	}
	if len(next)+len(s.pending) > limiterShardMax {
		clear(next) // a flood of sources must not grow memory
	}
	for a, pb := range s.pending {
		if len(next) >= limiterShardMax {
			break
		}
		next[a] = pb
	}
	next[src] = b
	s.pending = nil
	s.lastMerge = now
	s.m.Store(&next)
	return b
}

// limitKeyOf is the address src's queries are counted under: its peer's
// (who; nil: none) IPv4 tunnel address, else its IPv6 one, so a dual-stack
// peer's queries over either family share one budget; a source no
// identity knows counts on its own.
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
