package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	// scaleTimeout bounds waiting for sluice up to program every peer.
	scaleTimeout = 2 * time.Minute
	// rssSettle is how long the daemon idles before its RSS is read.
	rssSettle = time.Second
)

// The scale daemon uses 10.30.0.0/16 (room for 10,000 peers) and a port of
// its own; it needs no underlay, so its namespace has only loopback.
const scaleConfTmpl = `interface: {name: {{IF}}, backend: userspace, listen_port: 51821, private_key_file: {{DIR}}/gw.key, addresses: [10.30.0.1/16, fd20::1/64], mtu: 1420, endpoint: 192.0.2.1:51821}
dns: {mode: split, listen: [10.30.0.53, fd20::53], default: {upstreams: [127.0.0.1:5300]}}
peers: {state_dir: {{DIR}}/state, routes: []}
admin: {listen: 127.0.0.1:0, control_socket: {{DIR}}/ctl.sock}
`

// scaleLookupPeers are the identity counts of the proxy's peer-lookup
// benchmark (dnsproxy BenchmarkCacheHitPeers/N).
var scaleLookupPeers = []int{1000, 10000, 50000}

// daemonSeries are the figures of `sluice up` on a store of n peers.
type daemonSeries struct {
	n, rounds          int
	upSec, rss, addSec *series
}

func (b *bench) scaleSection(ctx context.Context) []row {
	n := b.mode.scalePeers
	scaleRounds := b.mode.scaleRounds
	syncSec, syncRSS, change1MS, fwMS := &series{}, &series{}, &series{}, &series{}
	rows := []row{
		{figure: fmt.Sprintf("Scale: apply %d peers in one SyncPeers (wgdev benchmark)", n), unit: " s", s: syncSec, rounds: scaleRounds},
		{figure: fmt.Sprintf("Scale: RSS of the wgdev benchmark process at %d peers", n), unit: " MiB", s: syncRSS, rounds: scaleRounds},
		{figure: fmt.Sprintf("Scale: SyncPeers for one changed peer of %d (wgdev benchmark)", n), unit: " ms", s: change1MS, rounds: scaleRounds},
	}
	var daemons []daemonSeries
	for _, ds := range b.mode.scaleDaemon {
		dn := ds.peers
		d := daemonSeries{n: dn, rounds: ds.rounds, upSec: &series{}, rss: &series{}, addSec: &series{}}
		daemons = append(daemons, d)
		rows = append(rows,
			row{figure: fmt.Sprintf("Scale: sluice up until %d peers are on the device", dn), unit: " s", s: d.upSec, rounds: d.rounds},
			row{figure: fmt.Sprintf("Scale: sluice daemon RSS at %d peers", dn), unit: " MiB", s: d.rss, rounds: d.rounds},
			row{figure: fmt.Sprintf("Scale: one peer added to %d (`sluice peer add` until it is on the device)", dn), unit: " s", s: d.addSec, rounds: d.rounds})
	}
	lookups := map[int]*series{}
	for _, ln := range scaleLookupPeers {
		lookups[ln] = &series{}
		rows = append(rows, row{figure: fmt.Sprintf("Scale: proxy cache hit with 10 groups, source cycling over %d peers (dnsproxy benchmark)", ln),
			unit: " ns", s: lookups[ln], rounds: scaleRounds})
	}
	rows = append(rows, row{figure: fmt.Sprintf("Scale: firewall Apply with %d DoH entries (firewall benchmark)", b.mode.scaleDoH), unit: " ms", s: fwMS, rounds: scaleRounds})
	rows = append(rows, b.egressRows()...)

	// Go benchmarks of the packages, each round in a fresh process pinned to
	// the server CPU (RSS of a process that already ran a round is not a
	// fresh figure).
	for range scaleRounds {
		if ctx.Err() != nil {
			return rows
		}
		if !b.have("wgdev.test") {
			syncSec.fail(b.why("wgdev.test"))
			syncRSS.fail(b.why("wgdev.test"))
		} else if out, m, err := b.goBenchOut(ctx, "wgdev.test", "BenchmarkSyncPeers10k/(add|change1)$", "1x", "BenchmarkSyncPeers10k/add"); err != nil {
			syncSec.fail(err.Error())
			syncRSS.fail(err.Error())
			change1MS.fail(err.Error())
		} else {
			// One process: add's RSS is that of a fresh process; change1
			// runs after it on the same device.
			if c, err := parseGoBench(out, "BenchmarkSyncPeers10k/change1"); err != nil {
				change1MS.fail(err.Error())
			} else {
				change1MS.add(c["ns/op"] / 1e6)
			}
			syncSec.add(m["ns/op"] / 1e9)
			if v, ok := m["RSS-MiB"]; ok {
				syncRSS.add(v)
			} else {
				syncRSS.fail("benchmark reports no RSS-MiB")
			}
		}
		// The three sizes in one process, each with its own proxy.
		out, _, err := b.goBenchOut(ctx, "dnsproxy.test", "BenchmarkCacheHitPeers/", "500000x", "")
		for _, ln := range scaleLookupPeers {
			name := fmt.Sprintf("BenchmarkCacheHitPeers/%d", ln)
			if !b.have("dnsproxy.test") {
				lookups[ln].fail(b.why("dnsproxy.test"))
			} else if err != nil {
				lookups[ln].fail(err.Error())
			} else if m, err := parseGoBench(out, name); err != nil {
				lookups[ln].fail(err.Error())
			} else {
				lookups[ln].add(m["ns/op"])
			}
		}
		if !b.have("firewall.test") {
			fwMS.fail(b.why("firewall.test"))
		} else if m, err := b.goBench(ctx, "firewall.test", "BenchmarkApply$", "5x", "BenchmarkApply"); err != nil {
			fwMS.fail(err.Error())
		} else {
			fwMS.add(m["ns/op"] / 1e6)
		}
	}

	// The daemon itself: sluice up on a store of n peers.
	for _, d := range daemons {
		var err error
		switch {
		case !b.have("sluice"):
			err = errors.New(b.why("sluice"))
		case !b.have("scale"):
			err = errors.New(b.why("scale"))
		default:
			err = b.scaleDaemon(ctx, d)
		}
		if err != nil {
			d.upSec.fail(err.Error())
			d.rss.fail(err.Error())
			d.addSec.fail(err.Error())
		}
	}
	b.egressRounds(ctx)
	b.notes = append(b.notes, "Scale: \"one peer added\" is the wall time of `sluice peer add` against the running daemon (store write, control socket, one SyncPeers) until `wg show` lists the new peer, polled every 20 ms; the proxy's peer-lookup figure is dnsproxy BenchmarkCacheHitPeers/N (a cache hit with 10 groups and the per-peer rate limit, each hit from the next of N peer addresses, after every peer asked once), ns per hit on one core")
	var sizes []string
	for _, d := range daemons {
		sizes = append(sizes, fmt.Sprintf("%d daemon(s) at %d peers", d.rounds, d.n))
	}
	b.notes = append(b.notes, fmt.Sprintf("Scale: each Go benchmark figure from %d fresh process(es) pinned to CPU %s, \"sluice up\" from %s (fewer rounds than before: these figures varied by 3 %% or less between rounds, and the 50,000-peer store takes longest); SyncPeers and firewall figures are the packages' own Go benchmarks (gateway/wgdev BenchmarkSyncPeers10k/add: empty userspace device to %d peers in one ConfigureDevice over UAPI; firewall BenchmarkApply: one atomic batch with %d DoH prefixes in interval sets); \"sluice up\" is the wall time from starting the daemon on a store of %d peers (filled by bench/cmd/scale) until `wg show` lists all of them, and its VmRSS %s later",
		scaleRounds, b.cpus.server, strings.Join(sizes, ", "), n, b.mode.scaleDoH, n, rssSettle))
	return rows
}

