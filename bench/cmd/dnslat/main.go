// Command dnslat measures DNS round-trip latency one query at a time. It owns
// the latency half of sluice's DNS benchmarks: dnsperf reports throughput and
// only average latency, while dnslat records every round trip and reports
// percentiles.
//
// Targets are queried in turn (query i goes to every target before query i+1,
// in a fresh random order each time, so that no target always follows the
// same neighbour), so that all targets see the same machine state and their
// figures can be compared inside one run. In "unique" mode every query
// asks a name never asked before (a cache miss everywhere); in "set" mode the
// names cycle through a fixed set (cache hits after a warm-up pass).
//
// With -inflight N (N > 1) every target is kept at N queries in flight: N
// workers, each with its own socket, send one query, wait for its answer and
// send the next, and every round trip is recorded. Targets are measured one
// after the other in short slices (-slice queries each), the order rotated
// every slice, so that they still share the machine's state over the run.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-vpn/sluice/bench/internal/latency"

	"github.com/miekg/dns"
)

const (
	defaultCount   = 10000
	defaultTimeout = time.Second
	defaultSetSize = 1000
	defaultZone    = "bench."
	// warmupQueries per target are sent before measuring and not recorded.
	warmupQueries = 200
	// maxErrors stops a run early when a target is plainly broken.
	maxErrors = 1000
	// defaultSlice is how many queries a target gets in one turn with
	// -inflight: long enough that the ramp at each end (the first N sent at
	// once, the last few draining) is a small share of the samples, short
	// enough that the targets alternate many times in a run.
	defaultSlice = 2000
	// maxInflight bounds -inflight (one socket per query in flight).
	maxInflight = 1024
)

// target is one DNS server under test.
type target struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	conn *net.UDPConn
	rtts []time.Duration
	errs int
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dnslat:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		targetsFlag = flag.String("targets", "", "comma-separated name=host:port list")
		count       = flag.Int("n", defaultCount, "measured queries per target")
		mode        = flag.String("mode", "unique", "unique (every name new) or set (names cycle through -set-size names)")
		setSize     = flag.Int("set-size", defaultSetSize, "names in the set for -mode set")
		zone        = flag.String("zone", defaultZone, "zone the names are made under")
		timeout     = flag.Duration("timeout", defaultTimeout, "per-query timeout")
		wantA       = flag.String("want-a", "192.0.2.1", "A record every answer must carry (empty: any NOERROR answer)")
		inflight    = flag.Int("inflight", 1, "queries kept in flight per target (1: one at a time, targets interleaved query by query)")
		slice       = flag.Int("slice", defaultSlice, "with -inflight > 1: queries per target per turn")
	)
	flag.Parse()
	targets, err := parseTargets(*targetsFlag)
	if err != nil {
		return err
	}
	if *count <= 0 || *setSize <= 0 || *slice <= 0 {
		return errors.New("-n, -set-size and -slice must be positive")
	}
	if *inflight < 1 || *inflight > maxInflight {
		return fmt.Errorf("-inflight must be 1 to %d", maxInflight)
	}
	var want netip.Addr
	if *wantA != "" {
		if want, err = netip.ParseAddr(*wantA); err != nil {
			return fmt.Errorf("parse -want-a %q: %w", *wantA, err)
		}
	}
	for _, t := range targets {
		raddr, err := net.ResolveUDPAddr("udp", t.Addr)
		if err != nil {
			return fmt.Errorf("resolve target %q: %w", t.Addr, err)
		}
		if t.conn, err = net.DialUDP("udp", nil, raddr); err != nil {
			return fmt.Errorf("dial target %q: %w", t.Addr, err)
		}
		defer t.conn.Close()
		if err := rxStamped(t.conn); err != nil {
			return fmt.Errorf("receive timestamps on the socket for %q: %w", t.Addr, err)
		}
		t.rtts = make([]time.Duration, 0, *count)
	}
	var rb [4]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return fmt.Errorf("read random prefix: %w", err)
	}
	prefix := "r" + hex.EncodeToString(rb[:])
	nameFor := func(t int, i int) string {
		switch *mode {
		case "set":
			return fmt.Sprintf("q%d.%s", i%*setSize, *zone)
		default: // unique per target and per run
			return fmt.Sprintf("%s-t%d-%d.%s", prefix, t, i, *zone)
		}
	}
	if *mode != "set" && *mode != "unique" {
		return fmt.Errorf("unknown -mode %q", *mode)
	}
	if *inflight > 1 {
		if err := runConcurrent(targets, *inflight, *count, *slice, nameFor, want, *timeout); err != nil {
			return err
		}
	} else if err := runSerial(targets, *count, nameFor, want, *timeout); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, t := range targets {
		if err := enc.Encode(summarize(t)); err != nil {
			return fmt.Errorf("write result: %w", err)
		}
	}
	return nil
}

// runSerial sends one query at a time, targets interleaved query by query
// in a fresh random order for every query index: each target follows
// every other (and the upstream) equally often. With a fixed cyclic order
// (only the start rotated) a target always came right after the same
// neighbour and paid for that neighbour's work still running on the
// server core: the one after "direct" measured ~30 µs more than the same
// server in another position.
func runSerial(targets []*target, count int, nameFor func(t, i int) string, want netip.Addr, timeout time.Duration) error {
	buf := make([]byte, dns.MaxMsgSize)
	total := warmupQueries + count
	order := make([]int, len(targets))
	for i := range order {
		order[i] = i
	}
	shuffle := mrand.New(mrand.NewPCG(uint64(len(targets)), uint64(count)))
	for i := range total {
		shuffle.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		for _, ti := range order {
			t := targets[ti]
			rtt, err := query(t.conn, nameFor(ti, i), want, timeout, buf)
			if i < warmupQueries {
				continue
			}
			if err != nil {
				t.errs++
				if t.errs >= maxErrors {
					return fmt.Errorf("target %s: %d errors, last: %w", t.Name, t.errs, err)
				}
				continue
			}
			t.rtts = append(t.rtts, rtt)
		}
	}
	return nil
}

