package dnsproxy

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// cacheShards is the number of independently locked cache shards (power of 2).
const cacheShards = 64

// cacheEntry is one cached answer in wire form. Everything but ref and gen is
// immutable after insertion, so readers use it without holding a lock.
type cacheEntry struct {
	key     string
	wire    []byte   // ID 0, lower-case question, no OPT record
	ttlOffs []uint16 // offsets of every record's TTL in wire
	stored  int64    // unix nanoseconds when wire's TTLs were current
	expires int64    // unix nanoseconds
	group   string   // label of the group that answered
	zidx    uint32   // stable index of that group's zone (groups.go)
	// xz are the other zones the answer's owner names belong to (a CNAME
	// chain leaving the zone), so a group must see them too; nearly always
	// empty (groups.go).
	xz       []uint32
	counters *groupCounters
	rcode    int
	addrs    []netip.Addr  // the A/AAAA addresses in the answer section, for the AnswerObserver
	addrTTL  time.Duration // the longest TTL among them
	gen      atomic.Uint64 // config generation the entry was last validated against
	ref      atomic.Bool   // CLOCK reference bit
	slot     int32         // index in the shard's ring; guarded by the shard lock
	h        uint64        // the key's hash, set by insert (cache.hash)
}

type cacheShard struct {
	mu   sync.RWMutex  // protects idx, ring, hand
	idx  []cacheSlot   // open addressing, linear probing; a power of 2, at most half full
	ring []*cacheEntry // the entries idx indexes, in CLOCK order
	hand int
	_    [64]byte // keep shards on separate cache lines
}

// cacheSlot is one slot of a shard's index: an entry and its key's hash,
// nil when empty. A lookup that finds the slot of its hash empty reads
// one cache line of idx and nothing else: a miss (which every upstream
// query starts with) touches no entry and no key. Between two queries
// other processes run on the core, so what a query touches is cold: on
// the bench's VM each random page touched added 0.1–0.45 µs to a round
// trip (README, Performance); the Go map this replaces read its header,
// directory, table and group first.
type cacheSlot struct {
	h uint64
	e *cacheEntry
}

// cacheIndexMin is the size a shard's index starts at; it doubles when
// half full.
const cacheIndexMin = 64

// cache is a sharded, bounded wire-format answer cache with CLOCK eviction.
type cache struct {
	seed     maphash.Seed
	shardCap atomic.Int64
	entries  atomic.Int64
	shards   [cacheShards]cacheShard
}

func newCache(size int) *cache {
	c := &cache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].idx = make([]cacheSlot, cacheIndexMin)
	}
	c.resize(size)
	return c
}

// resize sets the capacity; shrinking evicts lazily on later inserts.
func (c *cache) resize(size int) {
	per := int64(0)
	if size > 0 {
		per = int64((size + cacheShards - 1) / cacheShards)
	}
	c.shardCap.Store(per)
}

// hash is key's hash: its low bits choose the shard, the rest the slot.
func (c *cache) hash(key []byte) uint64 { return maphash.Bytes(c.seed, key) }

func (c *cache) shardOf(h uint64) *cacheShard { return &c.shards[h&(cacheShards-1)] }

func (c *cache) shard(key []byte) *cacheShard { return c.shardOf(c.hash(key)) }

// home is the slot where probing for h starts.
func (s *cacheShard) home(h uint64) int { return int(h>>8) & (len(s.idx) - 1) }

// find returns the slot holding key (whose hash is h), or the empty slot
// where probing for it stopped, and whether key is there. The caller
// holds s.mu.
func (s *cacheShard) find(h uint64, key []byte) (int, bool) {
	mask := len(s.idx) - 1
	for i := s.home(h); ; i = (i + 1) & mask {
		sl := &s.idx[i]
		if sl.e == nil {
			return i, false
		}
		if sl.h == h && sl.e.key == string(key) {
			return i, true
		}
	}
}

