package main

import (
	"context"
	"fmt"
)

// Egress figures: the firewall package's own Go benchmarks of the learned
// egress pairs (firewall/learned_bench_test.go), each round in a fresh
// process pinned to the server CPU like the other scale figures.
type egressSeries struct {
	serial50, serial99, conc50, conc99, applyMS, coveredNS *series
	fwdOpen, fwdLearned, fwdRatio, connRatio               *series
}

var egressS = egressSeries{&series{}, &series{}, &series{}, &series{}, &series{}, &series{},
	&series{}, &series{}, &series{}, &series{}}

func (b *bench) egressRows() []row {
	s := egressS
	return []row{
		{figure: "Egress: answer → pair installed p50, one answer at a time (100,000 pairs learned)", unit: " µs", s: s.serial50, rounds: b.mode.egressRounds},
		{figure: "Egress: answer → pair installed p99, one answer at a time", unit: " µs", s: s.serial99, rounds: b.mode.egressRounds},
		{figure: "Egress: answer → pair installed p50, 16 answers at once", unit: " µs", s: s.conc50, rounds: b.mode.egressRounds},
		{figure: "Egress: answer → pair installed p99, 16 answers at once", unit: " µs", s: s.conc99, rounds: b.mode.egressRounds},
		{figure: "Egress: table write carrying 100,000 learned pairs of 1,000 peers", unit: " ms", s: s.applyMS, rounds: b.mode.egressRounds},
		{figure: "Egress: fast-path check (Covered) with 100,000 pairs", unit: " ns", s: s.coveredNS, rounds: b.mode.egressRounds},
		{figure: "Egress: forwarded throughput, one TCP flow — egress open", unit: " MB/s", s: s.fwdOpen, rounds: b.mode.egressRounds},
		{figure: "Egress: forwarded throughput, one TCP flow — resolved, 100,000 learned pairs", unit: " MB/s", s: s.fwdLearned, rounds: b.mode.egressRounds},
		{figure: "Egress: forwarded throughput ratio 100,000 pairs / open", unit: "×", s: s.fwdRatio, rounds: b.mode.egressRounds, goal: atLeast(0.95, "×")},
		{figure: "Egress: new connections per second ratio 100,000 pairs / open", unit: "×", s: s.connRatio, rounds: b.mode.egressRounds},
	}
}

func (b *bench) egressRounds(ctx context.Context) {
	s := egressS
	all := []*series{s.serial50, s.serial99, s.conc50, s.conc99, s.applyMS, s.coveredNS, s.fwdOpen, s.fwdLearned, s.fwdRatio, s.connRatio}
	if !b.have("firewall.test") {
		for _, x := range all {
			x.fail(b.why("firewall.test"))
		}
		return
	}
	for round := range b.mode.egressRounds {
		if ctx.Err() != nil {
			return
		}
		for _, c := range []struct {
			sub      string
			p50, p99 *series
		}{{"serial", s.serial50, s.serial99}, {"concurrent16", s.conc50, s.conc99}} {
			m, err := b.goBench(ctx, "firewall.test", "BenchmarkLearn/"+c.sub+"$", "5000x", "BenchmarkLearn/"+c.sub)
			if err != nil {
				c.p50.fail(err.Error())
				c.p99.fail(err.Error())
				continue
			}
			c.p50.add(m["p50-µs"])
			c.p99.add(m["p99-µs"])
		}
		if m, err := b.goBench(ctx, "firewall.test", "BenchmarkApplyLearned$", "3x", "BenchmarkApplyLearned"); err != nil {
			s.applyMS.fail(err.Error())
		} else {
			s.applyMS.add(m["ns/op"] / 1e6)
		}
		if m, err := b.goBench(ctx, "firewall.test", "BenchmarkCovered$", "1000000x", "BenchmarkCovered"); err != nil {
			s.coveredNS.fail(err.Error())
		} else {
			s.coveredNS.add(m["ns/op"])
		}
		var mbs, conn [2]float64
		variants := []string{"open", "learned100k"}
		for k := range variants {
			i := (round + k) % len(variants) // alternate which goes first
			v := variants[i]
			if m, err := b.goBench(ctx, "firewall.test", "BenchmarkForward/"+v+"/throughput$", b.mode.forwardTime, "BenchmarkForward/"+v+"/throughput"); err == nil {
				mbs[i] = m["MB/s"]
			} else {
				s.fwdRatio.fail(err.Error())
			}
			if m, err := b.goBench(ctx, "firewall.test", "BenchmarkForward/"+v+"/connect$", b.mode.forwardTime, "BenchmarkForward/"+v+"/connect"); err == nil {
				conn[i] = 1e9 / m["ns/op"]
			} else {
				s.connRatio.fail(err.Error())
			}
		}
		if mbs[0] > 0 {
			s.fwdOpen.add(mbs[0])
		}
		if mbs[1] > 0 {
			s.fwdLearned.add(mbs[1])
		}
		if mbs[0] > 0 && mbs[1] > 0 {
			s.fwdRatio.add(mbs[1] / mbs[0])
		}
		if conn[0] > 0 && conn[1] > 0 {
			s.connRatio.add(conn[1] / conn[0])
		}
	}
	b.notes = append(b.notes, fmt.Sprintf("Egress: firewall BenchmarkLearn (a new pair per answer, time from Learn to the kernel's ack, which the answer waits for; concurrent answers share one netlink batch), BenchmarkApplyLearned (the table replace that reload and re-apply do, re-installing every learned pair in the same batch), BenchmarkCovered (the userspace check a cache hit makes), BenchmarkForward (peer traffic forwarded gateway to sink over veth, full mode with masquerade, egress open vs resolved with 100,000 learned pairs: one TCP flow's throughput, and new connections each needing a learned-set lookup; veth, not WireGuard, so that the figure is the table's cost alone, each run for %s); %d fresh processes pinned to CPU %s", b.mode.forwardTime, b.mode.egressRounds, b.cpus.server))
}
