package dnsproxy

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// TestProbeNotCounted: the proxy's own probes (a canary, a miss, then a
// hit) are answered like a client's but appear nowhere a client's query
// does: query and cache counters, blocked counters, the query log, taps.
// A client query afterwards is counted and logged as before.
func TestProbeNotCounted(t *testing.T) {
	up := startFake(t, answerA("198.51.100.7", 300))
	path := filepath.Join(t.TempDir(), "query.log")
	cfg := testConfig(up.addr)
	cfg.QueryLog.Path = path
	// The ACL does not list loopback yet: probes pass it.
	cfg.AllowedSources = []netip.Prefix{netip.MustParsePrefix("10.20.0.0/24")}
	reg := prometheus.NewRegistry()
	p, err := New(cfg, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			p.Close()
		}
	})
	recs, stop := p.Tap([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, 16)
	defer stop()
	server := netip.MustParseAddrPort(proxyAddr(t, p, "udp"))

	probe := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		r, rtt, err := p.Probe(t.Context(), server, q)
		if err != nil {
			t.Fatalf("probe %s: %v", name, err)
		}
		if r.Id != q.Id || rtt <= 0 {
			t.Fatalf("probe %s: answer id %d for query %d, rtt %v", name, r.Id, q.Id, rtt)
		}
		return r
	}
	if r := probe("use-application-dns.net.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("canary probe: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	for range 2 { // a miss, then a cache hit
		if got := firstA(t, probe("probe.example.", dns.TypeA)); got != "198.51.100.7" {
			t.Errorf("probe answer %s", got)
		}
	}
	if up.count("probe.example.") != 1 {
		t.Errorf("upstream saw probe.example. %d times, want 1 (the second probe is a cache hit)", up.count("probe.example."))
	}
	if s := p.Stats(); s.Queries != 0 || s.Blocked != 0 || s.CacheHits != 0 || s.CacheMisses != 0 || len(s.ByRcode) != 0 {
		t.Errorf("probes counted as client traffic: %+v", s)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if n := mf.GetName(); n == metricPrefix+"queries_total" || n == metricPrefix+"blocked_total" {
			for _, m := range mf.GetMetric() {
				if v := m.GetCounter().GetValue(); v != 0 {
					t.Errorf("%s%v = %v after probes only, want 0", n, m.GetLabel(), v)
				}
			}
		}
	}
	select {
	case r := <-recs:
		t.Errorf("a tap saw a probe: %+v", r)
	case <-time.After(100 * time.Millisecond):
	}

	// Let loopback clients in: a client's query is counted as before.
	cfg.AllowedSources = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if got := firstA(t, ask(t, p, "udp", "client.example.", dns.TypeA, 0)); got != "198.51.100.7" {
		t.Errorf("client answer %s", got)
	}
	if s := p.Stats(); s.Queries != 1 || s.ByRcode["NOERROR"] != 1 || s.CacheMisses != 1 {
		t.Errorf("client query not counted: %+v", s)
	}
	select {
	case r := <-recs:
		if r.Name != "client.example." {
			t.Errorf("tap record %+v, want the client's query", r)
		}
	case <-time.After(2 * time.Second):
		t.Error("the client's query never reached the tap")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(b), "\n"); lines != 1 || !strings.Contains(string(b), `"name":"client.example."`) {
		t.Errorf("query log holds %d records, want only the client's:\n%s", lines, b)
	}
	if p.probeSrcs.Load() != nil {
		t.Error("probe sources still registered after the probes returned")
	}
}

// TestCheckUpstreams: an on-demand check reports each upstream's answer or
// error and leaves the health state Stats reports in agreement with it
// (one source for `sluice status` and `sluice doctor`). Checks are not
// client queries.
func TestCheckUpstreams(t *testing.T) {
	live := startFake(t, answerA("198.51.100.7", 300))
	dead := closedPort(t)
	cfg := testConfig(live.addr, dead)
	cfg.Health.Failures = 1
	cfg.Health.Timeout = 500 * time.Millisecond
	p, _ := startProxy(t, cfg, Options{})

	checks := p.CheckUpstreams(t.Context())
	if len(checks) != 2 {
		t.Fatalf("%d checks, want 2: %+v", len(checks), checks)
	}
	byAddr := map[string]UpstreamCheck{}
	for _, c := range checks {
		byAddr[c.Addr] = c
	}
	if c := byAddr[live.addr]; c.Error != "" || c.Rcode != "NOERROR" || !c.Healthy || c.Query != "NS ." || c.Group != "default" {
		t.Errorf("live upstream: %+v", c)
	}
	if c := byAddr[dead]; c.Error == "" || c.Rcode != "" || c.Healthy || c.Failures != 1 {
		t.Errorf("dead upstream: %+v", c)
	}
	if live.count(".") != 1 {
		t.Errorf("live upstream got %d checks, want 1", live.count("."))
	}
	s := p.Stats()
	for _, u := range s.Upstreams {
		if c := byAddr[u.Addr]; c.UpstreamStats.Healthy != u.Healthy || c.UpstreamStats.Failures != u.Failures || c.Group != u.Group {
			t.Errorf("status and check disagree on %s: stats %+v, check %+v", u.Addr, u, c.UpstreamStats)
		}
	}
	if s.Queries != 0 {
		t.Errorf("checks counted as %d client queries", s.Queries)
	}
}
