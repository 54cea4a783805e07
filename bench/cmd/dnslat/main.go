// Command dnslat measures DNS round-trip latency one query at a time. It owns
// the latency half of sluice's DNS benchmarks: dnsperf reports throughput and
// only average latency, while dnslat records every round trip and reports
// percentiles.
//
// Targets are queried in turn (query i goes to every target before query i+1,
// and the order rotates), so that all targets see the same machine state and
// their figures can be compared inside one run. In "unique" mode every query
// asks a name never asked before (a cache miss everywhere); in "set" mode the
// names cycle through a fixed set (cache hits after a warm-up pass).
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
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
	)
	flag.Parse()
	targets, err := parseTargets(*targetsFlag)
	if err != nil {
		return err
	}
	if *count <= 0 || *setSize <= 0 {
		return errors.New("-n and -set-size must be positive")
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
	buf := make([]byte, dns.MaxMsgSize)
	total := warmupQueries + *count
	for i := range total {
		for k := range targets {
			ti := (i + k) % len(targets)
			t := targets[ti]
			rtt, err := query(t.conn, nameFor(ti, i), want, *timeout, buf)
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
	enc := json.NewEncoder(os.Stdout)
	for _, t := range targets {
		if err := enc.Encode(summarize(t)); err != nil {
			return fmt.Errorf("write result: %w", err)
		}
	}
	return nil
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
// from just before the write to just after the matching read.
func query(c *net.UDPConn, name string, want netip.Addr, timeout time.Duration, buf []byte) (time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = dns.Id()
	pkt, err := m.Pack()
	if err != nil {
		return 0, fmt.Errorf("pack query %q: %w", name, err)
	}
	start := time.Now()
	if err := c.SetDeadline(start.Add(timeout)); err != nil {
		return 0, fmt.Errorf("set deadline: %w", err)
	}
	if _, err := c.Write(pkt); err != nil {
		return 0, fmt.Errorf("send query %q: %w", name, err)
	}
	for range 8 { // skip late answers to earlier, timed-out queries
		n, err := c.Read(buf)
		if err != nil {
			return 0, fmt.Errorf("read answer %q: %w", name, err)
		}
		rtt := time.Since(start)
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
