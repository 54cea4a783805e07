// Command pagetouch measures what touching memory costs a UDP server's
// round trip on this host, for the README's Performance section: a
// server (-serve) echoes every datagram after reading one byte in each of
// -pages random pages of a -mem MiB array (all of it faulted in first;
// -set N draws the pages from the first N only); the client (-targets)
// asks several servers one datagram at a time, in a fresh random order
// each round as dnslat does, and prints each target's round-trip
// percentiles as JSON lines. Run the servers on one core and the client
// on another, as the bench does: between two datagrams to a server the
// other servers run on its core, so the pages it reads are cold.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// toucher reads pages of mem.
type toucher struct {
	mem   []byte
	pages int // read per datagram
	set   int // pages drawn from
	rng   *rand.Rand
	sink  byte
}

func newToucher(mib, pages, set int) *toucher {
	t := &toucher{mem: make([]byte, mib<<20), pages: pages, rng: rand.New(rand.NewPCG(1, 2))}
	t.set = len(t.mem) / 4096
	if set > 0 && set < t.set {
		t.set = set
	}
	for i := 0; i < len(t.mem); i += 4096 {
		t.mem[i] = 1 // fault every page in now, not while measuring
	}
	return t
}

// touch reads one byte (a different cache line each time) in each of
// t.pages random pages.
func (t *toucher) touch() {
	for i := range t.pages {
		t.sink += t.mem[t.rng.IntN(t.set)*4096+64*(i%64)]
	}
}

// serve echoes datagrams on c, touching pages before each answer, until c
// is closed.
func serve(c *net.UDPConn, t *toucher) error {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		t.touch()
		if _, err := c.WriteToUDPAddrPort(buf[:n], from); err != nil {
			return err
		}
	}
}

type result struct {
	Target string  `json:"target"`
	Count  int     `json:"count"`
	Errors int     `json:"errors"`
	P50    float64 `json:"p50_us"`
	P90    float64 `json:"p90_us"`
	P99    float64 `json:"p99_us"`
}

// measure sends n datagrams to each target, one at a time, targets in a
// fresh random order each round.
func measure(targets []string, n int, timeout time.Duration) ([]result, error) {
	conns := make([]*net.UDPConn, len(targets))
	for i, t := range targets {
		ra, err := net.ResolveUDPAddr("udp", t)
		if err != nil {
			return nil, err
		}
		if conns[i], err = net.DialUDP("udp", nil, ra); err != nil {
			return nil, err
		}
		defer conns[i].Close()
	}
	lat := make([][]time.Duration, len(targets))
	res := make([]result, len(targets))
	msg, buf := make([]byte, 40), make([]byte, 2048)
	order := make([]int, len(targets))
	for i := range order {
		order[i] = i
	}
	for range n {
		rand.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		for _, j := range order {
			start := time.Now()
			if _, err := conns[j].Write(msg); err != nil {
				res[j].Errors++
				continue
			}
			conns[j].SetReadDeadline(start.Add(timeout))
			if _, err := conns[j].Read(buf); err != nil {
				res[j].Errors++
				continue
			}
			lat[j] = append(lat[j], time.Since(start))
		}
	}
	for j, l := range lat {
		res[j].Target, res[j].Count = targets[j], len(l)
		if len(l) == 0 {
			continue
		}
		slices.Sort(l)
		us := func(q float64) float64 { return float64(l[int(q*float64(len(l)-1))].Nanoseconds()) / 1000 }
		res[j].P50, res[j].P90, res[j].P99 = us(0.50), us(0.90), us(0.99)
	}
	return res, nil
}

func main() {
	listen := flag.String("serve", "", "serve on this address (host:port) instead of measuring")
	mib := flag.Int("mem", 512, "with -serve: MiB of memory to read pages of")
	pages := flag.Int("pages", 0, "with -serve: pages read per datagram")
	set := flag.Int("set", 0, "with -serve: draw the pages from the first N pages only (0: all)")
	targets := flag.String("targets", "", "comma-separated host:port servers to measure")
	n := flag.Int("n", 20000, "datagrams per target")
	timeout := flag.Duration("timeout", time.Second, "per-datagram timeout")
	flag.Parse()
	if err := run(*listen, *mib, *pages, *set, *targets, *n, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "pagetouch:", err)
		os.Exit(1)
	}
}

func run(listen string, mib, pages, set int, targets string, n int, timeout time.Duration) error {
	if listen != "" {
		ua, err := net.ResolveUDPAddr("udp", listen)
		if err != nil {
			return err
		}
		c, err := net.ListenUDP("udp", ua)
		if err != nil {
			return err
		}
		return serve(c, newToucher(mib, pages, set))
	}
	if targets == "" {
		return errors.New("give -serve or -targets")
	}
	res, err := measure(strings.Split(targets, ","), n, timeout)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, r := range res {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}
