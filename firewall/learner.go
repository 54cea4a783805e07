package firewall

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
)

const (
	// learnBatchMax bounds the requests one netlink batch carries.
	learnBatchMax = 512
	// learnedPersistEvery is how often the learned pairs are written to
	// Options.LearnedFile while the writer runs.
	learnedPersistEvery = 30 * time.Second
	// learnedFileHeader is the first line of the learned pairs file.
	learnedFileHeader = "# sluice learned egress pairs v1: peer destination expires-unix"
)

// pair is one learned (peer address, destination address) of one family.
type pair struct{ peer, dst netip.Addr }

// learnReq is one Learn call waiting for its pairs to be in the kernel.
type learnReq struct {
	pairs []pair
	exp   []int64 // unix nanoseconds, per pair
	done  chan error
}

// learner is the userspace copy of the learned sets: which pairs are in the
// kernel and until when. The kernel expires its elements itself; the map
// drops them on sweep.
type learner struct {
	mu    sync.RWMutex   // protects pairs
	pairs map[pair]int64 // expiry, unix nanoseconds

	reqs  chan *learnReq
	start sync.Once
	wg    sync.WaitGroup // the writer goroutine
}

func newLearner() *learner {
	return &learner{pairs: map[pair]int64{}, reqs: make(chan *learnReq)}
}

// peerFor is the peer's address of dst's family, invalid when it has none.
func peerFor(v4, v6, dst netip.Addr) netip.Addr {
	if dst.Is4() {
		return v4
	}
	return v6
}

// need returns how long a pair answered with ttl is installed for, and
// least, how long it must have left to need no update. Every answer must
// leave the pair in place for at least least = max(ttl, floor); it is
// installed for twice that, so a name answered over and over is sent to the
// kernel again only once per least, not on every answer (a cache hit whose
// pairs are covered stays on the fast path).
func (f *Firewall) need(ttl time.Duration) (need, least time.Duration) {
	least = max(ttl, time.Duration(f.minTTL.Load()))
	return 2 * least, least
}

// covered reports whether p is in the kernel for at least least from now.
func (l *learner) covered(p pair, now int64, least time.Duration) bool {
	l.mu.RLock()
	exp, ok := l.pairs[p]
	l.mu.RUnlock()
	return ok && exp-now >= int64(least)
}

// Covered reports, without blocking or allocating, whether every address in
// dsts is already reachable from the peer (v4 for IPv4 destinations, v6 for
// IPv6; an invalid peer address skips that family) for long enough that an
// answer with ttl needs no update. It is true when egress is not gated.
func (f *Firewall) Covered(v4, v6 netip.Addr, dsts []netip.Addr, ttl time.Duration) bool {
	if !f.gating.Load() {
		return true
	}
	now := time.Now().UnixNano()
	_, least := f.need(ttl)
	for _, d := range dsts {
		peer := peerFor(v4, v6, d)
		if !peer.IsValid() {
			continue
		}
		if !f.learn.covered(pair{peer, d}, now, least) {
			return false
		}
	}
	return true
}

