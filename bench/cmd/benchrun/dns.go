package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-vpn/sluice/internal/nsexec"

	"github.com/miekg/dns"
)

// Loopback ports of the DNS contenders. The upstream port is the one the
// issue names; the others only need to be distinct and free.
const (
	upstreamPort = 5300
	sluicePort   = 5401
	dnsdistPort  = 5402
	unboundPort  = 5403
	// groupsPort is sluice's proxy with peer groups configured (groups bench row).
	groupsPort = 5404
	// benchGroups and benchPeers size the groups row: 10 groups, 1,000 peers.
	benchGroups = 10
	benchPeers  = 1000
	// sluiceEgressPort is sluice with egress: resolved (learning every
	// answered address into an nftables table before answering).
	sluiceEgressPort = 5405
	sluiceEgress     = "sluice egress: resolved"
	// everythingPort is sluice with every feature on at once (issue 15,
	// item 3): egress: resolved, benchGroups groups and benchPeers peers,
	// the query log written to a file and a trace attached and drained.
	everythingPort = 5406
	everything     = "sluice everything"
	// Two-core contenders (issue: hits on two cores): sluice's proxy with
	// GOMAXPROCS 2 (one SO_REUSEPORT UDP socket per P) and dnsdist with two
	// listeners on the same address, both pinned to both CPUs.
	sluice2Port  = 5407
	dnsdist2Port = 5408
	// dnsdistTuned is dnsdist with its batched UDP path switched on
	// (setUDPMultipleMessagesVectorSize: recvmmsg/sendmmsg of up to 32)
	// and 4 MiB socket buffers: measured only at saturation (dnsload),
	// beside the default-configured dnsdist every other row uses.
	dnsdistTunedPort = 5409
	dnsdistTuned     = "dnsdist, recvmmsg 32"
	sluice2          = "sluice, GOMAXPROCS 2"
	dnsdist2         = "dnsdist, 2 listeners"
	// dnsperfThreads2 is dnsperf's thread count against the two-core
	// contenders: it shares their two cores.
	dnsperfThreads2 = 2
	// missInflight is the concurrency of the second miss measurement.
	missInflight = 64

	// hitNames is the size of the cache-hit query set.
	hitNames = 1000
	// dnsperf load: sockets, threads and queries kept in flight.
	dnsperfClients     = 4
	dnsperfThreads     = 1
	dnsperfOutstanding = 200
	// dnsload (saturation) load: sockets and queries in flight per socket
	// (128 in all: no server's socket buffer overflows, dnsdist's default
	// 208 KiB one included).
	dnsloadSockets = 4
	dnsloadWindow  = 32
	// readyTimeout bounds the wait for a server to answer its first query.
	readyTimeout = 10 * time.Second
	// answerA is what the upstream answers for every name under bench.
	answerA = "192.0.2.1"
)

// groupsServer labels sluice's proxy with peer groups configured: the
// groups row compares it with plain sluice in the same rounds.
const groupsServer = "sluice-groups"

// dnsServer is one contender in the DNS sections.
type dnsServer struct {
	name string // table label
	port int
	p    *proc
	na   string // why it is not running
}

const upstreamConf = `server:
  interface: 127.0.0.1@{{PORT}}
  port: {{PORT}}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{{DIR}}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  do-ip6: no
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  # answer everything locally: never recurse to the internet
  local-zone: "." static
  local-zone: "bench." redirect
  local-data: "bench. 3600 IN A 192.0.2.1"
  local-data: "bench. 3600 IN AAAA 2001:db8::1"
remote-control:
  control-enable: no
`

const unboundCacheConf = `server:
  interface: 127.0.0.1@{{PORT}}
  port: {{PORT}}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{{DIR}}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  do-ip6: no
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: no
  msg-cache-size: 64m
  rrset-cache-size: 128m
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{{UPSTREAM}}
remote-control:
  control-enable: no
`

const dnsdistConf = `setLocal('127.0.0.1:{{PORT}}')
newServer({address='127.0.0.1:{{UPSTREAM}}', checkName='bench.'})
pc = newPacketCache(100000)
getPool(''):setCache(pc)
setSecurityPollSuffix('')
`

// dnsdistTunedConf is dnsdistConf with dnsdist's batched UDP path and
// large socket buffers, its documented tuning for packet rate.
const dnsdistTunedConf = `setLocal('127.0.0.1:{{PORT}}')
newServer({address='127.0.0.1:{{UPSTREAM}}', checkName='bench.'})
pc = newPacketCache(100000)
getPool(''):setCache(pc)
setSecurityPollSuffix('')
setUDPMultipleMessagesVectorSize(32)
setUDPSocketBufferSizes(4194304, 4194304)
`

// dnsdist2Conf is dnsConf with two UDP/TCP listeners on the same address
// (SO_REUSEPORT), dnsdist's way to use two cores: one receiver thread per
// listener.
const dnsdist2Conf = `setLocal('127.0.0.1:{{PORT}}', {reusePort=true})
addLocal('127.0.0.1:{{PORT}}', {reusePort=true})
newServer({address='127.0.0.1:{{UPSTREAM}}', checkName='bench.'})
pc = newPacketCache(100000)
getPool(''):setCache(pc)
setSecurityPollSuffix('')
`

func render(tmpl string, port int, dir string) string {
	return strings.NewReplacer("{{PORT}}", strconv.Itoa(port), "{{UPSTREAM}}", strconv.Itoa(upstreamPort), "{{DIR}}", dir).Replace(tmpl)
}