// goBench runs one Go benchmark from a test binary built by run.sh and
// returns the metrics of the line named name.
func (b *bench) goBench(ctx context.Context, binary, pattern, benchtime, name string) (map[string]float64, error) {
	_, m, err := b.goBenchOut(ctx, binary, pattern, benchtime, name)
	return m, err
}

// goBenchOut is goBench that also returns the whole output, for patterns
// that run several benchmarks; name "" parses no line.
func (b *bench) goBenchOut(ctx context.Context, binary, pattern, benchtime, name string) (string, map[string]float64, error) {
	if !b.have(binary) {
		return "", nil, errors.New(b.why(binary))
	}
	out, err := b.r.run(ctx, "", b.cpus.server, nil, filepath.Join(b.bin, binary),
		"-test.run", "^$", "-test.bench", pattern, "-test.benchtime", benchtime, "-test.count", "1")
	if err != nil {
		return out, nil, fmt.Errorf("%s: %w: %s", binary, err, lastLine(out))
	}
	if name == "" {
		return out, nil, nil
	}
	m, err := parseGoBench(out, name)
	return out, m, err
}

// parseGoBench reads the metrics of the benchmark line for name (with or
// without the -N GOMAXPROCS suffix).
func parseGoBench(out, name string) (map[string]float64, error) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		base := f[0]
		if i := strings.LastIndexByte(base, '-'); i > 0 {
			if _, err := strconv.Atoi(base[i+1:]); err == nil {
				base = base[:i]
			}
		}
		if base != name {
			continue
		}
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("parse benchmark line %q: %w", line, err)
			}
			m[f[i+1]] = v
		}
		if _, ok := m["ns/op"]; !ok {
			return nil, fmt.Errorf("parse benchmark line %q: no ns/op", line)
		}
		return m, nil
	}
	return nil, fmt.Errorf("benchmark %s: no result line", name)
}