// Learn makes every address in dsts reachable from the peer (as Covered
// pairs them) for at least max(ttl, the floor) and returns once the kernel
// has acknowledged it, so an answer written after Learn returns is never
// followed by a refused first packet. Concurrent calls share one netlink
// batch. It returns nil at once when egress is not gated or every pair is
// covered; ctx bounds the wait (the pairs may still be installed).
func (f *Firewall) Learn(ctx context.Context, v4, v6 netip.Addr, dsts []netip.Addr, ttl time.Duration) error {
	if !f.gating.Load() {
		return nil
	}
	start := time.Now()
	now := start.UnixNano()
	need, least := f.need(ttl)
	req := &learnReq{}
	for _, d := range dsts {
		d = d.Unmap()
		peer := peerFor(v4, v6, d)
		if !peer.IsValid() || f.learn.covered(pair{peer, d}, now, least) {
			continue
		}
		req.pairs = append(req.pairs, pair{peer, d})
		req.exp = append(req.exp, now+int64(need))
	}
	if len(req.pairs) == 0 {
		return nil
	}
	req.done = make(chan error, 1)
	f.learn.start.Do(func() {
		f.learn.wg.Add(1)
		go f.writeLearned()
	})
	select {
	case f.learn.reqs <- req:
	case <-f.stop:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		f.metrics.learnSecs.Observe(time.Since(start).Seconds())
		if err != nil {
			f.metrics.learnErrors.Inc()
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// LearnedPairs returns how many learned pairs are live.
func (f *Firewall) LearnedPairs() int {
	now := time.Now().UnixNano()
	f.learn.mu.RLock()
	defer f.learn.mu.RUnlock()
	n := 0
	for _, exp := range f.learn.pairs {
		if exp > now {
			n++
		}
	}
	return n
}

// writeLearned is the one writer of the learned sets: it takes a request,
// gathers whatever else is waiting, sends all of it in one batch and
// answers every waiter after the kernel's ack. It exits when the firewall
// closes.
func (f *Firewall) writeLearned() {
	defer f.learn.wg.Done()
	persist := time.NewTicker(learnedPersistEvery)
	defer persist.Stop()
	var c *nftables.Conn
	defer func() {
		if c != nil {
			_ = c.CloseLasting() // nothing left to do with it
		}
	}()
	for {
		var batch []*learnReq
		select {
		case <-f.stop:
			return
		case <-persist.C:
			f.sweepLearned()
			if err := f.persistLearned(); err != nil {
				f.log.Warn("persist learned egress pairs", "err", err)
			}
			continue
		case r := <-f.learn.reqs:
			batch = append(batch, r)
		}
	gather:
		for len(batch) < learnBatchMax {
			select {
			case r := <-f.learn.reqs:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		var err error
		if c == nil {
			c, err = f.lastingConn()
		}
		if err == nil {
			err = f.flushLearned(c, batch)
			if err != nil {
				_ = c.CloseLasting() // reopened for the next batch
				c = nil
			}
		}
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (f *Firewall) lastingConn() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if f.netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(f.netns))
	}
	if f.dial != nil {
		opts = []nftables.ConnOption{nftables.WithTestDial(f.dial)}
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	return c, nil
}

// flushLearned adds the batch's pairs to the learned sets in one netlink
// batch and records them once the kernel acknowledged.
func (f *Firewall) flushLearned(c *nftables.Conn, batch []*learnReq) error {
	f.learnMu.Lock()
	defer f.learnMu.Unlock()
	if f.learnTable == "" {
		return fmt.Errorf("learn egress pairs: %w", ErrNotApplied)
	}
	now := time.Now().UnixNano()
	want := map[pair]int64{}
	for _, r := range batch {
		for i, p := range r.pairs {
			want[p] = max(want[p], r.exp[i])
		}
	}
	f.learn.mu.RLock()
	for p, exp := range want {
		if have, ok := f.learn.pairs[p]; ok && have >= exp {
			delete(want, p) // another batch already took it this far
		}
	}
	f.learn.mu.RUnlock()
	if len(want) == 0 {
		return nil
	}
	t := nfTable(f.learnTable)
	var els4, els6 []nftables.SetElement
	for p, exp := range want {
		e := learnedElement(p, exp, now)
		if p.dst.Is4() {
			els4 = append(els4, e)
		} else {
			els6 = append(els6, e)
		}
	}
	for _, x := range []struct {
		name string
		els  []nftables.SetElement
	}{{setLearned4, els4}, {setLearned6, els6}} {
		if len(x.els) == 0 {
			continue
		}
		s := &nftables.Set{Table: t, Name: x.name, HasTimeout: true, Concatenation: true}
		for i := 0; i < len(x.els); i += elementsPerMessage {
			if err := c.SetAddElements(s, x.els[i:min(i+elementsPerMessage, len(x.els))]); err != nil {
				return fmt.Errorf("learn egress pairs: %w", err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("learn egress pairs in table %q: %w", f.learnTable, err)
	}
	f.learn.mu.Lock()
	for p, exp := range want {
		f.learn.pairs[p] = max(f.learn.pairs[p], exp)
	}
	f.learn.mu.Unlock()
	return nil
}

// learnedElement is p's set element with the time left until exp (at least
// a second: the kernel's timeouts are in milliseconds, 0 means none).
func learnedElement(p pair, exp, now int64) nftables.SetElement {
	key := append(p.peer.AsSlice(), p.dst.AsSlice()...)
	left := time.Duration(exp - now).Round(time.Second)
	return nftables.SetElement{Key: key, Timeout: max(left, time.Second)}
}

// learnedElements returns the live pairs of one family as set elements, for
// a table (re)write: the replaced table's learned sets go with it, so every
// write carries them over from the userspace map. The caller holds learnMu.
func (f *Firewall) learnedElements(v6 bool, now int64) []nftables.SetElement {
	f.learn.mu.RLock()
	defer f.learn.mu.RUnlock()
	var out []nftables.SetElement
	for p, exp := range f.learn.pairs {
		if p.dst.Is6() == v6 && exp-now >= int64(time.Second) {
			out = append(out, learnedElement(p, exp, now))
		}
	}
	return out
}

// sweepLearned forgets expired pairs (the kernel expired them already).
func (f *Firewall) sweepLearned() {
	now := time.Now().UnixNano()
	f.learn.mu.Lock()
	defer f.learn.mu.Unlock()
	for p, exp := range f.learn.pairs {
		if exp <= now {
			delete(f.learn.pairs, p)
		}
	}
}

// persistLearned writes the live pairs to the learned file (temporary file,
// then rename), one "peer destination expires-unix" line each.
func (f *Firewall) persistLearned() error {
	if f.learnedFile == "" {
		return nil
	}
	now := time.Now()
	var b strings.Builder
	b.WriteString(learnedFileHeader + "\n")
	f.learn.mu.RLock()
	for p, exp := range f.learn.pairs {
		if exp > now.UnixNano() {
			fmt.Fprintf(&b, "%s %s %d\n", p.peer, p.dst, exp/int64(time.Second))
		}
	}
	f.learn.mu.RUnlock()
	tmp, err := os.CreateTemp(filepath.Dir(f.learnedFile), filepath.Base(f.learnedFile)+".tmp*")
	if err != nil {
		return fmt.Errorf("write learned pairs: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename there is nothing to remove
	if _, err := tmp.WriteString(b.String()); err != nil {
		tmp.Close()
		return fmt.Errorf("write learned pairs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write learned pairs: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.learnedFile); err != nil {
		return fmt.Errorf("write learned pairs: %w", err)
	}
	return nil
}

// loadLearned reads the learned file into the map; expired and malformed
// lines are skipped. A missing file is no error.
func (f *Firewall) loadLearned() error {
	if f.learnedFile == "" {
		return nil
	}
	fh, err := os.Open(f.learnedFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read learned pairs: %w", err)
	}
	defer fh.Close()
	now := time.Now().UnixNano()
	sc := bufio.NewScanner(fh)
	f.learn.mu.Lock()
	defer f.learn.mu.Unlock()
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		peer, err1 := netip.ParseAddr(fields[0])
		dst, err2 := netip.ParseAddr(fields[1])
		secs, err3 := strconv.ParseInt(fields[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || peer.Is4() != dst.Is4() {
			continue
		}
		if exp := secs * int64(time.Second); exp > now {
			f.learn.pairs[pair{peer.Unmap(), dst.Unmap()}] = exp
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read learned pairs: %w", err)
	}
	return nil
}