// dnsSection measures cache hits and misses. Every server runs on loopback
// pinned to the server CPU; dnsperf and dnslat run on the client CPU.
func (b *bench) dnsSection(ctx context.Context) []row {
	m := b.mode
	dir := filepath.Join(b.work, "dns")
	servers := []*dnsServer{{name: "sluice", port: sluicePort}, {name: sluiceEgress, port: sluiceEgressPort}, {name: "dnsdist", port: dnsdistPort}, {name: "unbound", port: unboundPort},
		{name: groupsServer, port: groupsPort}, {name: everything, port: everythingPort}}
	// the two-core pair: measured in the same rounds, after the others
	servers2 := []*dnsServer{{name: sluice2, port: sluice2Port}, {name: dnsdist2, port: dnsdist2Port}}
	hit2QPS, hit2CPU, hit2Eff := map[string]*series{}, map[string]*series{}, map[string]*series{}
	for _, s := range servers2 {
		hit2QPS[s.name], hit2CPU[s.name], hit2Eff[s.name] = &series{}, &series{}, &series{}
	}
	ratio2DD, eff2DD := &series{}, &series{}
	// saturation (dnsload): the one-core contenders and the two-core pair
	tuned := &dnsServer{name: dnsdistTuned, port: dnsdistTunedPort}
	satNames := []string{"sluice", "dnsdist", dnsdistTuned}
	satQPS, satCPU, satEff := map[string]*series{}, map[string]*series{}, map[string]*series{}
	for _, n := range append(slices.Clone(satNames), sluice2, dnsdist2) {
		satQPS[n], satCPU[n], satEff[n] = &series{}, &series{}, &series{}
	}
	satDD, satEffDD, satTuned, satEffTuned, sat2DD, sat2EffDD := &series{}, &series{}, &series{}, &series{}, &series{}, &series{}
	// misses at missInflight queries in flight, and the differences to
	// dnsdist and unbound (sluice − anchor, same round) at both concurrencies
	missInf50, missInf99 := map[string]*series{}, map[string]*series{}
	directInf50, directInf99 := &series{}, &series{}
	type missDiff struct{ p50, p99, p50Inf, p99Inf *series }
	newDiff := func() missDiff { return missDiff{&series{}, &series{}, &series{}, &series{}} }
	vsDD, vsUB := newDiff(), newDiff()
	hitQPS := map[string]*series{}
	hitCPU := map[string]*series{}
	hitEff := map[string]*series{}
	hitP50 := map[string]*series{}
	hitP99 := map[string]*series{}
	missAdd50 := map[string]*series{}
	missAdd99 := map[string]*series{}
	for _, s := range servers {
		hitQPS[s.name], hitCPU[s.name], hitP50[s.name], hitP99[s.name] = &series{}, &series{}, &series{}, &series{}
		hitEff[s.name] = &series{}
		missAdd50[s.name], missAdd99[s.name] = &series{}, &series{}
		missInf50[s.name], missInf99[s.name] = &series{}, &series{}
	}
	direct50, direct99 := &series{}, &series{}
	ratioDD, ratioUB, effDD := &series{}, &series{}, &series{}
	ratioGroups, ratioGroupsDD, effGroups := &series{}, &series{}, &series{} // groups rows: with groups / without (QPS, per CPU-second), / dnsdist
	ratioEgress, ratioEgressDD := &series{}, &series{}
	// everything rows: ratios against plain sluice (and dnsdist), taken inside each round
	allQPS, allEff, allDD, allP50, allP99, allMiss50 := &series{}, &series{}, &series{}, &series{}, &series{}, &series{}
	rows := func() []row {
		R := m.rounds
		var out []row
		for _, s := range servers {
			out = append(out, row{figure: "DNS hits QPS — " + s.name, s: hitQPS[s.name], rounds: R})
		}
		out = append(out,
			row{figure: "DNS hits QPS ratio sluice / dnsdist", unit: "×", s: ratioDD, rounds: R, goal: atLeast(1.2, "×")},
			row{figure: "DNS hits QPS ratio sluice / unbound", unit: "×", s: ratioUB, rounds: R},
			row{figure: fmt.Sprintf("DNS hits QPS ratio sluice with %d groups, %d peers / without", benchGroups, benchPeers), unit: "×", s: ratioGroups, rounds: R, goal: atLeast(0.95, "×")},
			row{figure: fmt.Sprintf("DNS hits QPS ratio sluice with %d groups, %d peers / dnsdist", benchGroups, benchPeers), unit: "×", s: ratioGroupsDD, rounds: R, goal: atLeast(1.0, "×")},
			row{figure: "DNS hits QPS ratio sluice egress: resolved / open", unit: "×", s: ratioEgress, rounds: R, goal: atLeast(0.9, "×")},
			row{figure: "DNS hits QPS ratio sluice egress: resolved / dnsdist", unit: "×", s: ratioEgressDD, rounds: R, goal: atLeast(1.0, "×")})
		for _, s := range servers {
			out = append(out, row{figure: "DNS hits server CPU under dnsperf — " + s.name, unit: " %", s: hitCPU[s.name], rounds: R})
		}
		for _, s := range servers {
			out = append(out, row{figure: "DNS hits per server CPU-second — " + s.name, s: hitEff[s.name], rounds: R})
		}
		out = append(out, row{figure: "DNS hits per CPU-second ratio sluice / dnsdist", unit: "×", s: effDD, rounds: R, goal: atLeast(1.3, "×")},
			row{figure: fmt.Sprintf("DNS hits per CPU-second ratio sluice with %d groups, %d peers / without", benchGroups, benchPeers), unit: "×", s: effGroups, rounds: R})
		for _, s := range servers2 {
			out = append(out, row{figure: "DNS hits on two cores QPS — " + s.name, s: hit2QPS[s.name], rounds: R})
		}
		for _, s := range servers2 {
			out = append(out, row{figure: "DNS hits on two cores server CPU (of 200 %) — " + s.name, unit: " %", s: hit2CPU[s.name], rounds: R})
		}
		for _, s := range servers2 {
			out = append(out, row{figure: "DNS hits on two cores per server CPU-second — " + s.name, s: hit2Eff[s.name], rounds: R})
		}
		out = append(out,
			row{figure: "DNS hits on two cores QPS ratio sluice / dnsdist", unit: "×", s: ratio2DD, rounds: R, goal: atLeast(1.2, "×")},
			row{figure: "DNS hits on two cores per CPU-second ratio sluice / dnsdist", unit: "×", s: eff2DD, rounds: R, goal: atLeast(1.3, "×")})
		for _, n := range satNames {
			out = append(out, row{figure: "DNS hits QPS at saturation (dnsload) — " + n, s: satQPS[n], rounds: R})
		}
		for _, n := range satNames {
			out = append(out, row{figure: "DNS hits server CPU at saturation — " + n, unit: " %", s: satCPU[n], rounds: R})
		}
		for _, n := range satNames {
			out = append(out, row{figure: "DNS hits per server CPU-second at saturation — " + n, s: satEff[n], rounds: R})
		}
		out = append(out,
			row{figure: "DNS hits QPS at saturation ratio sluice / dnsdist", unit: "×", s: satDD, rounds: R, goal: atLeast(1.2, "×")},
			row{figure: "DNS hits per CPU-second at saturation ratio sluice / dnsdist", unit: "×", s: satEffDD, rounds: R, goal: atLeast(1.3, "×")},
			row{figure: "DNS hits QPS at saturation ratio sluice / " + dnsdistTuned, unit: "×", s: satTuned, rounds: R},
			row{figure: "DNS hits per CPU-second at saturation ratio sluice / " + dnsdistTuned, unit: "×", s: satEffTuned, rounds: R})
		for _, n := range []string{sluice2, dnsdist2} {
			out = append(out, row{figure: "DNS hits on two cores QPS at saturation (dnsload) — " + n, s: satQPS[n], rounds: R})
		}
		for _, n := range []string{sluice2, dnsdist2} {
			out = append(out, row{figure: "DNS hits on two cores per server CPU-second at saturation — " + n, s: satEff[n], rounds: R})
		}
		out = append(out,
			row{figure: "DNS hits on two cores QPS at saturation ratio sluice / dnsdist", unit: "×", s: sat2DD, rounds: R, goal: atLeast(1.2, "×")},
			row{figure: "DNS hits on two cores per CPU-second at saturation ratio sluice / dnsdist", unit: "×", s: sat2EffDD, rounds: R, goal: atLeast(1.3, "×")})
		for _, s := range servers {
			out = append(out,
				row{figure: "DNS hit latency p50 — " + s.name, unit: " µs", s: hitP50[s.name], rounds: R},
				row{figure: "DNS hit latency p99 — " + s.name, unit: " µs", s: hitP99[s.name], rounds: R})
		}
		out = append(out,
			row{figure: "DNS hits QPS ratio sluice everything / plain", unit: "×", s: allQPS, rounds: R},
			row{figure: "DNS hits per CPU-second ratio sluice everything / plain", unit: "×", s: allEff, rounds: R},
			row{figure: "DNS hits QPS ratio sluice everything / dnsdist", unit: "×", s: allDD, rounds: R},
			row{figure: "DNS hit latency p50 ratio sluice everything / plain", unit: "×", s: allP50, rounds: R},
			row{figure: "DNS hit latency p99 ratio sluice everything / plain", unit: "×", s: allP99, rounds: R},
			row{figure: "DNS miss added p50 ratio sluice everything / plain", unit: "×", s: allMiss50, rounds: R})
		out = append(out,
			row{figure: "DNS miss latency p50 — upstream direct", unit: " µs", s: direct50, rounds: R},
			row{figure: "DNS miss latency p99 — upstream direct", unit: " µs", s: direct99, rounds: R})
		for _, s := range servers {
			out = append(out,
				row{figure: "DNS miss added p50 — " + s.name, unit: " µs", s: missAdd50[s.name], rounds: R},
				row{figure: "DNS miss added p99 — " + s.name, unit: " µs", s: missAdd99[s.name], rounds: R})
		}
		out = append(out,
			row{figure: fmt.Sprintf("DNS miss latency p50 at %d in flight — upstream direct", missInflight), unit: " µs", s: directInf50, rounds: R},
			row{figure: fmt.Sprintf("DNS miss latency p99 at %d in flight — upstream direct", missInflight), unit: " µs", s: directInf99, rounds: R})
		for _, s := range servers {
			out = append(out,
				row{figure: fmt.Sprintf("DNS miss added p50 at %d in flight — %s", missInflight, s.name), unit: " µs", s: missInf50[s.name], rounds: R},
				row{figure: fmt.Sprintf("DNS miss added p99 at %d in flight — %s", missInflight, s.name), unit: " µs", s: missInf99[s.name], rounds: R})
		}
		inf := fmt.Sprintf(" at %d in flight", missInflight)
		out = append(out,
			row{figure: "DNS miss added p50 − dnsdist's (sluice), one at a time", unit: " µs", s: vsDD.p50, rounds: R, goal: atMost(0, " µs")},
			row{figure: "DNS miss added p99 − dnsdist's (sluice), one at a time", unit: " µs", s: vsDD.p99, rounds: R, goal: atMost(0, " µs")},
			row{figure: "DNS miss added p50 − dnsdist's (sluice)" + inf, unit: " µs", s: vsDD.p50Inf, rounds: R, goal: atMost(0, " µs")},
			row{figure: "DNS miss added p99 − dnsdist's (sluice)" + inf, unit: " µs", s: vsDD.p99Inf, rounds: R, goal: atMost(0, " µs")},
			row{figure: "DNS miss added p50 − unbound's (sluice), one at a time", unit: " µs", s: vsUB.p50, rounds: R},
			row{figure: "DNS miss added p99 − unbound's (sluice), one at a time", unit: " µs", s: vsUB.p99, rounds: R},
			row{figure: "DNS miss added p50 − unbound's (sluice)" + inf, unit: " µs", s: vsUB.p50Inf, rounds: R},
			row{figure: "DNS miss added p99 − unbound's (sluice)" + inf, unit: " µs", s: vsUB.p99Inf, rounds: R})
		return out
	}
	failAll := func(reason string) []row {
		out := rows()
		for _, r := range out {
			r.s.fail(reason)
		}
		return out
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return failAll(err.Error())
	}
	// A namespace of our own: its loopback is private, so the fixed ports
	// cannot collide with anything else running on the host.
	if err := b.enterDNSNetns(ctx, "d"); err != nil {
		return failAll(err.Error())
	}
	defer b.leaveDNSNetns()
	up, err := b.startUnbound(ctx, dir, "upstream", upstreamConf, upstreamPort)
	if err != nil {
		return failAll("upstream: " + err.Error())
	}
	defer b.r.stop(up)

	// contenders
	for _, s := range append(slices.Clone(servers), servers2...) {
		var err error
		switch s.name {
		case sluice2:
			if !b.have("dnsproxy-bench") {
				s.na = b.why("dnsproxy-bench")
				continue
			}
			// GOMAXPROCS would follow the two-CPU affinity anyway; set it
			// so the row's label holds whatever the affinity is.
			s.p, err = b.r.start("dnsproxy-bench-2cores", b.dnsns, b.cpus.both, []string{"GOMAXPROCS=2"}, filepath.Join(b.bin, "dnsproxy-bench"),
				"-listen", "127.0.0.1", "-port", strconv.Itoa(s.port), "-upstream", fmt.Sprintf("127.0.0.1:%d", upstreamPort))
			if err == nil {
				err = b.waitDNS(ctx, s.port, s.p)
			}
		case dnsdist2:
			s.p, err = b.startDnsdist(ctx, dir, "dnsdist-2cores", render(dnsdist2Conf, s.port, dir), b.cpus.both, s.port)
		case "sluice", groupsServer, sluiceEgress, everything:
			if !b.have("dnsproxy-bench") {
				s.na = b.why("dnsproxy-bench")
				continue
			}
			name, args := "dnsproxy-bench-"+s.name, []string{filepath.Join(b.bin, "dnsproxy-bench"),
				"-listen", "127.0.0.1", "-port", strconv.Itoa(s.port), "-upstream", fmt.Sprintf("127.0.0.1:%d", upstreamPort)}
			switch s.name {
			case groupsServer:
				args = append(args, "-groups", strconv.Itoa(benchGroups), "-peers", strconv.Itoa(benchPeers))
			case sluiceEgress:
				name, args = "dnsproxy-bench-egress", append(args, "-egress")
			case everything:
				// its own nftables table: the egress row's process applies "sluicebench" in the same namespace
				name, args = "dnsproxy-bench-everything", append(args, "-egress", "-table", "sluicebenchall",
					"-groups", strconv.Itoa(benchGroups), "-peers", strconv.Itoa(benchPeers),
					"-querylog", everythingLog(dir), "-trace")
			}
			s.p, err = b.r.start(name, b.dnsns, b.cpus.server, nil, args...)
			if err == nil {
				err = b.waitDNS(ctx, s.port, s.p)
			}
		case "dnsdist":
			s.p, err = b.startDnsdist(ctx, dir, "dnsdist", render(dnsdistConf, s.port, dir), b.cpus.server, s.port)
		case "unbound":
			s.p, err = b.startUnbound(ctx, dir, "unbound-cache", unboundCacheConf, s.port)
		}
		if err != nil {
			s.na = err.Error()
			b.r.stop(s.p)
			s.p = nil
		}
	}
	// the tuned dnsdist: saturation rows only
	if p, err := b.startDnsdist(ctx, dir, "dnsdist-tuned", render(dnsdistTunedConf, tuned.port, dir), b.cpus.server, tuned.port); err != nil {
		tuned.na = err.Error()
	} else {
		tuned.p = p
		defer b.r.stop(p)
	}
	satServer := map[string]*dnsServer{dnsdistTuned: tuned}
	for _, s := range append(slices.Clone(servers), servers2...) {
		if _, ok := satQPS[s.name]; ok {
			satServer[s.name] = s
		}
	}
	if !b.have("dnsload") {
		for _, x := range []*series{satDD, satEffDD, satTuned, satEffTuned, sat2DD, sat2EffDD} {
			x.fail(b.why("dnsload"))
		}
		for _, x := range satQPS {
			x.fail(b.why("dnsload"))
		}
	}
	// hitRound measures each contender of list with measure, one after
	// the other from round's turn, and records its QPS, server CPU share
	// and hits per server CPU-second in the series under its name; it
	// returns the QPS and per-CPU-second figures by name for the ratios.
	hitRound := func(round int, list []*dnsServer, qpsS, cpuS, effS map[string]*series,
		measure func(*dnsServer) (dnsperfResult, float64, error)) (qps, eff map[string]float64) {
		qps, eff = map[string]float64{}, map[string]float64{}
		for k := range list {
			s := list[(round+k)%len(list)]
			switch {
			case s.p == nil:
				qpsS[s.name].fail(s.na)
				continue
			case s.p.Exited():
				s.na = "exited: " + b.r.logTail(s.p.name, 2)
				qpsS[s.name].fail(s.na)
				continue
			}
			res, cpu, err := measure(s)
			if err != nil {
				qpsS[s.name].fail(err.Error())
				continue
			}
			qps[s.name] = res.QPS
			qpsS[s.name].add(res.QPS)
			cpuS[s.name].add(cpu)
			if cpu > 0 {
				eff[s.name] = res.QPS / (cpu / 100)
				effS[s.name].add(eff[s.name])
			}
		}
		return qps, eff
	}
	satList := func(names ...string) []*dnsServer {
		if !b.have("dnsload") {
			return nil
		}
		var list []*dnsServer
		for _, n := range names {
			list = append(list, satServer[n])
		}
		return list
	}
	ratio := func(x *series, m map[string]float64, a, b string) {
		if m[a] > 0 && m[b] > 0 {
			x.add(m[a] / m[b])
		}
	}
	for _, s := range servers {
		if s.p != nil {
			defer b.r.stop(s.p)
			continue
		}
		for _, m := range []map[string]*series{hitQPS, hitCPU, hitEff, hitP50, hitP99, missAdd50, missAdd99} {
			m[s.name].fail(s.na)
		}
		switch s.name {
		case "sluice":
			for _, x := range []*series{allQPS, allEff, allP50, allP99, allMiss50} {
				x.fail(s.na)
			}
			ratioDD.fail(s.na)
			ratioUB.fail(s.na)
			effDD.fail(s.na)
			ratioGroups.fail(s.na)
			effGroups.fail(s.na)
		case groupsServer:
			ratioGroups.fail(s.na)
			effGroups.fail(s.na)
			ratioGroupsDD.fail(s.na)
		case "dnsdist":
			ratioDD.fail(s.na)
			effDD.fail(s.na)
			ratioGroupsDD.fail(s.na)
			allDD.fail(s.na)
		case "unbound":
			ratioUB.fail(s.na)
		case sluiceEgress:
			ratioEgress.fail(s.na)
			ratioEgressDD.fail(s.na)
		case everything:
			for _, x := range []*series{allQPS, allEff, allDD, allP50, allP99, allMiss50} {
				x.fail(s.na)
			}
		}
		if s.name == "sluice" || s.name == "dnsdist" {
			for _, x := range []*series{vsDD.p50, vsDD.p99, vsDD.p50Inf, vsDD.p99Inf} {
				x.fail(s.na)
			}
		}
		if s.name == "sluice" || s.name == "unbound" {
			for _, x := range []*series{vsUB.p50, vsUB.p99, vsUB.p50Inf, vsUB.p99Inf} {
				x.fail(s.na)
			}
		}
		missInf50[s.name].fail(s.na)
		missInf99[s.name].fail(s.na)
	}
	for _, s := range servers2 {
		if s.p != nil {
			defer b.r.stop(s.p)
			continue
		}
		for _, x := range []*series{hit2QPS[s.name], hit2CPU[s.name], hit2Eff[s.name], ratio2DD, eff2DD} {
			x.fail(s.na)
		}
	}

	hits := filepath.Join(dir, "hits.txt")
	var q strings.Builder
	for i := range hitNames {
		fmt.Fprintf(&q, "q%d.bench A\n", i)
	}
	if err := os.WriteFile(hits, []byte(q.String()), 0o644); err != nil {
		return failAll(err.Error())
	}

	var logged int64 // bytes the everything row's query log wrote
	defer func() {
		logged += truncateLog(everythingLog(dir))
		b.notes = append(b.notes, everythingNote(logged))
	}()
	for round := range m.rounds {
		if ctx.Err() != nil {
			break
		}
		logged += truncateLog(everythingLog(dir))
		b.log.Info("dns round", "round", round+1, "of", m.rounds)
		// dnsperf, one contender after the other, order rotated each round
		qps, eff := hitRound(round, servers, hitQPS, hitCPU, hitEff, func(s *dnsServer) (dnsperfResult, float64, error) {
			return b.dnsperf(ctx, s, hits)
		})
		ratio(effDD, eff, "sluice", "dnsdist")
		ratio(ratioDD, qps, "sluice", "dnsdist")
		ratio(ratioUB, qps, "sluice", "unbound")
		ratio(ratioGroups, qps, groupsServer, "sluice")
		ratio(effGroups, eff, groupsServer, "sluice")
		ratio(ratioGroupsDD, qps, groupsServer, "dnsdist")
		ratio(ratioEgress, qps, sluiceEgress, "sluice")
		ratio(ratioEgressDD, qps, sluiceEgress, "dnsdist")
		ratio(allQPS, qps, everything, "sluice")
		ratio(allEff, eff, everything, "sluice")
		ratio(allDD, qps, everything, "dnsdist")

		// saturation: dnsload, which keeps the server's core full
		sq, se := hitRound(round, satList(satNames...), satQPS, satCPU, satEff, func(s *dnsServer) (dnsperfResult, float64, error) {
			return b.dnsload(ctx, s, b.cpus.client)
		})
		ratio(satDD, sq, "sluice", "dnsdist")
		ratio(satEffDD, se, "sluice", "dnsdist")
		ratio(satTuned, sq, "sluice", dnsdistTuned)
		ratio(satEffTuned, se, "sluice", dnsdistTuned)

		// hits on two cores: the pair, which goes first alternating
		qps2, eff2 := hitRound(round, servers2, hit2QPS, hit2CPU, hit2Eff, func(s *dnsServer) (dnsperfResult, float64, error) {
			return b.dnsperfOn(ctx, s, hits, b.cpus.both, dnsperfThreads2)
		})
		ratio(ratio2DD, qps2, sluice2, dnsdist2)
		ratio(eff2DD, eff2, sluice2, dnsdist2)
		sq2, se2 := hitRound(round, satList(sluice2, dnsdist2), satQPS, satCPU, satEff, func(s *dnsServer) (dnsperfResult, float64, error) {
			return b.dnsload(ctx, s, b.cpus.both)
		})
		ratio(sat2DD, sq2, sluice2, dnsdist2)
		ratio(sat2EffDD, se2, sluice2, dnsdist2)

		// latency of hits: one query at a time over the (now cached) set
		var targets []string
		for _, s := range servers {
			if s.p != nil && !s.p.Exited() {
				targets = append(targets, fmt.Sprintf("%s=127.0.0.1:%d", s.name, s.port))
			}
		}
		if len(targets) == 0 {
			continue
		}
		res, err := b.dnslat(ctx, "set", m.latQueries, targets)
		for _, s := range servers {
			r, ok := res[s.name]
			switch {
			case s.p == nil:
			case err != nil:
				hitP50[s.name].fail(err.Error())
				hitP99[s.name].fail(err.Error())
			case !ok || r.Count == 0:
				hitP50[s.name].fail("no answers")
				hitP99[s.name].fail("no answers")
			default:
				hitP50[s.name].add(r.P50us)
				hitP99[s.name].add(r.P99us)
			}
		}
		if a, p := res[everything], res["sluice"]; err == nil && a.Count > 0 && p.Count > 0 && p.P50us > 0 && p.P99us > 0 {
			allP50.add(a.P50us / p.P50us)
			allP99.add(a.P99us / p.P99us)
		}

		// latency of misses: unique names, upstream direct interleaved with
		// each contender, one at a time and then missInflight at a time
		direct := []string{fmt.Sprintf("direct=127.0.0.1:%d", upstreamPort)}
		res, err = b.dnslat(ctx, "unique", m.latQueries, append(direct, targets...))
		if d, ok := missRound(servers, res, err, direct50, direct99, missAdd50, missAdd99, vsDD.p50, vsDD.p99, vsUB.p50, vsUB.p99); ok {
			// a ratio of differences: only meaningful while plain sluice adds a positive amount
			if a, p := res[everything], res["sluice"]; a.Count > 0 && p.Count > 0 && p.P50us > d.P50us {
				allMiss50.add((a.P50us - d.P50us) / (p.P50us - d.P50us))
			}
		}
		res, err = b.dnslat(ctx, "unique", m.inflightQueries, append(direct, targets...), "-inflight", strconv.Itoa(missInflight))
		missRound(servers, res, err, directInf50, directInf99, missInf50, missInf99, vsDD.p50Inf, vsDD.p99Inf, vsUB.p50Inf, vsUB.p99Inf)
	}
	b.notes = append(b.notes, fmt.Sprintf("DNS hits at saturation: dnsload (bench/cmd/dnsload) instead of dnsperf, %d sockets × %d queries in flight, sendmmsg/recvmmsg of up to 32, every answer checked against its query (ID, question, NOERROR), %s per contender per round after a 0.5 s warm-up, in the same rounds; it keeps the server's core full (server CPU ≈ 100 %%), where dnsperf's one client core is itself the limit near 130,000 QPS, so these are the rows that say how many hits a server answers; \"%s\" is dnsdist with setUDPMultipleMessagesVectorSize(32) and 4 MiB socket buffers, its own tuning for packet rate, measured only here beside the default-configured dnsdist of every other row; on two cores dnsload shares both CPUs with the server, as dnsperf does",
		dnsloadSockets, dnsloadWindow, m.loadTime, dnsdistTuned))
	b.notes = append(b.notes, fmt.Sprintf("DNS hits on two cores: sluice's proxy (GOMAXPROCS 2: one SO_REUSEPORT UDP socket and receive loop per P) and dnsdist with two listeners on the same address (setLocal and addLocal, reusePort=true: one receiver thread each), each pinned to CPUs %s, dnsperf -c %d -T %d -q %d on the same two CPUs (it necessarily shares them) for %s per contender per round after a warm-up pass, in the same rounds as the one-core rows; server CPU is out of 200 %%, and \"per server CPU-second\" is QPS ÷ (CPU %% / 100), so it does not depend on how much of the two cores dnsperf took",
		b.cpus.both, dnsperfClients, dnsperfThreads2, dnsperfOutstanding, m.dnsperfTime))
	b.notes = append(b.notes,
		fmt.Sprintf("DNS: every server pinned to CPU %s with one worker thread (unbound num-threads 1, dnsdist one listener, sluice GOMAXPROCS from its affinity = 1); dnsperf -c %d -T %d -q %d for %s per contender per round after one warm-up pass over the %d-name set; all forward to one unbound on 127.0.0.1:%d that answers every name under bench. from local-data; everything DNS runs in a namespace of its own (private loopback, fixed ports); server CPU below 100 %% means the single-core load generator was partly the limit, so \"per server CPU-second\" (QPS ÷ server CPU share) is given as the load-independent figure; sluice's per-peer rate limit is off in the runner (all load comes from one source; the anchors have none)",
			b.cpus.server, dnsperfClients, dnsperfThreads, dnsperfOutstanding, m.dnsperfTime, hitNames, upstreamPort),
		fmt.Sprintf("DNS latency: dnslat (bench/cmd/dnslat), one query at a time, targets interleaved query by query in a fresh random order per query, %d queries per target per round; a round trip runs from just before the query's write to the kernel's receive time of its answer (SO_TIMESTAMPNS), so the client's own work after a send and its wake-up do not count (until 2026-12-07 19:45 UTC it ended at the read, which put about 16 µs of the client's send-side work into the direct round trip alone and so made every \"added\" figure that much smaller); hits cycle the cached set, misses use names never asked before (unique under bench., which the upstream answers from its local-zone redirect); \"added\" = contender percentile − direct-to-upstream percentile in the same round; \"− dnsdist's\" and \"− unbound's\" = sluice's added percentile − that anchor's, same round (goal ≤ 0: sluice adds no more than dnsdist)", m.latQueries),
		fmt.Sprintf("DNS misses at %[1]d in flight: dnslat -inflight %[1]d, %[2]d never-asked names per target per round; each target kept at %[1]d queries in flight (%[1]d workers, one socket each, the next query sent when the last is answered), every round trip recorded, ending at the answer's kernel receive time as above; targets (upstream direct and each contender) measured in turns of %[3]d queries, the order rotated every turn; \"added\" = contender percentile − direct percentile at the same concurrency, same round; dnslat runs on one core, so how fast its %[1]d workers send is its own scheduling, but a worker's wait to be run after its answer arrived is no longer part of the round trip",
			missInflight, m.inflightQueries, dnslatSlice))
	return rows()
}