// add puts e (hash h, not in the index, just appended to the ring) into
// the index, doubling it first when that would make it more than half
// full. The caller holds s.mu for writing.
func (s *cacheShard) add(h uint64, e *cacheEntry) {
	if 2*len(s.ring) > len(s.idx) {
		old := s.idx
		s.idx = make([]cacheSlot, 2*len(old))
		for _, sl := range old {
			if sl.e != nil {
				s.idx[s.free(sl.h)] = sl
			}
		}
	}
	s.idx[s.free(h)] = cacheSlot{h: h, e: e}
}

// free returns the first empty slot from h's home on.
func (s *cacheShard) free(h uint64) int {
	mask := len(s.idx) - 1
	i := s.home(h)
	for s.idx[i].e != nil {
		i = (i + 1) & mask
	}
	return i
}

// remove takes e (hash h) out of the index. Linear probing without
// tombstones: the entries after the hole that probed past it move back
// into it, so every entry stays reachable from its home and lookups
// never grow longer with churn. The caller holds s.mu for writing.
func (s *cacheShard) remove(h uint64, e *cacheEntry) {
	mask := len(s.idx) - 1
	i := s.home(h)
	for s.idx[i].e != e {
		if s.idx[i].e == nil {
			return // not indexed; cannot happen while ring and idx agree
		}
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; s.idx[j].e != nil; j = (j + 1) & mask {
		k := s.home(s.idx[j].h)
		// The entry at j stays when its home lies cyclically in (i, j].
		if (i < j && i < k && k <= j) || (j < i && (i < k || k <= j)) {
			continue
		}
		s.idx[i] = s.idx[j]
		i = j
	}
	s.idx[i] = cacheSlot{}
}

// get returns the live entry for key, or nil. It does not allocate.
func (c *cache) get(key []byte, now int64) *cacheEntry {
	h := c.hash(key)
	s := c.shardOf(h)
	s.mu.RLock()
	var e *cacheEntry
	if i, ok := s.find(h, key); ok {
		e = s.idx[i].e
	}
	s.mu.RUnlock()
	if e == nil || now >= e.expires {
		return nil
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	return e
}

// put inserts e (whose key is set), evicting with CLOCK when the shard is full.
func (c *cache) put(e *cacheEntry) { c.insert(e, 0) }

// cacheSlack is how far putThenTrim lets a shard go over its share.
const cacheSlack = 64

// putThenTrim inserts e like put, except that a full shard takes it (up to
// cacheSlack entries over its share) and the caller evicts afterwards
// with trim, when putThenTrim says the shard is over its share. The miss
// path answers its client in between: an eviction reads a cold entry and
// its index slot, none of it the client's business. e enters marked as
// used, so that the trim after it does not choose e itself (put evicts
// before e is in the shard).
func (c *cache) putThenTrim(e *cacheEntry) (over bool) {
	e.ref.Store(true)
	return c.insert(e, cacheSlack)
}

// trim evicts from key's shard what putThenTrim put over its share, a few
// at a time like put after the cache shrank.
func (c *cache) trim(key string) {
	limit := c.shardCap.Load()
	s := c.shard([]byte(key))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; int64(len(s.ring)) > limit && i < 4; i++ {
		c.evictOne(s)
		c.entries.Add(-1)
	}
}

// insert is put with a shard allowed slack entries over its share; true
// when the shard holds more than its share afterwards.
func (c *cache) insert(e *cacheEntry, slack int64) (over bool) {
	limit := c.shardCap.Load()
	if limit == 0 {
		return false
	}
	key := []byte(e.key) // does not escape: no copy
	h := c.hash(key)
	s := c.shardOf(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.find(h, key); ok {
		old := s.idx[i].e
		e.h, e.slot = h, old.slot
		s.ring[e.slot] = e
		s.idx[i].e = e
		return false
	}
	for i := 0; int64(len(s.ring)) >= limit+slack && i < 4; i++ {
		c.evictOne(s)
		c.entries.Add(-1)
	}
	if int64(len(s.ring)) >= limit+slack {
		return true
	}
	e.h = h
	e.slot = int32(len(s.ring))
	s.ring = append(s.ring, e)
	s.add(h, e)
	c.entries.Add(1)
	return int64(len(s.ring)) > limit
}

// evictOne removes one entry of s chosen by the CLOCK hand. The caller
// holds s.mu and guarantees the ring is not empty.
func (c *cache) evictOne(s *cacheShard) {
	n := len(s.ring)
	for i := 0; i < 2*n; i++ {
		if s.hand >= len(s.ring) {
			s.hand = 0
		}
		e := s.ring[s.hand]
		if e.ref.Load() {
			e.ref.Store(false)
			s.hand++
			continue
		}
		break
	}
	if s.hand >= len(s.ring) {
		s.hand = 0
	}
	victim := s.ring[s.hand]
	last := len(s.ring) - 1
	s.ring[s.hand] = s.ring[last]
	s.ring[s.hand].slot = int32(s.hand)
	s.ring[last] = nil
	s.ring = s.ring[:last]
	s.remove(victim.h, victim)
}

// len returns the number of cached entries.
func (c *cache) len() int { return int(c.entries.Load()) }

// cacheTTL decides whether and how long msg may be cached (RFC 2308 for
// negative answers). It returns 0 for "do not cache".
func cacheTTL(msg *dns.Msg, maxTTL, servfailTTL time.Duration) time.Duration {
	if msg.Truncated {
		return 0
	}
	switch msg.Rcode {
	case dns.RcodeServerFailure:
		return servfailTTL
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return 0
	}
	if msg.Rcode == dns.RcodeSuccess && len(msg.Answer) > 0 {
		ttl := uint32(1<<31 - 1)
		for _, sec := range [][]dns.RR{msg.Answer, msg.Ns, msg.Extra} {
			for _, rr := range sec {
				if rr.Header().Rrtype == dns.TypeOPT {
					continue
				}
				ttl = min(ttl, rr.Header().Ttl)
			}
		}
		return min(time.Duration(ttl)*time.Second, maxTTL)
	}
	// NXDOMAIN or NODATA: the SOA in the authority section bounds the TTL.
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second, maxTTL)
		}
	}
	return 0
}

