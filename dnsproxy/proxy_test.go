package dnsproxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// TestHealth: an upstream is ejected after Failures consecutive failures
// (and moves to the back), and an active check re-admits it.
func TestHealth(t *testing.T) {
	var down atomic.Bool
	flaky := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		if down.Load() {
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeServerFailure)
			w.WriteMsg(m)
			return
		}
		answerA("10.30.0.53", 0)(w, r)
	})
	dead := closedPort(t)
	cfg := testConfig(dead, flaky.addr)
	cfg.Health = HealthConfig{Name: "health.example.", Interval: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, Failures: 2}
	p, reg := startProxy(t, cfg, Options{})
	healthy := func(up string) float64 {
		return gatherValue(t, reg, `sluice_dns_upstream_healthy{group="default",upstream="`+up+`"}`)
	}
	waitFor(t, "dead upstream ejected", func() bool { return healthy(dead) == 0 })
	if healthy(flaky.addr) != 1 {
		t.Errorf("working upstream not healthy")
	}
	if got := flaky.count("health.example."); got == 0 {
		t.Errorf("no active checks with the configured name")
	}
	down.Store(true)
	waitFor(t, "servfailing upstream ejected", func() bool { return healthy(flaky.addr) == 0 })
	down.Store(false)
	waitFor(t, "upstream re-admitted", func() bool { return healthy(flaky.addr) == 1 })
	st := p.Stats()
	if len(st.Upstreams) != 2 || st.Upstreams[0].Group != "default" {
		t.Fatalf("stats upstreams %+v", st.Upstreams)
	}
	for _, u := range st.Upstreams {
		if (u.Addr == dead) == u.Healthy {
			t.Errorf("stats %+v", u)
		}
	}
	// Ejected upstreams go last: the query is answered without waiting on the dead one.
	start := time.Now()
	r := ask(t, p, "udp", "order.example.", dns.TypeA, 0)
	if firstA(t, r) != "10.30.0.53" || time.Since(start) > 300*time.Millisecond {
		t.Errorf("healthy upstream not tried first (%v)", time.Since(start))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestListenersV4V6AndRebind: UDP and TCP on an IPv4 and an IPv6 address;
// Reload with a different Listen rebinds, otherwise the sockets stay.
func TestListenersV4V6AndRebind(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 60))
	cfg := testConfig(up.addr)
	cfg.Listen = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	p, _ := startProxy(t, cfg, Options{})
	addrs := p.Addrs()
	if len(addrs) != 4 {
		t.Fatalf("Addrs() = %v, want udp+tcp for two addresses", addrs)
	}
	for _, a := range addrs {
		c := &dns.Client{Net: a.Network(), Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("v6.example.", dns.TypeA)
		r, _, err := c.Exchange(m, a.String())
		if err != nil || firstA(t, r) != "10.30.0.53" {
			t.Errorf("%s %s: %v %v", a.Network(), a, r, err)
		}
	}
	cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(up.addr)}}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if after := p.Addrs(); after[0].String() != addrs[0].String() || after[2].String() != addrs[2].String() {
		t.Errorf("reload without Listen change rebound: %v → %v", addrs, after)
	}
	cfg.Listen = []netip.Addr{netip.MustParseAddr("::1")}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	after := p.Addrs()
	if len(after) != 2 || after[0].String() != addrs[2].String() {
		t.Errorf("after dropping 127.0.0.1: %v", after)
	}
	if _, err := net.DialTimeout("tcp", addrs[1].String(), time.Second); err == nil {
		t.Errorf("old TCP listener %s still accepts", addrs[1])
	}
}

