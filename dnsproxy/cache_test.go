package dnsproxy

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func ttlOf(t *testing.T, rrs []dns.RR) uint32 {
	t.Helper()
	if len(rrs) == 0 {
		t.Fatalf("no records")
	}
	return rrs[0].Header().Ttl
}

func TestCacheTTLCountdown(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	clock := newClock()
	p, _ := startProxy(t, testConfig(up.addr), Options{Now: clock.Now})
	r := ask(t, p, "udp", "www.example.com.", dns.TypeA, 1232)
	if got := ttlOf(t, r.Answer); got != 300 {
		t.Fatalf("first answer TTL %d, want 300", got)
	}
	clock.Advance(100 * time.Second)
	for _, network := range []string{"udp", "tcp"} {
		r = ask(t, p, network, "www.example.com.", dns.TypeA, 1232)
		if got := ttlOf(t, r.Answer); got != 200 {
			t.Errorf("%s: cached TTL %d after 100s, want 200", network, got)
		}
		if firstA(t, r) != "10.30.0.53" {
			t.Errorf("%s: wrong cached answer %v", network, r)
		}
	}
	if n := up.count("www.example.com."); n != 1 {
		t.Errorf("upstream saw %d queries, want 1", n)
	}
	clock.Advance(201 * time.Second)
	r = ask(t, p, "udp", "www.example.com.", dns.TypeA, 1232)
	if got := ttlOf(t, r.Answer); got != 300 || up.count("www.example.com.") != 2 {
		t.Errorf("after expiry: TTL %d, upstream queries %d; want 300 and 2", got, up.count("www.example.com."))
	}
	st := p.Stats()
	if st.CacheHits != 2 || st.CacheMisses != 2 || st.CacheEntries != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestCacheMaxTTL(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 86400*7))
	cfg := testConfig(up.addr)
	cfg.Cache.MaxTTL = time.Hour
	p, _ := startProxy(t, cfg, Options{})
	ask(t, p, "udp", "a.example.", dns.TypeA, 0)
	r := ask(t, p, "udp", "a.example.", dns.TypeA, 0)
	if got := ttlOf(t, r.Answer); got > 3600 {
		t.Errorf("TTL %d above MaxTTL", got)
	}
}

// negative answers: NXDOMAIN and NODATA with an SOA are cached for
// min(SOA TTL, SOA minimum); without an SOA they are not cached.
func TestNegativeCache(t *testing.T) {
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		name := r.Question[0].Name
		switch name {
		case "nx.example.":
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{mustRR("example. 3600 IN SOA ns.example. host.example. 1 7200 900 1209600 30")}
		case "nodata.example.":
			m.Ns = []dns.RR{mustRR("example. 20 IN SOA ns.example. host.example. 1 7200 900 1209600 600")}
		case "nosoa.example.":
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	clock := newClock()
	p, _ := startProxy(t, testConfig(up.addr), Options{Now: clock.Now})
	for _, tc := range []struct {
		name  string
		rcode int
		ttl   uint32
	}{{"nx.example.", dns.RcodeNameError, 30}, {"nodata.example.", dns.RcodeSuccess, 20}} {
		r := ask(t, p, "udp", tc.name, dns.TypeA, 1232)
		if r.Rcode != tc.rcode || ttlOf(t, r.Ns) > tc.ttl {
			t.Errorf("%s: %v", tc.name, r)
		}
		clock.Advance(5 * time.Second)
		r = ask(t, p, "udp", tc.name, dns.TypeA, 1232)
		if r.Rcode != tc.rcode || up.count(tc.name) != 1 {
			t.Errorf("%s: not served from cache (upstream %d)", tc.name, up.count(tc.name))
		}
		if got := ttlOf(t, r.Ns); got != tc.ttl-5 {
			t.Errorf("%s: SOA TTL %d, want %d", tc.name, got, tc.ttl-5)
		}
		clock.Advance(time.Duration(tc.ttl) * time.Second)
		ask(t, p, "udp", tc.name, dns.TypeA, 1232)
		if up.count(tc.name) != 2 {
			t.Errorf("%s: not refreshed after negative TTL", tc.name)
		}
	}
	ask(t, p, "udp", "nosoa.example.", dns.TypeA, 0)
	ask(t, p, "udp", "nosoa.example.", dns.TypeA, 0)
	if n := up.count("nosoa.example."); n != 2 {
		t.Errorf("NXDOMAIN without SOA cached (upstream saw %d)", n)
	}
}

func TestServfailCaching(t *testing.T) {
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		w.WriteMsg(m)
	})
	clock := newClock()
	cfg := testConfig(up.addr)
	p, _ := startProxy(t, cfg, Options{Now: clock.Now})
	for range 2 {
		if r := ask(t, p, "udp", "sf.example.", dns.TypeA, 0); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode %d", r.Rcode)
		}
	}
	if n := up.count("sf.example."); n != 2 {
		t.Errorf("SERVFAIL cached by default (upstream saw %d)", n)
	}
	cfg.Cache.ServfailTTL = 5 * time.Second
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	ask(t, p, "udp", "sf2.example.", dns.TypeA, 0)
	r := ask(t, p, "udp", "sf2.example.", dns.TypeA, 0)
	if r.Rcode != dns.RcodeServerFailure || up.count("sf2.example.") != 1 {
		t.Errorf("ServfailTTL: rcode %d, upstream %d", r.Rcode, up.count("sf2.example."))
	}
	clock.Advance(6 * time.Second)
	ask(t, p, "udp", "sf2.example.", dns.TypeA, 0)
	if up.count("sf2.example.") != 2 {
		t.Errorf("SERVFAIL kept past ServfailTTL")
	}
}