// dnslatSlice is dnslat's -slice (queries per target per turn) with
// -inflight.
const dnslatSlice = 2000

// missRound records one miss measurement of dnslat -mode unique: the direct
// percentiles, each contender's added ones and sluice's added percentiles
// minus dnsdist's and unbound's. It returns the direct result and whether
// there was one.
func missRound(servers []*dnsServer, res map[string]latResult, err error, d50, d99 *series, add50, add99 map[string]*series, dd50, dd99, ub50, ub99 *series) (latResult, bool) {
	d, ok := res["direct"]
	if err != nil || !ok || d.Count == 0 {
		reason := "no direct answers"
		if err != nil {
			reason = err.Error()
		}
		for _, x := range []*series{d50, d99, dd50, dd99, ub50, ub99} {
			x.fail(reason)
		}
		return d, false
	}
	d50.add(d.P50us)
	d99.add(d.P99us)
	for _, s := range servers {
		if r, ok := res[s.name]; ok && r.Count > 0 {
			add50[s.name].add(r.P50us - d.P50us)
			add99[s.name].add(r.P99us - d.P99us)
		} else if s.p != nil {
			add50[s.name].fail("no answers")
			add99[s.name].fail("no answers")
		}
	}
	// (sluice − direct) − (anchor − direct) = sluice − anchor
	sl := res["sluice"]
	for _, c := range []struct {
		anchor   string
		p50, p99 *series
	}{{"dnsdist", dd50, dd99}, {"unbound", ub50, ub99}} {
		if a := res[c.anchor]; sl.Count > 0 && a.Count > 0 {
			c.p50.add(sl.P50us - a.P50us)
			c.p99.add(sl.P99us - a.P99us)
		}
	}
	return d, true
}