// scaleDaemon starts sluice up on a store of d.n peers d.rounds times.
func (b *bench) scaleDaemon(ctx context.Context, d daemonSeries) error {
	n := d.n
	dir := filepath.Join(b.work, fmt.Sprintf("scale%d", n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create scale dir: %w", err)
	}
	ifname := b.runID + "wgx"
	conf := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(conf, []byte(strings.NewReplacer("{{IF}}", ifname, "{{DIR}}", dir).Replace(scaleConfTmpl)), 0o600); err != nil {
		return fmt.Errorf("write scale config: %w", err)
	}
	if err := writeKey(filepath.Join(dir, "gw.key")); err != nil {
		return err
	}
	if out, err := b.r.run(ctx, "", "", nil, filepath.Join(b.bin, "scale"), "-state", filepath.Join(dir, "state"), "-n", strconv.Itoa(n)); err != nil {
		return fmt.Errorf("fill peer store: %w: %s", err, out)
	}
	ns := b.runID + "s"
	if err := b.r.addNetns(ctx, ns); err != nil {
		return err
	}
	defer func() {
		if err := b.r.delNetns(ns); err != nil {
			b.log.Warn("delete namespace", "err", err)
		}
	}()
	for round := range d.rounds {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.log.Info("scale round", "peers", n, "round", round+1, "of", d.rounds)
		secs, rss, add, err := b.scaleOnce(ctx, ns, ifname, conf, n, round)
		if err != nil {
			d.upSec.fail(err.Error())
			d.rss.fail(err.Error())
			d.addSec.fail(err.Error())
			continue
		}
		d.upSec.add(secs)
		d.rss.add(rss)
		if add < 0 {
			d.addSec.fail("the added peer did not reach the device")
		} else {
			d.addSec.add(add)
		}
	}
	return nil
}

// wgPeers counts the peers `wg show` lists on ifname in ns.
func (b *bench) wgPeers(ctx context.Context, ns, ifname string) (int, error) {
	out, err := b.r.run(ctx, ns, "", nil, "wg", "show", ifname, "peers")
	if err != nil {
		return 0, err
	}
	return len(strings.Fields(out)), nil
}

// scaleOnce starts sluice up on the store of n peers and returns the time
// until all are on the device, the daemon's RSS then, and the time from
// `sluice peer add` of one more peer until the device lists it (-1 if it
// never does within scaleAddTimeout).
func (b *bench) scaleOnce(ctx context.Context, ns, ifname, conf string, n, round int) (float64, float64, float64, error) {
	start := time.Now()
	p, err := b.r.start("sluice-scale", ns, b.cpus.server, nil, filepath.Join(b.bin, "sluice"), "up", "-c", conf, "--log-level", "warn")
	defer func() {
		b.r.stop(p)
		waitGone(filepath.Join(uapiDir, ifname+".sock"), upTimeout)
	}()
	if err != nil {
		return 0, 0, 0, err
	}
	got := 0
	for time.Since(start) < scaleTimeout && ctx.Err() == nil {
		if p.Exited() {
			return 0, 0, 0, fmt.Errorf("sluice up exited: %s", b.r.logTail(p.name, 3))
		}
		if got, err = b.wgPeers(ctx, ns, ifname); err == nil && got >= n {
			el := time.Since(start).Seconds()
			time.Sleep(rssSettle)
			rss, err := rssBytes(p.Pid())
			if err != nil {
				return 0, 0, 0, err
			}
			return el, float64(rss) / (1 << 20), b.scaleAddOne(ctx, ns, ifname, conf, got, round), nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return 0, 0, 0, fmt.Errorf("sluice up: %d of %d peers after %s", got, n, scaleTimeout)
}

// scaleAddTimeout bounds waiting for one added peer to reach the device.
const scaleAddTimeout = 30 * time.Second

// scaleAddOne runs `sluice peer add` for one new peer against the running
// daemon and returns the seconds until the device lists have+1 peers, or
// -1. The peer stays in the store: the next round starts with it, which the
// "sluice up" figure does not notice (it waits for at least n peers).
func (b *bench) scaleAddOne(ctx context.Context, ns, ifname, conf string, have, round int) float64 {
	start := time.Now()
	name := fmt.Sprintf("scale-extra-%d/laptop", round)
	if out, err := b.r.run(ctx, ns, "", nil, filepath.Join(b.bin, "sluice"), "peer", "add", name, "-c", conf); err != nil {
		b.log.Warn("scale: peer add", "err", err, "out", lastLine(out))
		return -1
	}
	for time.Since(start) < scaleAddTimeout && ctx.Err() == nil {
		if got, err := b.wgPeers(ctx, ns, ifname); err == nil && got > have {
			return time.Since(start).Seconds()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return -1
}

// waitGone waits (bounded) for a path to disappear.
func waitGone(path string, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