func TestTruncatedNotCached(t *testing.T) {
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Truncated = true
		m.Answer = []dns.RR{mustRR("%s 300 IN A 10.30.0.53", r.Question[0].Name)}
		w.WriteMsg(m)
	})
	p, _ := startProxy(t, testConfig("tcp://"+up.addr), Options{})
	ask(t, p, "udp", "tc.example.", dns.TypeA, 1232)
	ask(t, p, "udp", "tc.example.", dns.TypeA, 1232)
	if n := up.count("tc.example."); n != 2 {
		t.Errorf("TC answer cached (upstream saw %d)", n)
	}
}

// TestCacheKey: the key folds case but separates DO and CD.
func TestCacheKey(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	ask(t, p, "udp", "Key.Example.", dns.TypeA, 1232)
	ask(t, p, "udp", "kEY.example.", dns.TypeA, 1232)
	ask(t, p, "tcp", "KEY.EXAMPLE.", dns.TypeA, 1232)
	if n := up.count("key.example."); n != 1 {
		t.Errorf("case variants: upstream saw %d, want 1", n)
	}
	do := new(dns.Msg)
	do.SetQuestion("key.example.", dns.TypeA)
	do.SetEdns0(1232, true)
	if r := askMsg(t, p, "udp", do); !r.IsEdns0().Do() {
		t.Errorf("DO bit not mirrored")
	}
	askMsg(t, p, "udp", do)
	if n := up.count("key.example."); n != 2 {
		t.Errorf("DO: upstream saw %d, want 2", n)
	}
	cd := new(dns.Msg)
	cd.SetQuestion("key.example.", dns.TypeA)
	cd.CheckingDisabled = true
	if r := askMsg(t, p, "udp", cd); !r.CheckingDisabled {
		t.Errorf("CD not mirrored")
	}
	askMsg(t, p, "udp", cd)
	if n := up.count("key.example."); n != 3 {
		t.Errorf("CD: upstream saw %d, want 3", n)
	}
	ask(t, p, "udp", "key.example.", dns.TypeAAAA, 0)
	if n := up.count("key.example."); n != 4 {
		t.Errorf("qtype: upstream saw %d, want 4", n)
	}
}

// TestCoalescing: identical concurrent misses make one upstream query.
func TestCoalescing(t *testing.T) {
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		time.Sleep(200 * time.Millisecond)
		answerA("10.30.0.53", 300)(w, r)
	})
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			network := []string{"udp", "tcp"}[i%2]
			c := &dns.Client{Net: network, Timeout: 3 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion("same.example.", dns.TypeA)
			r, _, err := c.Exchange(m, proxyAddr(t, p, network))
			if err != nil || len(r.Answer) != 1 || r.Id != m.Id {
				t.Errorf("concurrent query: %v %v", r, err)
			}
		}()
	}
	wg.Wait()
	if n := up.count("same.example."); n != 1 {
		t.Errorf("upstream saw %d queries for 20 concurrent identical ones, want 1", n)
	}
}

