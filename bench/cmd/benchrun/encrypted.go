package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-vpn/sluice/tlsca"
)

// Ports of the encrypted section (its own namespace, so they only need to
// differ from each other).
const (
	sluiceDoTPort  = 5411
	sluiceDoHPort  = 5412
	dnsdistDoTPort = 5421
	dnsdistDoHPort = 5422
	// encServerName is the name in the benchmark's server certificate.
	encServerName = "dns.bench.test"
)

const dnsdistEncConf = `setLocal('127.0.0.1:{{PORT}}')
addTLSLocal('127.0.0.1:{{DOT}}', '{{CERT}}', '{{KEY}}')
addDOHLocal('127.0.0.1:{{DOH}}', '{{CERT}}', '{{KEY}}', '/dns-query')
newServer({address='127.0.0.1:{{UPSTREAM}}', checkName='bench.'})
pc = newPacketCache(100000)
getPool(''):setCache(pc)
setSecurityPollSuffix('')
`

// encContender is one server with a DoT and a DoH listener.
type encContender struct {
	dnsServer
	dot, doh int
}

// encryptedSection measures DoT and DoH cache hits on reused connections:
// throughput with dnsperf -m dot / -m doh (4 connections, 200 queries in
// flight, each connection kept for the whole run) and one-at-a-time latency
// with enclat, sluice's proxy against dnsdist's DoT and DoH listeners, both
// with the same certificate and the same upstream.
func (b *bench) encryptedSection(ctx context.Context) []row {
	m := b.mode
	dir := filepath.Join(b.work, "encrypted")
	servers := []*encContender{
		{dnsServer: dnsServer{name: "sluice", port: sluicePort}, dot: sluiceDoTPort, doh: sluiceDoHPort},
		{dnsServer: dnsServer{name: "dnsdist", port: dnsdistPort}, dot: dnsdistDoTPort, doh: dnsdistDoHPort},
	}
	transports := []string{"dot", "doh"}
	type key struct{ tr, srv string }
	qps, cpu, p50, p99 := map[key]*series{}, map[key]*series{}, map[key]*series{}, map[key]*series{}
	ratio := map[string]*series{}
	for _, tr := range transports {
		ratio[tr] = &series{}
		for _, s := range servers {
			k := key{tr, s.name}
			qps[k], cpu[k], p50[k], p99[k] = &series{}, &series{}, &series{}, &series{}
		}
	}
	label := map[string]string{"dot": "DoT", "doh": "DoH"}
	rows := func() []row {
		R := m.encRounds
		var out []row
		for _, tr := range transports {
			for _, s := range servers {
				out = append(out, row{figure: label[tr] + " hits QPS — " + s.name, s: qps[key{tr, s.name}], rounds: R})
			}
			out = append(out, row{figure: label[tr] + " hits QPS ratio sluice / dnsdist", unit: "×", s: ratio[tr], rounds: R, goal: atLeast(1.0, "×")})
			for _, s := range servers {
				out = append(out, row{figure: label[tr] + " hits server CPU under dnsperf — " + s.name, unit: " %", s: cpu[key{tr, s.name}], rounds: R})
			}
			for _, s := range servers {
				out = append(out,
					row{figure: label[tr] + " hit latency p50 — " + s.name, unit: " µs", s: p50[key{tr, s.name}], rounds: R},
					row{figure: label[tr] + " hit latency p99 — " + s.name, unit: " µs", s: p99[key{tr, s.name}], rounds: R})
			}
		}
		return out
	}
	failAll := func(reason string) []row {
		out := rows()
		for _, r := range out {
			r.s.fail(reason)
		}
		return out
	}
	if !b.have("enclat") {
		return failAll(b.why("enclat"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return failAll(err.Error())
	}
	// One certificate for both, from sluice's own CA code.
	paths, _, err := tlsca.Ensure(filepath.Join(dir, "tls"), encServerName, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, time.Now())
	if err != nil {
		return failAll(err.Error())
	}
	if err := b.enterDNSNetns(ctx, "e"); err != nil {
		return failAll(err.Error())
	}
	defer b.leaveDNSNetns()
	up, err := b.startUnbound(ctx, dir, "upstream", upstreamConf, upstreamPort)
	if err != nil {
		return failAll("upstream: " + err.Error())
	}
	defer b.r.stop(up)

	for _, s := range servers {
		var err error
		switch s.name {
		case "sluice":
			if !b.have("dnsproxy-bench") {
				s.na = b.why("dnsproxy-bench")
				continue
			}
			s.p, err = b.r.start("dnsproxy-bench-enc", b.dnsns, b.cpus.server, nil, filepath.Join(b.bin, "dnsproxy-bench"),
				"-listen", "127.0.0.1", "-port", strconv.Itoa(s.port), "-upstream", fmt.Sprintf("127.0.0.1:%d", upstreamPort),
				"-dot-port", strconv.Itoa(s.dot), "-doh-port", strconv.Itoa(s.doh),
				"-cert", paths.Cert, "-key", paths.Key, "-server-name", encServerName)
			if err == nil {
				err = b.waitDNS(ctx, s.port, s.p)
			}
		case "dnsdist":
			text := strings.NewReplacer("{{DOT}}", strconv.Itoa(s.dot), "{{DOH}}", strconv.Itoa(s.doh),
				"{{CERT}}", paths.Cert, "{{KEY}}", paths.Key).Replace(render(dnsdistEncConf, s.port, dir))
			s.p, err = b.startDnsdist(ctx, dir, "dnsdist-enc", text, b.cpus.server, s.port)
		}
		if err != nil {
			s.na = err.Error()
			b.r.stop(s.p)
			s.p = nil
		}
	}
	for _, s := range servers {
		if s.p != nil {
			defer b.r.stop(s.p)
			continue
		}
		for _, tr := range transports {
			k := key{tr, s.name}
			for _, x := range []*series{qps[k], cpu[k], p50[k], p99[k], ratio[tr]} {
				x.fail(s.na)
			}
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
	for round := range m.encRounds {
		if ctx.Err() != nil {
			break
		}
		b.log.Info("encrypted dns round", "round", round+1, "of", m.encRounds)
		for _, tr := range transports {
			got := map[string]float64{}
			for k := range servers {
				s := servers[(round+k)%len(servers)]
				if s.p == nil {
					continue
				}
				if s.p.Exited() {
					s.na = "exited: " + b.r.logTail(s.p.name, 2)
					qps[key{tr, s.name}].fail(s.na)
					continue
				}
				port := s.dot
				if tr == "doh" {
					port = s.doh
				}
				res, c, err := b.dnsperfEnc(ctx, s, tr, port, hits, paths.CA)
				if err != nil {
					qps[key{tr, s.name}].fail(err.Error())
					continue
				}
				got[s.name] = res.QPS
				qps[key{tr, s.name}].add(res.QPS)
				cpu[key{tr, s.name}].add(c)
			}
			if got["sluice"] > 0 && got["dnsdist"] > 0 {
				ratio[tr].add(got["sluice"] / got["dnsdist"])
			}
		}
		var targets []string
		for _, s := range servers {
			if s.p != nil && !s.p.Exited() {
				targets = append(targets,
					fmt.Sprintf("%s-dot=dot://127.0.0.1:%d", s.name, s.dot),
					fmt.Sprintf("%s-doh=https://127.0.0.1:%d/dns-query", s.name, s.doh))
			}
		}
		if len(targets) == 0 {
			continue
		}
		out, err := b.r.run(ctx, b.dnsns, b.cpus.client, nil, filepath.Join(b.bin, "enclat"),
			"-n", strconv.Itoa(m.latQueries/4), "-set-size", strconv.Itoa(hitNames),
			"-ca", paths.CA, "-server-name", encServerName, "-targets", strings.Join(targets, ","))
		var res map[string]latResult
		if err == nil {
			res, err = parseDnslat(out)
		}
		for _, s := range servers {
			for _, tr := range transports {
				k := key{tr, s.name}
				r, ok := res[s.name+"-"+tr]
				switch {
				case s.p == nil:
				case err != nil:
					p50[k].fail(err.Error())
					p99[k].fail(err.Error())
				case !ok || r.Count == 0:
					p50[k].fail("no answers")
					p99[k].fail("no answers")
				default:
					p50[k].add(r.P50us)
					p99[k].add(r.P99us)
				}
			}
		}
	}
	b.notes = append(b.notes, fmt.Sprintf("DoT/DoH: sluice's proxy and dnsdist (addTLSLocal, addDOHLocal; same ECDSA P-256 certificate from sluice's tlsca, same packet cache size, same upstream) pinned to CPU %s; DoT load from dnsperf -m dot -c %d -T %d -q %d for %s per contender per round after a warm-up pass; DoH load from enclat -load (HTTP/2 POST, %[2]d connections, %[4]d queries in flight, same duration; Debian's dnsperf 2.10 counts most DoH answers of either server as lost), connections kept for the whole run; latency from enclat (bench/cmd/enclat), one query at a time over one kept connection per target, certificate verified, %[6]d queries per target per round; no HTTP/3 (sluice does not serve it)",
		b.cpus.server, dnsperfClients, dnsperfThreads, dnsperfOutstanding, m.dnsperfTime, m.latQueries/4))
	return rows()
}

// dnsperfEnc is dnsperf for DoT (dnsperf does not verify the certificate;
// enclat does) and enclat's load mode for DoH: Debian's dnsperf 2.10
// counts most HTTP 200 DoH answers as lost, against either server.
func (b *bench) dnsperfEnc(ctx context.Context, s *encContender, tr string, port int, file, ca string) (dnsperfResult, float64, error) {
	if tr == "doh" {
		return b.enclatLoad(ctx, s, port, ca)
	}
	base := []string{"dnsperf", "-m", tr, "-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", file}
	label := s.name + " " + tr
	out, cpuSecs, err := b.loadRun(ctx, &s.dnsServer, label, b.cpus.client, append(slices.Clone(base), "-n", "1", "-q", "10", "-t", "2"),
		append(base, "-l", strconv.Itoa(int(b.mode.dnsperfTime.Seconds())), "-c", strconv.Itoa(dnsperfClients), "-T", strconv.Itoa(dnsperfThreads),
			"-q", strconv.Itoa(dnsperfOutstanding), "-t", "1", "-O", "suppress=timeout"))
	if err != nil {
		return dnsperfResult{}, 0, err
	}
	res, err := parseDnsperf(out)
	if err != nil {
		return res, 0, err
	}
	if res.Sent == 0 || float64(res.Completed) < 0.99*float64(res.Sent) {
		return res, 0, fmt.Errorf("dnsperf %s: only %d of %d queries answered", label, res.Completed, res.Sent)
	}
	if res.RunTime <= 0 {
		return res, 0, fmt.Errorf("dnsperf %s: zero run time", label)
	}
	return res, 100 * cpuSecs / res.RunTime, nil
}

// enclatLoad measures DoH throughput with enclat's load mode (same
// connection count and queries in flight as dnsperf elsewhere) after a
// one-second warm-up, and the server's CPU share meanwhile.
func (b *bench) enclatLoad(ctx context.Context, s *encContender, port int, ca string) (dnsperfResult, float64, error) {
	args := func(d time.Duration) []string {
		return []string{filepath.Join(b.bin, "enclat"), "-load", d.String(), "-conns", strconv.Itoa(dnsperfClients),
			"-inflight", strconv.Itoa(dnsperfOutstanding), "-set-size", strconv.Itoa(hitNames), "-ca", ca, "-server-name", encServerName,
			"-targets", fmt.Sprintf("%s=https://127.0.0.1:%d/dns-query", s.name, port)}
	}
	out, cpuSecs, err := b.loadRun(ctx, &s.dnsServer, s.name+" doh", b.cpus.client, args(time.Second), args(b.mode.dnsperfTime))
	if err != nil {
		return dnsperfResult{}, 0, err
	}
	var lr struct {
		Sent, Completed int
		QPS             float64
		RunTime         float64 `json:"run_time_s"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &lr); err != nil {
		return dnsperfResult{}, 0, fmt.Errorf("parse enclat load output: %w", err)
	}
	res := dnsperfResult{Sent: lr.Sent, Completed: lr.Completed, QPS: lr.QPS, RunTime: lr.RunTime}
	if res.Sent == 0 || float64(res.Completed) < 0.99*float64(res.Sent) || res.RunTime <= 0 {
		return res, 0, fmt.Errorf("enclat load %s doh: only %d of %d queries answered", s.name, res.Completed, res.Sent)
	}
	return res, 100 * cpuSecs / res.RunTime, nil
}
