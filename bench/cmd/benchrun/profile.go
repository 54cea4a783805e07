package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	// profileTime is how long dnsperf loads the proxy per profile.
	profileTime = 10 * time.Second
	// profileMissNames is the size of the never-repeated name file for the
	// miss profile (dnsperf -n 1 sends each once).
	profileMissNames = 300000
	// profileTop is how many functions the pprof summary lists.
	profileTop = 25
)

// profileSection (not in the default sections) runs sluice's proxy with a
// CPU profile under dnsperf load, once on cache hits and once on cache
// misses, and writes `go tool pprof -top` summaries next to the results.
func (b *bench) profileSection(ctx context.Context, outDir string) error {
	if !b.have("dnsproxy-bench") {
		return fmt.Errorf("profile: %s", b.why("dnsproxy-bench"))
	}
	dir := filepath.Join(b.work, "profile")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create profile dir: %w", err)
	}
	if err := b.enterDNSNetns(ctx, "p"); err != nil {
		return err
	}
	defer b.leaveDNSNetns()
	up, err := b.startUnbound(ctx, dir, "upstream-profile", upstreamConf, upstreamPort)
	if err != nil {
		return fmt.Errorf("profile upstream: %w", err)
	}
	defer b.r.stop(up)

	var hits, misses strings.Builder
	for i := range hitNames {
		fmt.Fprintf(&hits, "q%d.bench A\n", i)
	}
	for i := range profileMissNames {
		fmt.Fprintf(&misses, "m%s-%d.bench A\n", b.runID, i)
	}
	files := map[string]string{"hits": hits.String(), "misses": misses.String()}
	for _, kind := range []string{"hits", "misses"} {
		qfile := filepath.Join(dir, kind+".txt")
		if err := os.WriteFile(qfile, []byte(files[kind]), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", qfile, err)
		}
		prof := filepath.Join(dir, "dnsproxy-"+kind+".pprof")
		p, err := b.r.start("dnsproxy-profile-"+kind, b.dnsns, b.cpus.server, nil, filepath.Join(b.bin, "dnsproxy-bench"),
			"-listen", "127.0.0.1", "-port", strconv.Itoa(sluicePort), "-upstream", fmt.Sprintf("127.0.0.1:%d", upstreamPort), "-cpuprofile", prof)
		if err != nil {
			return err
		}
		if err := b.waitDNS(ctx, sluicePort, p); err != nil {
			b.r.stop(p)
			return err
		}
		args := []string{"dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(sluicePort), "-d", qfile, "-c", strconv.Itoa(dnsperfClients),
			"-T", strconv.Itoa(dnsperfThreads), "-t", "1", "-O", "suppress=timeout"}
		if kind == "hits" {
			// warm the cache, then load it
			if _, err := b.r.run(ctx, b.dnsns, b.cpus.client, nil, "dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(sluicePort), "-d", qfile, "-n", "1", "-q", "10"); err != nil {
				b.r.stop(p)
				return fmt.Errorf("warm up: %w", err)
			}
			args = append(args, "-q", strconv.Itoa(dnsperfOutstanding), "-l", strconv.Itoa(int(profileTime.Seconds())))
		} else {
			args = append(args, "-q", "100", "-n", "1", "-l", strconv.Itoa(int(profileTime.Seconds())))
		}
		out, err := b.r.run(ctx, b.dnsns, b.cpus.client, nil, args...)
		b.r.stop(p) // SIGTERM: the runner writes the profile on its way out
		if err != nil {
			return fmt.Errorf("dnsperf %s: %w", kind, err)
		}
		res, err := parseDnsperf(out)
		if err != nil {
			return err
		}
		var top strings.Builder
		for _, sortBy := range []string{"-flat", "-cum"} {
			t, err := b.r.run(ctx, "", "", nil, "go", "tool", "pprof", "-top", sortBy, "-nodecount", strconv.Itoa(profileTop), filepath.Join(b.bin, "dnsproxy-bench"), prof)
			if err != nil {
				return fmt.Errorf("pprof %s: %w", kind, err)
			}
			fmt.Fprintf(&top, "### sorted by %s\n\n%s\n", sortBy[1:], t)
		}
		host, _ := os.Hostname()
		name := filepath.Join(outDir, fmt.Sprintf("%s-%s-dnsproxy-%s.txt", time.Now().Format("2006-01-02"), sanitize(host), kind))
		text := fmt.Sprintf("sluice dnsproxy CPU profile, cache %s, dnsperf %.0f QPS over %.1fs, proxy pinned to CPU %s\n\n%s", kind, res.QPS, res.RunTime, b.cpus.server, top.String())
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		fmt.Fprintf(os.Stderr, "benchrun: wrote %s\n", name)
	}
	return nil
}