func TestCacheEvictionBound(t *testing.T) {
	const size = 256
	c := newCache(size)
	g := &group{label: "default", counters: &groupCounters{}}
	for i := range 5000 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.example.", i), dns.TypeA)
		m.Response = true
		m.Answer = []dns.RR{mustRR("n%d.example. 300 IN A 10.30.0.53", i)}
		e, ok := newCacheEntry(fmt.Sprintf("k%d", i), m, 300*time.Second, 0, g)
		if !ok {
			t.Fatal("newCacheEntry failed")
		}
		c.put(e)
		if i%3 == 0 { // touch some so CLOCK has something to protect
			c.get([]byte(e.key), 1)
		}
	}
	if n := c.len(); n > size || n < size/2 {
		t.Errorf("cache holds %d entries, bound %d", n, size)
	}
	total := 0
	for i := range c.shards {
		total += indexed(&c.shards[i])
		if n := indexed(&c.shards[i]); n != len(c.shards[i].ring) {
			t.Errorf("shard %d: index %d, ring %d", i, n, len(c.shards[i].ring))
		}
	}
	if total != c.len() {
		t.Errorf("entries counter %d, actual %d", c.len(), total)
	}
	c.resize(64)
	for i := range 1000 {
		m := new(dns.Msg)
		m.SetQuestion("x.example.", dns.TypeA)
		m.Response = true
		e, _ := newCacheEntry(fmt.Sprintf("z%d", i), m, 0, 0, g)
		c.put(e)
	}
	if n := c.len(); n > 64 {
		t.Errorf("after shrink: %d entries, bound 64", n)
	}
}

// TestCachePutThenTrim: putThenTrim lets a full shard take an entry
// without evicting (the miss path answers first), within cacheSlack of
// its share; trim then evicts back to the share, and the entries counter
// follows both.
func TestCachePutThenTrim(t *testing.T) {
	const size = 2 * cacheShards // two entries per shard
	c := newCache(size)
	g := &group{label: "default", counters: &groupCounters{}}
	entry := func(key string) *cacheEntry {
		m := new(dns.Msg)
		m.SetQuestion("x.example.", dns.TypeA)
		m.Response = true
		e, ok := newCacheEntry(key, m, time.Minute, 0, g)
		if !ok {
			t.Fatal("newCacheEntry failed")
		}
		return e
	}
	// Keys of one shard, enough to go over its share by more than the slack.
	s0 := c.shard([]byte("k0"))
	var keys []string
	for i := 0; len(keys) < 2+cacheSlack+3; i++ {
		if k := fmt.Sprintf("k%d", i); c.shard([]byte(k)) == s0 {
			keys = append(keys, k)
		}
	}
	shardLen := func() int {
		s0.mu.RLock()
		defer s0.mu.RUnlock()
		if n := indexed(s0); n != len(s0.ring) {
			t.Fatalf("index %d, ring %d", n, len(s0.ring))
		}
		return len(s0.ring)
	}
	if c.putThenTrim(entry(keys[0])) {
		t.Fatal("putThenTrim into an empty shard says it went over its share")
	}
	c.put(entry(keys[1]))
	if !c.putThenTrim(entry(keys[2])) {
		t.Fatal("putThenTrim into a full shard does not say it went over its share")
	}
	if n := shardLen(); n != 3 || c.len() != 3 {
		t.Fatalf("after putThenTrim on a full shard: %d in the shard, counter %d; want 3 (nothing evicted yet)", n, c.len())
	}
	s0.mu.RLock()
	_, in := s0.find(c.hash([]byte(keys[2])), []byte(keys[2]))
	s0.mu.RUnlock()
	if !in {
		t.Fatal("the entry putThenTrim inserted is not there")
	}
	s0.mu.Lock()
	s0.hand = len(s0.ring) - 1 // CLOCK's hand on the new entry's slot
	s0.mu.Unlock()
	c.trim(keys[2])
	if n := shardLen(); n != 2 || c.len() != 2 {
		t.Fatalf("after trim: %d in the shard, counter %d; want 2", n, c.len())
	}
	if c.get([]byte(keys[2]), 1) == nil {
		t.Fatal("trim evicted the entry just inserted, not an older one")
	}
	// Without trims the shard stops at its share plus the slack.
	for _, k := range keys[3:] {
		c.putThenTrim(entry(k))
	}
	if n := shardLen(); n > 2+cacheSlack || c.len() != n {
		t.Fatalf("putThenTrim without trim: %d in the shard (counter %d), want at most %d", n, c.len(), 2+cacheSlack)
	}
	for range cacheSlack {
		c.trim(keys[0])
	}
	if n := shardLen(); n != 2 || c.len() != 2 {
		t.Fatalf("after trims: %d in the shard, counter %d; want 2", n, c.len())
	}
}

