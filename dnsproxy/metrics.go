package dnsproxy

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	metricPrefix = "sluice_dns_"
	// metricShards spreads hot counters over cache lines; read loops and
	// request goroutines pick a shard so two cores rarely share one.
	metricShards = 16
)

// qtypeLabels are the query types with their own label value; all others are "other".
var qtypeLabels = []string{"A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT",
	"HTTPS", "SVCB", "DS", "DNSKEY", "CAA", "NAPTR", "ANY", "other"}

func qtypeIndex(t uint16) int {
	switch t {
	case dns.TypeA:
		return 0
	case dns.TypeAAAA:
		return 1
	case dns.TypeCNAME:
		return 2
	case dns.TypeMX:
		return 3
	case dns.TypeNS:
		return 4
	case dns.TypePTR:
		return 5
	case dns.TypeSOA:
		return 6
	case dns.TypeSRV:
		return 7
	case dns.TypeTXT:
		return 8
	case dns.TypeHTTPS:
		return 9
	case dns.TypeSVCB:
		return 10
	case dns.TypeDS:
		return 11
	case dns.TypeDNSKEY:
		return 12
	case dns.TypeCAA:
		return 13
	case dns.TypeNAPTR:
		return 14
	case dns.TypeANY:
		return 15
	}
	return 16
}

const nQtype = 17

// rcodes 0..10 have their own label; others are "other".
const nRcode = 12

func rcodeIndex(rc int) int {
	if rc >= 0 && rc <= 10 {
		return rc
	}
	return 11
}

func rcodeLabel(i int) string {
	if i < 11 {
		return dns.RcodeToString[i]
	}
	return "other"
}

// groupCounters holds queries_total for one group label, sharded.
type groupCounters struct {
	label  string
	shards [metricShards]struct {
		c [nQtype][nRcode]atomic.Uint64
		_ [64]byte
	}
}

func (g *groupCounters) inc(shard int, qtype uint16, rcode int) {
	g.shards[shard&(metricShards-1)].c[qtypeIndex(qtype)][rcodeIndex(rcode)].Add(1)
}

type paddedCounter struct {
	v atomic.Uint64
	_ [56]byte
}

type shardedCounter [metricShards]paddedCounter

func (c *shardedCounter) inc(shard int) { c[shard&(metricShards-1)].v.Add(1) }

func (c *shardedCounter) load() uint64 {
	var n uint64
	for i := range c {
		n += c[i].v.Load()
	}
	return n
}

// durationBuckets are the request duration histogram's upper bounds, in seconds.
var durationBuckets = []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
	10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2}

type histShard struct {
	buckets [16]atomic.Uint64 // len(durationBuckets)
	count   atomic.Uint64
	sumNs   atomic.Uint64
	_       [48]byte
}

// shardedHistogram is a lock-free histogram with fixed buckets, cheap enough
// for the cache-hit path.
type shardedHistogram [metricShards]histShard

func (h *shardedHistogram) observe(shard int, d time.Duration) {
	s := &h[shard&(metricShards-1)]
	sec := d.Seconds()
	for i, b := range durationBuckets {
		if sec <= b {
			s.buckets[i].Add(1)
			break
		}
	}
	s.count.Add(1)
	if d > 0 {
		s.sumNs.Add(uint64(d))
	}
}

func (h *shardedHistogram) snapshot() (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(durationBuckets))
	var per [16]uint64
	var sumNs uint64
	for i := range h {
		for j := range per {
			per[j] += h[i].buckets[j].Load()
		}
		count += h[i].count.Load()
		sumNs += h[i].sumNs.Load()
	}
	var cum uint64
	for j, b := range durationBuckets {
		cum += per[j]
		buckets[b] = cum
	}
	return count, float64(sumNs) / 1e9, buckets
}

// metrics is every metric the proxy exports. Hot-path counters are sharded
// atomics read by a custom collector; the rest are ordinary client_golang
// vectors whose children are resolved once per upstream.
type metrics struct {
	mu     sync.Mutex // protects groups
	groups map[string]*groupCounters

	duration    shardedHistogram
	cacheHits   shardedCounter
	cacheMisses shardedCounter
	entries     func() int

	upstreamLatency *prometheus.HistogramVec
	upstreamErrors  *prometheus.CounterVec
	upstreamHealthy *prometheus.GaugeVec
	blocked         *prometheus.CounterVec
	ratelimited     prometheus.Counter
	overload        prometheus.Counter
	querylogDropped prometheus.Counter
	observeErrors   prometheus.Counter

	descQueries, descDuration, descHits, descMisses, descEntries *prometheus.Desc
	registered                                                   []prometheus.Collector
	reg                                                          prometheus.Registerer
}