// runConcurrent keeps inflight queries in flight per target. Each target
// gets warmupQueries unrecorded queries, then count recorded ones in turns
// of slice queries; the order of the targets rotates every turn. Query
// numbers go on across turns, so with -mode unique no name repeats.
func runConcurrent(targets []*target, inflight, count, slice int, nameFor func(t, i int) string, want netip.Addr, timeout time.Duration) error {
	conns := make([][]*net.UDPConn, len(targets))
	defer func() {
		for _, cs := range conns {
			for _, c := range cs {
				c.Close()
			}
		}
	}()
	for ti, t := range targets {
		raddr := t.conn.RemoteAddr().(*net.UDPAddr)
		conns[ti] = []*net.UDPConn{t.conn}
		for len(conns[ti]) < inflight {
			c, err := net.DialUDP("udp", nil, raddr)
			if err != nil {
				return fmt.Errorf("dial target %q: %w", t.Addr, err)
			}
			conns[ti] = append(conns[ti], c)
			if err := rxStamped(c); err != nil {
				return fmt.Errorf("receive timestamps on a socket for %q: %w", t.Addr, err)
			}
		}
		conns[ti] = conns[ti][:inflight]
	}
	next := make([]int, len(targets)) // next query number per target
	measure := func(ti, n int, record bool) error {
		t := targets[ti]
		rtts, errs, last := burst(conns[ti], next[ti], n, func(i int) string { return nameFor(ti, i) }, want, timeout)
		next[ti] += n
		if !record {
			return nil
		}
		t.rtts = append(t.rtts, rtts...)
		t.errs += errs
		if t.errs >= maxErrors {
			return fmt.Errorf("target %s: %d errors, last: %w", t.Name, t.errs, last)
		}
		return nil
	}
	for ti := range targets {
		if err := measure(ti, warmupQueries, false); err != nil {
			return err
		}
	}
	turns := (count + slice - 1) / slice
	for turn := range turns {
		n := min(slice, count-turn*slice)
		for k := range targets {
			if err := measure((turn+k)%len(targets), n, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// burst sends queries first..first+n-1 over conns, one worker per socket,
// each worker sending its next query as soon as its last one is answered
// (or timed out): len(conns) queries in flight. It returns the round trips
// of the answered queries, the number of failed ones and the last error.
func burst(conns []*net.UDPConn, first, n int, nameFor func(i int) string, want netip.Addr, timeout time.Duration) ([]time.Duration, int, error) {
	var (
		mu   sync.Mutex
		rtts = make([]time.Duration, 0, n)
		errs int
		last error
		seq  atomic.Int64
		wg   sync.WaitGroup
	)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, dns.MaxMsgSize)
			for { // bounded: every pass takes one of the n query numbers
				i := int(seq.Add(1)) - 1
				if i >= n {
					return
				}
				rtt, err := query(c, nameFor(first+i), want, timeout, buf)
				mu.Lock()
				if err != nil {
					errs++
					last = err
				} else {
					rtts = append(rtts, rtt)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return rtts, errs, last
}

func parseTargets(s string) ([]*target, error) {
	var out []*target
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		name, addr, ok := strings.Cut(f, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("parse target %q: want name=host:port", f)
		}
		out = append(out, &target{Name: name, Addr: addr})
	}
	if len(out) == 0 {
		return nil, errors.New("no -targets given")
	}
	return out, nil
}

// query sends one A query and waits for its answer; the round trip is timed
// from just before the write to the kernel's receive time of the matching
// answer (rxStamped), or to just after its read when the socket gives no
// such time.
func query(c *net.UDPConn, name string, want netip.Addr, timeout time.Duration, buf []byte) (time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = dns.Id()
	pkt, err := m.Pack()
	if err != nil {
		return 0, fmt.Errorf("pack query %q: %w", name, err)
	}
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, fmt.Errorf("set deadline: %w", err)
	}
	var oob [oobSize]byte
	start := time.Now()
	if _, err := c.Write(pkt); err != nil {
		return 0, fmt.Errorf("send query %q: %w", name, err)
	}
	for range 8 { // skip late answers to earlier, timed-out queries
		n, rx, err := readStamped(c, buf, oob[:])
		if err != nil {
			return 0, fmt.Errorf("read answer %q: %w", name, err)
		}
		rtt := time.Since(start)
		if !rx.IsZero() && !rx.Before(start) && rx.Sub(start) <= rtt {
			rtt = rx.Sub(start) // wall clocks both; a clock step falls back to the read
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			return 0, fmt.Errorf("unpack answer %q: %w", name, err)
		}
		if r.Id != m.Id {
			continue
		}
		if err := check(r, name, want); err != nil {
			return 0, err
		}
		return rtt, nil
	}
	return 0, fmt.Errorf("read answer %q: too many stray packets", name)
}

func check(r *dns.Msg, name string, want netip.Addr) error {
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("answer %q: rcode %s", name, dns.RcodeToString[r.Rcode])
	}
	if !want.IsValid() {
		return nil
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			if got, ok := netip.AddrFromSlice(a.A); ok && got.Unmap() == want {
				return nil
			}
		}
	}
	return fmt.Errorf("answer %q: no A %s in %v", name, want, r.Answer)
}

func summarize(t *target) latency.Summary {
	return latency.Summarize(t.Name, t.Addr, t.rtts, t.errs)
}