// TestCacheIndexRemove: removing from a shard's index keeps every other
// entry reachable from its home slot, also when a cluster of colliding
// homes wraps around the end of the index. Every order of inserting and
// every choice of the removed entry, for entries whose homes crowd the
// last slots of an 8-slot index.
func TestCacheIndexRemove(t *testing.T) {
	homes := []int{5, 6, 7, 7, 0, 6}
	for mask := 1; mask < 1<<len(homes); mask++ {
		var hs []uint64
		for i, home := range homes {
			if mask&(1<<i) != 0 {
				hs = append(hs, uint64(home)<<8|uint64(i)) // distinct hashes, chosen homes
			}
		}
		if len(hs) > 4 { // at most half of 8 slots
			continue
		}
		for victim := range hs {
			s := &cacheShard{idx: make([]cacheSlot, 8)}
			es := make([]*cacheEntry, len(hs))
			for i, h := range hs {
				es[i] = &cacheEntry{key: fmt.Sprintf("k%d", h), h: h}
				s.add(h, es[i])
			}
			s.remove(hs[victim], es[victim])
			if n := indexed(s); n != len(hs)-1 {
				t.Fatalf("homes %v, removing %d: %d indexed, want %d", hs, victim, n, len(hs)-1)
			}
			for i, e := range es {
				at, ok := s.find(e.h, []byte(e.key))
				if i == victim {
					if ok {
						t.Errorf("hashes %x, removed %d: still found", hs, victim)
					}
					continue
				}
				if !ok || s.idx[at].e != e {
					t.Errorf("hashes %x, removed %d: entry %d (home %d) unreachable; index %v", hs, victim, i, s.home(e.h), s.idx)
				}
			}
		}
	}
}

// TestCacheIndexChurn: a small cache under many inserts, replacements,
// trims and lookups keeps its shards' index and ring in agreement, every
// ring entry findable by its key, evicted keys gone, and every index at
// most half full.
func TestCacheIndexChurn(t *testing.T) {
	c := newCache(8 * cacheShards)
	g := &group{label: "default", counters: &groupCounters{}}
	m := new(dns.Msg)
	m.SetQuestion("x.example.", dns.TypeA)
	m.Response = true
	rng := rand.New(rand.NewPCG(1, 2))
	ever := map[string]bool{}
	for i := range 20000 {
		key := fmt.Sprintf("k%d", rng.IntN(3000))
		e, ok := newCacheEntry(key, m, time.Minute, 0, g)
		if !ok {
			t.Fatal("newCacheEntry failed")
		}
		ever[key] = true
		switch i % 3 {
		case 0:
			c.put(e)
		case 1:
			if c.putThenTrim(e) {
				c.trim(key)
			}
		default:
			c.get([]byte(key), 1)
		}
	}
	in := map[string]bool{}
	total := 0
	for i := range c.shards {
		s := &c.shards[i]
		occupied := indexed(s)
		for _, sl := range s.idx {
			if sl.e != nil {
				if int(sl.e.slot) >= len(s.ring) || s.ring[sl.e.slot] != sl.e {
					t.Errorf("shard %d: indexed entry %q not at its ring slot", i, sl.e.key)
				}
			}
		}
		if occupied != len(s.ring) || 2*occupied > len(s.idx) {
			t.Errorf("shard %d: %d occupied slots, ring %d, index size %d", i, occupied, len(s.ring), len(s.idx))
		}
		for _, e := range s.ring {
			if e.h != c.hash([]byte(e.key)) || c.get([]byte(e.key), 1) != e {
				t.Errorf("shard %d: ring entry %q not found by its key", i, e.key)
			}
			in[e.key] = true
		}
		total += len(s.ring)
	}
	if total != c.len() || total > 8*cacheShards+cacheSlack*cacheShards {
		t.Errorf("entries counter %d, ring total %d", c.len(), total)
	}
	for key := range ever {
		if !in[key] && c.get([]byte(key), 1) != nil {
			t.Errorf("evicted key %q still found", key)
		}
	}
}