// clampNegativeSOA lowers the TTL of the SOA in a negative answer to the
// SOA minimum (RFC 2308 section 5), so clients cache it no longer than we do.
func clampNegativeSOA(msg *dns.Msg) {
	if len(msg.Answer) > 0 || (msg.Rcode != dns.RcodeSuccess && msg.Rcode != dns.RcodeNameError) {
		return
	}
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok && soa.Hdr.Ttl > soa.Minttl {
			soa.Hdr.Ttl = soa.Minttl
		}
	}
}

// newCacheEntryWire is newCacheEntry from raw, the bytes msg was unpacked
// from (which it takes over and rewrites in place, see cacheWire): no copy
// and no pack of msg. The entry keeps the upstream's name compression.
// false when raw has a shape cacheWire leaves to newCacheEntry.
func newCacheEntryWire(key string, raw []byte, msg *dns.Msg, ttl time.Duration, now int64, g *group) (*cacheEntry, bool) {
	if msg.Rcode > 0xF || msg.Truncated { // an extended rcode lives in the OPT record cacheWire drops
		return nil, false
	}
	addrs, addrTTL := answerAddrs(msg.Answer)
	return rawEntry(key, raw, ttl, now, g, msg.Rcode, addrs, addrTTL)
}

// rawEntry is the entry of an upstream answer's bytes raw (taken over and
// rewritten by cacheWire) with rcode and addresses addrs (their longest
// TTL addrTTL), cached for ttl from now: false for a shape cacheWire
// leaves alone.
func rawEntry(key string, raw []byte, ttl time.Duration, now int64, g *group, rcode int, addrs []netip.Addr, addrTTL time.Duration) (*cacheEntry, bool) {
	wire, offs, ok := cacheWire(raw, uint32(ttl/time.Second))
	if !ok {
		return nil, false
	}
	return wireEntry(key, wire, offs, ttl, now, g, rcode, addrs, addrTTL), true
}