// startDnsdist writes conf to dir/name.conf, starts dnsdist with it pinned
// to cpus and waits until it answers on port.
func (b *bench) startDnsdist(ctx context.Context, dir, name, conf, cpus string, port int) (*proc, error) {
	return b.startWithConfig(ctx, dir, name, conf, cpus, port, "dnsdist", "--supervised", "--disable-syslog", "-C")
}

// startUnbound writes an unbound config, starts it pinned to the server CPU
// and waits until it answers.
func (b *bench) startUnbound(ctx context.Context, dir, name, tmpl string, port int) (*proc, error) {
	return b.startWithConfig(ctx, dir, name, render(tmpl, port, dir), b.cpus.server, port, "unbound", "-d", "-c")
}

// startWithConfig writes conf to dir/name.conf, starts the server whose
// command line is args followed by that path, pinned to cpus, and waits
// until it answers on port.
func (b *bench) startWithConfig(ctx context.Context, dir, name, conf, cpus string, port int, args ...string) (*proc, error) {
	path := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("write %s config: %w", name, err)
	}
	p, err := b.r.start(name, b.dnsns, cpus, nil, append(args, path)...)
	if err != nil {
		return nil, err
	}
	if err := b.waitDNS(ctx, port, p); err != nil {
		b.r.stop(p)
		return nil, err
	}
	return p, nil
}