// BenchmarkCacheLookup: a lookup that misses and one that hits in a cache
// of 100,000 entries, and an insert (evicting once full), keys in random
// order. In a loop the index stays warm in the CPU's caches, which a
// server's lookups between other processes' work do not (README,
// Performance): this is the floor, not what a query pays.
func BenchmarkCacheLookup(b *testing.B) {
	const size = 100000
	c := newCache(2 * size) // shards fill unevenly: room for every key
	g := &group{label: "default", counters: &groupCounters{}}
	m := new(dns.Msg)
	m.SetQuestion("x.example.", dns.TypeA)
	m.Response = true
	keys := make([][]byte, size)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "\x05n%05d\x07example\x00\x00\x01\x00\x01\x00", i)
		e, ok := newCacheEntry(string(keys[i]), m, time.Hour, 0, g)
		if !ok {
			b.Fatal("newCacheEntry failed")
		}
		c.put(e)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	b.Run("miss", func(b *testing.B) {
		absent := make([][]byte, 4096)
		for i := range absent {
			absent[i] = fmt.Appendf(nil, "\x05m%05d\x07example\x00\x00\x01\x00\x01\x00", rng.IntN(size))
		}
		for i := 0; b.Loop(); i++ {
			if c.get(absent[i&4095], 1) != nil {
				b.Fatal("hit")
			}
		}
	})
	b.Run("hit", func(b *testing.B) {
		for b.Loop() {
			if c.get(keys[rng.IntN(size)], 1) == nil {
				b.Fatal("miss")
			}
		}
	})
	b.Run("insert", func(b *testing.B) {
		entries := make([]*cacheEntry, 4096)
		for i := 0; b.Loop(); i++ {
			if i&4095 == 0 {
				b.StopTimer()
				for j := range entries {
					entries[j], _ = newCacheEntry(fmt.Sprintf("\x05i%07d\x07example\x00\x00\x01\x00\x01\x00", i+j), m, time.Hour, 0, g)
				}
				b.StartTimer()
			}
			c.put(entries[i&4095])
		}
	})
}

// indexed counts the occupied slots of s's index.
func indexed(s *cacheShard) int {
	n := 0
	for _, sl := range s.idx {
		if sl.e != nil {
			n++
		}
	}
	return n
}

// TestCacheIndexGrows: shards whose index doubles (several times, from
// cacheIndexMin) still find every entry, and stay at most half full.
func TestCacheIndexGrows(t *testing.T) {
	const n = 150 * cacheShards
	c := newCache(2 * n)
	g := &group{label: "default", counters: &groupCounters{}}
	m := new(dns.Msg)
	m.SetQuestion("x.example.", dns.TypeA)
	m.Response = true
	for i := range n {
		e, ok := newCacheEntry(fmt.Sprintf("g%d", i), m, time.Minute, 0, g)
		if !ok {
			t.Fatal("newCacheEntry failed")
		}
		c.put(e)
	}
	grown := 0
	for i := range c.shards {
		s := &c.shards[i]
		if len(s.idx) >= 4*cacheIndexMin {
			grown++
		}
		if 2*len(s.ring) > len(s.idx) {
			t.Errorf("shard %d: %d entries in an index of %d", i, len(s.ring), len(s.idx))
		}
	}
	if grown == 0 {
		t.Fatalf("no shard's index grew past %d slots", 2*cacheIndexMin)
	}
	for i := range n {
		if c.get(fmt.Appendf(nil, "g%d", i), 1) == nil {
			t.Fatalf("g%d not found after the index grew", i)
		}
	}
}