func TestQueryLog(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	path := filepath.Join(t.TempDir(), "query.log")
	cfg := testConfig(up.addr)
	cfg.QueryLog.Path = path
	p, err := New(cfg, Options{Registerer: prometheus.NewRegistry(), Identities: IdentityMap{
		netip.MustParseAddr("127.0.0.1"): {Name: "alice/laptop", V4: netip.MustParseAddr("127.0.0.1")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	ask(t, p, "udp", "log.example.", dns.TypeA, 0)
	ask(t, p, "udp", "LOG.example.", dns.TypeA, 0)
	ask(t, p, "udp", "dns.google.", dns.TypeA, 0)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("query log file: %v %v", fi, err)
	}
	f, _ := os.Open(path)
	defer f.Close()
	var recs []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		recs = append(recs, m)
	}
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3: %v", len(recs), recs)
	}
	want := []map[string]any{
		{"peer": "alice/laptop", "name": "log.example.", "type": "A", "rcode": "NOERROR", "group": "default", "upstream": up.addr, "cache_hit": false, "blocked": ""},
		{"name": "LOG.example.", "rcode": "NOERROR", "group": "default", "upstream": "", "cache_hit": true},
		{"name": "dns.google.", "rcode": "NXDOMAIN", "group": localGroup, "blocked": reasonDoH},
	}
	for i, w := range want {
		for k, v := range w {
			if recs[i][k] != v {
				t.Errorf("record %d: %s = %v, want %v", i, k, recs[i][k], v)
			}
		}
		for _, k := range []string{"time", "client", "latency_ms"} {
			if _, ok := recs[i][k]; !ok {
				t.Errorf("record %d lacks %s", i, k)
			}
		}
	}
}

func TestMetrics(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	cfg := testConfig(up.addr)
	cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(closedPort(t))}}
	p, reg := startProxy(t, cfg, Options{})
	ask(t, p, "udp", "m.example.", dns.TypeA, 0)
	ask(t, p, "udp", "m.example.", dns.TypeA, 0)
	ask(t, p, "tcp", "m.example.", dns.TypeMX, 0)
	ask(t, p, "udp", "m.example.", dns.TypeNULL, 0)
	ask(t, p, "udp", "x.corp.example.", dns.TypeA, 0)
	for name, want := range map[string]float64{
		`sluice_dns_queries_total{group="default",qtype="A",rcode="NOERROR"}`:       2,
		`sluice_dns_queries_total{group="default",qtype="MX",rcode="NOERROR"}`:      1,
		`sluice_dns_queries_total{group="default",qtype="other",rcode="NOERROR"}`:   1,
		`sluice_dns_queries_total{group="corp.example",qtype="A",rcode="SERVFAIL"}`: 1,
		`sluice_dns_cache_hits_total`:                                               1,
		`sluice_dns_cache_misses_total`:                                             4,
		`sluice_dns_cache_entries`:                                                  1, // MX and NULL: NODATA without SOA, not cached
	} {
		if got := gatherValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := gatherValue(t, reg, `sluice_dns_upstream_errors_total{group="corp.example",kind="network",upstream="`+p.st.Load().groups[0].ups[0].label+`"}`); got != 1 {
		t.Errorf("upstream_errors network = %v", got)
	}
	if got := gatherValue(t, reg, `sluice_dns_request_duration_seconds_count`); got != 5 {
		t.Errorf("request duration count %v", got)
	}
	st := p.Stats()
	if st.Queries != 5 || st.ByRcode["NOERROR"] != 4 || st.ByRcode["SERVFAIL"] != 1 {
		t.Errorf("stats %+v", st)
	}
	// A second proxy on the same registerer fails cleanly; after Close it works.
	if _, err := New(cfg, Options{Registerer: reg}); err == nil {
		t.Errorf("double registration accepted")
	}
}

