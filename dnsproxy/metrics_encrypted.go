package dnsproxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// encMetrics are the per-transport request counter and the DoT/DoH
// connection and certificate metrics.
type encMetrics struct {
	requests        [nTransport]shardedCounter
	conns           [nTransport]prometheus.Gauge
	refusedConns    [nTransport]prometheus.Counter
	handshakeErrors [nTransport]prometheus.Counter
	badRequests     prometheus.Counter
	connsVec        *prometheus.GaugeVec
	refusedVec      *prometheus.CounterVec
	handshakeVec    *prometheus.CounterVec

	descRequests, descExpiry *prometheus.Desc
	notAfter                 func() (float64, bool) // the certificate's NotAfter, unix seconds

	reg        prometheus.Registerer
	registered []prometheus.Collector
}

func newEncMetrics(reg prometheus.Registerer, notAfter func() (float64, bool)) (*encMetrics, error) {
	m := &encMetrics{
		connsVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricPrefix + "encrypted_connections",
			Help: "Open DoT and DoH client connections.",
		}, []string{"transport"}),
		refusedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "encrypted_connections_refused_total",
			Help: "DoT and DoH connections closed at once because the connection cap was reached.",
		}, []string{"transport"}),
		handshakeVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "tls_handshake_errors_total",
			Help: "Failed TLS handshakes of DoT and DoH clients.",
		}, []string{"transport"}),
		badRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "doh_bad_requests_total",
			Help: "DoH requests refused before the resolver (wrong method, content type, size, encoding).",
		}),
		descRequests: prometheus.NewDesc(metricPrefix+"requests_total",
			"Queries received, by transport (udp, tcp, dot, doh).", []string{"transport"}, nil),
		descExpiry: prometheus.NewDesc(metricPrefix+"tls_cert_expiry_timestamp_seconds",
			"When the DoT/DoH server certificate expires (unix seconds); absent when they are off.", nil, nil),
		notAfter: notAfter,
	}
	for _, tr := range []Transport{TransportDoT, TransportDoH} {
		m.conns[tr] = m.connsVec.WithLabelValues(tr.String())
		m.refusedConns[tr] = m.refusedVec.WithLabelValues(tr.String())
		m.handshakeErrors[tr] = m.handshakeVec.WithLabelValues(tr.String())
	}
	for _, tr := range []Transport{TransportUDP, TransportTCP} { // never used: keep nil-safe
		m.conns[tr] = prometheus.NewGauge(prometheus.GaugeOpts{Name: "unused"})
		m.refusedConns[tr] = prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
		m.handshakeErrors[tr] = prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
	}
	if reg == nil {
		return m, nil
	}
	m.reg = reg
	for _, c := range []prometheus.Collector{m, m.connsVec, m.refusedVec, m.handshakeVec, m.badRequests} {
		if err := reg.Register(c); err != nil {
			m.unregister()
			return nil, fmt.Errorf("register encrypted dns metrics: %w", err)
		}
		m.registered = append(m.registered, c)
	}
	return m, nil
}

func (m *encMetrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.registered {
		m.reg.Unregister(c)
	}
	m.registered = nil
}

// Describe implements prometheus.Collector.
func (m *encMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.descRequests
	ch <- m.descExpiry
}

// Collect implements prometheus.Collector.
func (m *encMetrics) Collect(ch chan<- prometheus.Metric) {
	for tr := range nTransport {
		ch <- prometheus.MustNewConstMetric(m.descRequests, prometheus.CounterValue,
			float64(m.requests[tr].load()), tr.String())
	}
	if v, ok := m.notAfter(); ok {
		ch <- prometheus.MustNewConstMetric(m.descExpiry, prometheus.GaugeValue, v)
	}
}