// newCacheEntry packs msg for the cache: ID 0, lower-case question, no OPT,
// every TTL capped to ttl (and the SOA of a negative answer to its minimum).
func newCacheEntry(key string, msg *dns.Msg, ttl time.Duration, now int64, g *group) (*cacheEntry, bool) {
	m := msg.Copy()
	m.Id = 0
	m.Truncated = false
	m.Question[0].Name = lowerASCII(m.Question[0].Name)
	secs := uint32(ttl / time.Second)
	strip := func(rrs []dns.RR) []dns.RR {
		out := rrs[:0]
		for _, rr := range rrs {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			if rr.Header().Ttl > secs {
				rr.Header().Ttl = secs
			}
			out = append(out, rr)
		}
		return out
	}
	m.Answer, m.Ns, m.Extra = strip(m.Answer), strip(m.Ns), strip(m.Extra)
	wire, err := m.Pack()
	if err != nil {
		return nil, false
	}
	offs, ok := ttlOffsets(wire)
	if !ok {
		return nil, false
	}
	addrs, addrTTL := answerAddrs(m.Answer)
	return wireEntry(key, wire, offs, ttl, now, g, m.Rcode, addrs, addrTTL), true
}

// wireEntry is the entry of wire (the cached form, ttlOffs its TTL
// fields) cached for ttl from now; its addresses' TTL is capped to ttl's
// whole seconds.
func wireEntry(key string, wire []byte, offs []uint16, ttl time.Duration, now int64, g *group, rcode int, addrs []netip.Addr, addrTTL time.Duration) *cacheEntry {
	return &cacheEntry{
		addrs:    addrs,
		addrTTL:  min(addrTTL, ttl/time.Second*time.Second),
		key:      key,
		wire:     wire,
		ttlOffs:  offs,
		stored:   now,
		expires:  now + int64(ttl),
		group:    g.label,
		zidx:     g.zidx,
		counters: g.counters,
		rcode:    rcode,
	}
}

// addrTTLAt is the longest TTL of e's addresses as an answer rendered at
// now carries it (writeHit counts down whole seconds): what an observer
// must keep the addresses for from now on.
func (e *cacheEntry) addrTTLAt(now int64) time.Duration {
	elapsed := time.Duration(0)
	if d := now - e.stored; d > 0 {
		elapsed = time.Duration(d) / time.Second * time.Second
	}
	return max(e.addrTTL-elapsed, 0)
}

// writeHit renders e as the answer to query q (whose wire question name,
// in the client's case, is qname) into out (which must
// have room for len(e.wire)+11 bytes): ID and question name as the client
// sent them, RD/CD mirrored, TTLs counted down, our OPT when the client used
// EDNS, TC when larger than the client accepts. It does not allocate.
func writeHit(out []byte, e *cacheEntry, qname []byte, q *query, now int64, ednsMax int, maxSize int) []byte {
	out = append(out[:0], e.wire...)
	binary.BigEndian.PutUint16(out[0:], q.id)
	flags := binary.BigEndian.Uint16(out[2:])
	flags = flags&^(flagRD|flagCD|flagTC) | q.flags&(flagRD|flagCD)
	if !q.do && q.flags&flagAD == 0 {
		flags &^= flagAD
	}
	binary.BigEndian.PutUint16(out[2:], flags)
	copy(out[headerLen:headerLen+q.nameLen], qname)
	elapsed := uint32(0)
	if d := now - e.stored; d > 0 {
		elapsed = uint32(d / int64(time.Second))
	}
	for _, off := range e.ttlOffs {
		ttl := binary.BigEndian.Uint32(e.wire[off:])
		if ttl > elapsed {
			ttl -= elapsed
		} else {
			ttl = 0
		}
		binary.BigEndian.PutUint32(out[off:], ttl)
	}
	if q.edns {
		out = appendOPT(out, ednsMax, q.do)
		binary.BigEndian.PutUint16(out[10:], binary.BigEndian.Uint16(out[10:])+1)
	}
	if len(out) > maxSize {
		out = truncateWire(out, q.questEnd, q.edns, ednsMax, q.do)
	}
	return out
}

// lowerASCII lowercases A-Z only (DNS case folding), allocating only when needed.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