// waitDNS polls until 127.0.0.1:port answers a bench. query correctly.
func (b *bench) waitDNS(ctx context.Context, port int, p *proc) error {
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("ready.bench.", dns.TypeA)
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p.Exited() {
			return fmt.Errorf("%s exited: %s", p.name, b.r.logTail(p.name, 3))
		}
		r, err := exchangeIn(c, b.dnsns, fmt.Sprintf("127.0.0.1:%d", port), m)
		if err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%s on port %d not answering after %s: %v", p.name, port, readyTimeout, last)
}

// dnsperf warms a contender up with one pass over the query file, then
// measures it; it returns the result and the server's CPU use in percent of
// one core during the measured run.
func (b *bench) dnsperf(ctx context.Context, s *dnsServer, file string) (dnsperfResult, float64, error) {
	return b.dnsperfOn(ctx, s, file, b.cpus.client, dnsperfThreads)
}

// dnsperfOn is dnsperf with the load generator on cpus with threads
// threads; the CPU share it returns is in percent of one core (up to 100 ×
// the server's cores).
func (b *bench) dnsperfOn(ctx context.Context, s *dnsServer, file, cpus string, threads int) (dnsperfResult, float64, error) {
	base := []string{"dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(s.port), "-d", file}
	out, cpuSecs, err := b.loadRun(ctx, s, s.name, cpus, append(slices.Clone(base), "-n", "1", "-q", "10", "-t", "2"),
		append(base, "-l", strconv.Itoa(int(b.mode.dnsperfTime.Seconds())), "-c", strconv.Itoa(dnsperfClients), "-T", strconv.Itoa(threads),
			"-q", strconv.Itoa(dnsperfOutstanding), "-t", "1", "-O", "suppress=timeout"))
	if err != nil {
		return dnsperfResult{}, 0, err
	}
	res, err := parseDnsperf(out)
	if err != nil {
		return res, 0, err
	}
	if res.Sent == 0 || float64(res.Completed) < 0.99*float64(res.Sent) {
		return res, 0, fmt.Errorf("dnsperf %s: only %d of %d queries answered", s.name, res.Completed, res.Sent)
	}
	// The server is idle outside dnsperf's sending window, so its CPU time
	// over that window is the whole delta.
	if res.RunTime <= 0 {
		return res, 0, fmt.Errorf("dnsperf %s: zero run time", s.name)
	}
	return res, 100 * cpuSecs / res.RunTime, nil
}

// loadRun runs a load generator against s's server: warm (a warm-up pass)
// and then run, both pinned to cpus. It returns run's output and the CPU
// seconds the server used during it; label names the run in errors.
func (b *bench) loadRun(ctx context.Context, s *dnsServer, label, cpus string, warm, run []string) (string, float64, error) {
	if _, err := b.r.run(ctx, b.dnsns, cpus, nil, warm...); err != nil {
		return "", 0, fmt.Errorf("warm up %s: %w", label, err)
	}
	c0, err := cpuSeconds(s.p.Pid())
	if err != nil {
		return "", 0, err
	}
	out, err := b.r.run(ctx, b.dnsns, cpus, nil, run...)
	if err != nil {
		return "", 0, fmt.Errorf("%s %s: %w", filepath.Base(run[0]), label, err)
	}
	c1, err := cpuSeconds(s.p.Pid())
	if err != nil {
		return "", 0, err
	}
	return out, c1 - c0, nil
}

// dnsload runs the saturating load generator (bench/cmd/dnsload) against
// s on cpus, after a short warm-up pass, and returns its result with the
// server's CPU share over the run (percent of one core).
func (b *bench) dnsload(ctx context.Context, s *dnsServer, cpus string) (dnsperfResult, float64, error) {
	args := func(d time.Duration) []string {
		return []string{filepath.Join(b.bin, "dnsload"), "-target", fmt.Sprintf("127.0.0.1:%d", s.port), "-l", d.String(),
			"-sockets", strconv.Itoa(dnsloadSockets), "-window", strconv.Itoa(dnsloadWindow), "-set-size", strconv.Itoa(hitNames)}
	}
	out, cpuSecs, err := b.loadRun(ctx, s, s.name, cpus, args(500*time.Millisecond), args(b.mode.loadTime))
	if err != nil {
		return dnsperfResult{}, 0, err
	}
	var lr struct {
		Sent, Completed, Lost, Mismatched int64
		RunTime                           float64 `json:"run_time_s"`
		QPS                               float64
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &lr); err != nil {
		return dnsperfResult{}, 0, fmt.Errorf("parse dnsload output: %w", err)
	}
	res := dnsperfResult{Sent: int(lr.Sent), Completed: int(lr.Completed), QPS: lr.QPS, RunTime: lr.RunTime}
	// Up to the window is still in flight when the run ends (not counted).
	if lr.Sent == 0 || lr.RunTime <= 0 || lr.Mismatched > 0 || float64(lr.Completed) < 0.99*float64(lr.Sent) {
		return res, 0, fmt.Errorf("dnsload %s: %d of %d queries answered, %d lost, %d wrong answers", s.name, lr.Completed, lr.Sent, lr.Lost, lr.Mismatched)
	}
	return res, 100 * cpuSecs / lr.RunTime, nil
}

// dnslat runs the latency client pinned to the client CPU.
func (b *bench) dnslat(ctx context.Context, mode string, n int, targets []string, extra ...string) (map[string]latResult, error) {
	args := append([]string{filepath.Join(b.bin, "dnslat"), "-mode", mode, "-n", strconv.Itoa(n), "-set-size", strconv.Itoa(hitNames),
		"-want-a", answerA, "-slice", strconv.Itoa(dnslatSlice), "-targets", strings.Join(targets, ",")}, extra...)
	out, err := b.r.run(ctx, b.dnsns, b.cpus.client, nil, args...)
	if err != nil {
		return nil, err
	}
	return parseDnslat(out)
}

// enterDNSNetns creates the namespace the DNS contenders run in.
func (b *bench) enterDNSNetns(ctx context.Context, suffix string) error {
	ns := b.runID + suffix
	if err := b.r.addNetns(ctx, ns); err != nil {
		return err
	}
	b.dnsns = ns
	return nil
}

// leaveDNSNetns deletes it (and kills whatever still runs there).
func (b *bench) leaveDNSNetns() {
	if err := b.r.delNetns(b.dnsns); err != nil {
		b.log.Warn("delete namespace", "err", err)
	}
	b.dnsns = ""
}

// dialUDPIn opens a UDP socket inside namespace ns (the host's own when ns
// is empty) connected to addr. The socket keeps its namespace after the
// thread switches back.
func dialUDPIn(ns, addr string) (net.Conn, error) {
	if ns == "" {
		return net.Dial("udp", addr)
	}
	var c net.Conn
	err := nsexec.InNamed(ns, func() (err error) {
		c, err = net.Dial("udp", addr)
		return err
	})
	return c, err
}

// exchangeIn sends one query over a fresh socket in namespace ns.
func exchangeIn(c *dns.Client, ns, addr string, m *dns.Msg) (*dns.Msg, error) {
	conn, err := dialUDPIn(ns, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	r, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
	return r, err
}

// everythingLog is the everything row's query log file.
func everythingLog(dir string) string { return filepath.Join(dir, "everything-querylog.json") }

// truncateLog empties the query log file between rounds, so that a full run
// does not fill the disk, and returns how many bytes it held. The proxy
// opened it for append: its next record lands at the new end.
func truncateLog(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if err := os.Truncate(path, 0); err != nil {
		return 0
	}
	return fi.Size()
}

// everythingNote says what the everything row ran with, and how much its
// query log wrote (the log drops rather than block when its queue is full).
func everythingNote(logged int64) string {
	return fmt.Sprintf("DNS \"%s\": egress: resolved (own nftables table in the bench namespace), %d groups and %d peers, the query log written to a file in the bench's temporary directory (emptied between rounds; %.1f MB written in all), and a trace (dnsproxy Tap on the load generator's address, every record JSON-encoded and discarded, as `sluice peer trace` does) attached for the whole run; its ratios against plain sluice are taken inside each round",
		everything, benchGroups, benchPeers, float64(logged)/1e6)
}