func newMetrics(reg prometheus.Registerer, entries func() int) (*metrics, error) {
	m := &metrics{
		groups:  map[string]*groupCounters{},
		entries: entries,
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricPrefix + "upstream_duration_seconds",
			Help:    "Latency of answered upstream queries.",
			Buckets: []float64{1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2},
		}, []string{"group", "upstream"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "upstream_errors_total",
			Help: "Failed upstream queries by kind (timeout, network, servfail, malformed, mismatch, tls).",
		}, []string{"group", "upstream", "kind"}),
		upstreamHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricPrefix + "upstream_healthy",
			Help: "1 when the upstream is in rotation, 0 when ejected.",
		}, []string{"group", "upstream"}),
		blocked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "blocked_total",
			Help: "Queries answered by policy instead of forwarded, by reason.",
		}, []string{"reason"}),
		ratelimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "ratelimited_total",
			Help: "Queries refused because the peer exceeded its rate.",
		}),
		overload: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "upstream_overload_total",
			Help: "Queries answered SERVFAIL because too many upstream queries were in flight.",
		}),
		querylogDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "querylog_dropped_total",
			Help: "Query log records dropped because the log writer fell behind.",
		}),
		observeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "observer_errors_total",
			Help: "Answers whose addresses the answer observer (egress learning) failed to take before the answer was sent.",
		}),
		descQueries: prometheus.NewDesc(metricPrefix+"queries_total",
			"Answered queries by response code, query type and group.", []string{"rcode", "qtype", "group"}, nil),
		descDuration: prometheus.NewDesc(metricPrefix+"request_duration_seconds",
			"Time from reading a query to writing its answer.", nil, nil),
		descHits:    prometheus.NewDesc(metricPrefix+"cache_hits_total", "Answers served from the cache.", nil, nil),
		descMisses:  prometheus.NewDesc(metricPrefix+"cache_misses_total", "Cache lookups that missed.", nil, nil),
		descEntries: prometheus.NewDesc(metricPrefix+"cache_entries", "Entries in the cache.", nil, nil),
	}
	for _, r := range []string{reasonCanary, reasonDDR, reasonDoH, reasonBlocklist, reasonGroupZone, reasonGroupBlocklist} {
		m.blocked.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	m.reg = reg
	for _, c := range []prometheus.Collector{m, m.upstreamLatency, m.upstreamErrors, m.upstreamHealthy,
		m.blocked, m.ratelimited, m.overload, m.querylogDropped, m.observeErrors} {
		if err := reg.Register(c); err != nil {
			m.unregister()
			return nil, fmt.Errorf("register dns metrics: %w", err)
		}
		m.registered = append(m.registered, c)
	}
	return m, nil
}

// unregister removes the metrics so another proxy can use the registerer.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.registered {
		m.reg.Unregister(c)
	}
	m.registered = nil
}

// group returns the counters for a group label, creating them once.
func (m *metrics) group(label string) *groupCounters {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.groups[label]
	if g == nil {
		g = &groupCounters{label: label}
		m.groups[label] = g
	}
	return g
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.descQueries, m.descDuration, m.descHits, m.descMisses, m.descEntries} {
		ch <- d
	}
}

// Collect implements prometheus.Collector; it sums the shards.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, g := range m.groupList() {
		for qt := range nQtype {
			for rc := range nRcode {
				var n uint64
				for s := range g.shards {
					n += g.shards[s].c[qt][rc].Load()
				}
				if n == 0 {
					continue
				}
				ch <- prometheus.MustNewConstMetric(m.descQueries, prometheus.CounterValue, float64(n),
					rcodeLabel(rc), qtypeLabels[qt], g.label)
			}
		}
	}
	count, sum, buckets := m.duration.snapshot()
	ch <- prometheus.MustNewConstHistogram(m.descDuration, count, sum, buckets)
	ch <- prometheus.MustNewConstMetric(m.descHits, prometheus.CounterValue, float64(m.cacheHits.load()))
	ch <- prometheus.MustNewConstMetric(m.descMisses, prometheus.CounterValue, float64(m.cacheMisses.load()))
	ch <- prometheus.MustNewConstMetric(m.descEntries, prometheus.GaugeValue, float64(m.entries()))
}

func (m *metrics) groupList() []*groupCounters {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*groupCounters, 0, len(m.groups))
	for _, g := range m.groups {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].label < out[j].label })
	return out
}

// totals sums queries_total per rcode label, for Stats.
func (m *metrics) totals() (total uint64, byRcode map[string]uint64) {
	byRcode = map[string]uint64{}
	for _, g := range m.groupList() {
		for qt := range nQtype {
			for rc := range nRcode {
				var n uint64
				for s := range g.shards {
					n += g.shards[s].c[qt][rc].Load()
				}
				if n > 0 {
					byRcode[rcodeLabel(rc)] += n
					total += n
				}
			}
		}
	}
	return total, byRcode
}