// gatherValue returns the value of one series written as name{labels} (labels sorted).
func gatherValue(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			id := mf.GetName()
			if len(m.GetLabel()) > 0 {
				id += "{"
				for i, l := range m.GetLabel() {
					if i > 0 {
						id += ","
					}
					id += l.GetName() + `="` + l.GetValue() + `"`
				}
				id += "}"
			}
			switch {
			case id == series && m.Counter != nil:
				return m.GetCounter().GetValue()
			case id == series && m.Gauge != nil:
				return m.GetGauge().GetValue()
			case id+"_count" == series && m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

// TestMaxInflight: beyond the cap, misses get SERVFAIL at once.
func TestMaxInflight(t *testing.T) {
	release := make(chan struct{})
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		<-release
		answerA("10.30.0.53", 60)(w, r)
	})
	cfg := testConfig(up.addr)
	cfg.Limits.MaxInflight = 1
	cfg.UpstreamTimeout = 2 * time.Second
	cfg.Deadline = 2 * time.Second
	p, reg := startProxy(t, cfg, Options{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m := new(dns.Msg)
		m.SetQuestion("slow1.example.", dns.TypeA)
		p.Exchange(t.Context(), m, netip.MustParseAddr("127.0.0.1"))
	}()
	waitFor(t, "first query upstream", func() bool { return up.total.Load() == 1 })
	start := time.Now()
	r := ask(t, p, "udp", "slow2.example.", dns.TypeA, 1232)
	if r.Rcode != dns.RcodeServerFailure || time.Since(start) > 500*time.Millisecond {
		t.Errorf("over the cap: %s after %v", dns.RcodeToString[r.Rcode], time.Since(start))
	}
	close(release)
	wg.Wait()
	if got := gatherValue(t, reg, "sluice_dns_upstream_overload_total"); got != 1 {
		t.Errorf("overload counter %v", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"bad upstream": func(c *Config) {
			c.Default.Upstreams = []Upstream{{Proto: ProtoTLS, Addr: netip.MustParseAddrPort("1.1.1.1:853")}}
		},
		"empty zone":   func(c *Config) { c.Zones = []Zone{{Name: "", Upstreams: MustParseUpstreams("10.30.0.53")}} },
		"no upstreams": func(c *Config) { c.Zones = []Zone{{Name: "corp.example"}} },
		"dup zone": func(c *Config) {
			c.Zones = []Zone{{Name: "a.example", Upstreams: MustParseUpstreams("10.30.0.53")}, {Name: "A.example.", Upstreams: MustParseUpstreams("10.30.0.54")}}
		},
		"missing ca":    func(c *Config) { c.TLSCAFile = "/nonexistent/ca.pem" },
		"negative size": func(c *Config) { c.Cache.Size = -1 },
	} {
		cfg := testConfig("10.30.0.53")
		mut(&cfg)
		if _, err := New(cfg, Options{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	d := DefaultConfig()
	if d.Port != 53 || d.EDNSBufferSize != 1232 || d.Cache.Size != 100000 || !d.Policy.Canaries || !d.Policy.BlockDoHNames ||
		d.Deadline >= 2*time.Second || d.UpstreamTimeout*2 > d.Deadline {
		t.Errorf("DefaultConfig %+v", d)
	}
}

// TestReloadUnderLoad: queries keep being answered, without races, while
// the configuration is swapped repeatedly; no query reaches a group that
// does not own its zone in the configuration of the moment.
func TestReloadUnderLoad(t *testing.T) {
	a := startFake(t, answerA("10.30.0.1", 1))
	b := startFake(t, answerA("10.30.0.2", 1))
	cfg := testConfig(b.addr)
	cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(a.addr)}}
	p, _ := startProxy(t, cfg, Options{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var answered atomic.Int64
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
			addr := proxyAddr(t, p, "udp")
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				m := new(dns.Msg)
				m.SetQuestion(fmtName("h%d.corp.example.", (i*1000+j)%50), dns.TypeA)
				r, _, err := c.Exchange(m, addr)
				if err != nil {
					t.Errorf("query during reload: %v", err)
					return
				}
				if r.Rcode == dns.RcodeSuccess {
					answered.Add(1)
				}
			}
		}()
	}
	for i := range 20 {
		c := cfg
		c.Policy.Allowlist = []string{fmtName("n%d.example", i)}
		c.Limits.PeerQPS = 0
		if err := p.Reload(c); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if answered.Load() == 0 {
		t.Errorf("no query answered during reloads")
	}
	if b.total.Load() != 0 {
		t.Errorf("default group received %d corp queries", b.total.Load())
	}
}

// TestQueryLogReopen: after logrotate renames the file, a reload makes the
// proxy write to a new file at the same path; nothing is lost on the way.
func TestQueryLogReopen(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	path := filepath.Join(t.TempDir(), "query.log")
	cfg := testConfig(up.addr)
	cfg.QueryLog.Path = path
	p, _ := startProxy(t, cfg, Options{})
	ask(t, p, "udp", "before.example.", dns.TypeA, 0)
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	ask(t, p, "udp", "after.example.", dns.TypeA, 0)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{rotated: "before.example.", path: "after.example."} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Count(string(b), "\n"); lines != 1 || !strings.Contains(string(b), `"name":"`+want+`"`) {
			t.Errorf("%s: %d records, want one for %s:\n%s", file, lines, want, b)
		}
	}
}

// TestTap: a tap sees the queries of its addresses only — misses, hits and
// blocked names — and nothing after stop.
func TestTap(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 300))
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	other, stopOther := p.Tap([]netip.Addr{netip.MustParseAddr("127.0.0.9")}, 16)
	defer stopOther()
	recs, stop := p.Tap([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, 16)
	ask(t, p, "udp", "tap.example.", dns.TypeA, 0)
	ask(t, p, "udp", "tap.example.", dns.TypeA, 0)
	ask(t, p, "tcp", "dns.google.", dns.TypeAAAA, 0)
	want := []QueryRecord{
		{Name: "tap.example.", Type: "A", Rcode: "NOERROR", Group: "default", Upstream: up.addr},
		{Name: "tap.example.", Type: "A", Rcode: "NOERROR", Group: "default", CacheHit: true},
		{Name: "dns.google.", Type: "AAAA", Rcode: "NXDOMAIN", Group: localGroup, Blocked: reasonDoH},
	}
	for i, w := range want {
		select {
		case r := <-recs:
			if r.Name != w.Name || r.Type != w.Type || r.Rcode != w.Rcode || r.Group != w.Group ||
				r.Upstream != w.Upstream || r.CacheHit != w.CacheHit || r.Blocked != w.Blocked {
				t.Errorf("record %d = %+v, want %+v", i, r, w)
			}
			if r.Client.Addr() != netip.MustParseAddr("127.0.0.1") || r.Time.IsZero() || r.Latency <= 0 {
				t.Errorf("record %d: client %v, time %v, latency %v", i, r.Client, r.Time, r.Latency)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("record %d (%s) never came", i, w.Name)
		}
	}
	stop()
	ask(t, p, "udp", "after-stop.example.", dns.TypeA, 0)
	select {
	case r := <-recs:
		t.Errorf("record after stop: %+v", r)
	case r := <-other:
		t.Errorf("a tap of another address got %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestQueryLogDrains: records that come while the writer is busy (it
// drains every logDrainEvery instead of waking for each) are all written
// without waiting for Close, and so is one that comes after it went idle
// again.
func TestQueryLogDrains(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.log")
	l, err := openQueryLog(QueryLogConfig{Path: path, Buffer: DefaultQueryLogBuffer}, nil, prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go l.run(ctx)
	t.Cleanup(func() { cancel(); <-l.done })
	lines := func(want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(path)
			n := strings.Count(string(b), "\n")
			if n == want {
				return
			}
			if n > want || time.Now().After(deadline) {
				t.Fatalf("%d records in the log, want %d", n, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	const burst = 3000
	for i := range burst {
		l.add(logRecord{time: time.Now(), name: fmt.Sprintf("n%d.example.", i), qtype: dns.TypeA})
		if i%500 == 0 {
			time.Sleep(3 * logDrainEvery) // a few ticks inside the burst
		}
	}
	lines(burst)
	time.Sleep(10 * logDrainEvery) // idle again
	l.add(logRecord{time: time.Now(), name: "last.example.", qtype: dns.TypeA})
	lines(burst + 1)
}
