package firewall

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the firewall's Prometheus series. Packet and byte counters are
// read from the kernel on each scrape.
type metrics struct {
	fw        *Firewall
	packets   *prometheus.Desc
	bytes     *prometheus.Desc
	reapplied prometheus.Counter
	applySecs prometheus.Gauge
	flushed   prometheus.Counter

	learnSecs   prometheus.Histogram // Learn: call to kernel ack
	learnErrors prometheus.Counter
	learned     prometheus.GaugeFunc
}

func newMetrics(f *Firewall) *metrics {
	return &metrics{
		fw: f,
		packets: prometheus.NewDesc("sluice_firewall_packets_total",
			"Packets counted by the sluice nftables table, by reason.", []string{"reason"}, nil),
		bytes: prometheus.NewDesc("sluice_firewall_bytes_total",
			"Bytes counted by the sluice nftables table, by reason.", []string{"reason"}, nil),
		reapplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_firewall_reapplied_total",
			Help: "Times the table was found changed or missing and applied again.",
		}),
		applySecs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_firewall_apply_seconds",
			Help: "Duration of the last apply of the table, in seconds.",
		}),
		flushed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_firewall_conntrack_flushed_total",
			Help: "Existing peer DNS/DoT flows to other resolvers deleted from conntrack after an apply.",
		}),
		learnSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_firewall_egress_learn_seconds",
			Help:    "Time from an answer's addresses handed to the firewall to the learned pairs acknowledged by the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
		}),
		learnErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_firewall_egress_learn_errors_total",
			Help: "Answers whose learned egress pairs could not be installed.",
		}),
		learned: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sluice_firewall_egress_learned_pairs",
			Help: "Live learned (peer, destination) pairs.",
		}, func() float64 { return float64(f.LearnedPairs()) }),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m, m.reapplied, m.applySecs, m.flushed, m.learnSecs, m.learnErrors, m.learned} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("register firewall metrics: %w", err)
		}
	}
	return nil
}

// Describe implements prometheus.Collector for the kernel counters.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.packets
	ch <- m.bytes
}

// Collect implements prometheus.Collector: one netlink read per scrape.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	cs, err := m.fw.Counters()
	if err != nil {
		// Not applied yet, or the table is being re-applied: a scrape
		// without these series beats failing the whole scrape.
		m.fw.log.Debug("read firewall counters for metrics", "err", err)
		return
	}
	for _, r := range append(Reasons(), ReasonGroupRoute) {
		c, ok := cs[r]
		if !ok {
			continue
		}
		for _, v := range []struct {
			d *prometheus.Desc
			n uint64
		}{{m.packets, c.Packets}, {m.bytes, c.Bytes}} {
			if cm, err := prometheus.NewConstMetric(v.d, prometheus.CounterValue, float64(v.n), string(r)); err == nil {
				ch <- cm
			}
		}
	}
}
