package gateway

import (
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// peerStat is one configured peer's WireGuard state as the metrics show it.
type peerStat struct {
	User, Device string
	// LastHandshake is the zero time when the peer never completed one.
	LastHandshake time.Time
	RxBytes       int64 // received from the peer
	TxBytes       int64 // sent to the peer
}

// peerCollector exports per-peer handshake age and transfer counters. It
// reads the device at scrape time, so its series are exactly the peers
// configured now: bounded by the store, and gone as soon as a peer is
// removed, disabled or expired. Peers the store does not know (added to
// the device by hand) are left out.
type peerCollector struct {
	stats func() []peerStat
	now   func() time.Time

	handshakeAge, handshakeTime, rx, tx *prometheus.Desc
}

func newPeerCollector(stats func() []peerStat) *peerCollector {
	labels := []string{"user", "device"}
	return &peerCollector{
		stats: stats,
		now:   time.Now,
		handshakeAge: prometheus.NewDesc("sluice_peer_handshake_age_seconds",
			"Seconds since the peer's latest handshake; absent until its first one.", labels, nil),
		handshakeTime: prometheus.NewDesc("sluice_peer_last_handshake_timestamp_seconds",
			"Unix time of the peer's latest handshake; 0 until its first one.", labels, nil),
		rx: prometheus.NewDesc("sluice_peer_receive_bytes_total",
			"Bytes the gateway received from the peer since it was configured on the device.", labels, nil),
		tx: prometheus.NewDesc("sluice_peer_transmit_bytes_total",
			"Bytes the gateway sent to the peer since it was configured on the device.", labels, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.handshakeAge
	ch <- c.handshakeTime
	ch <- c.rx
	ch <- c.tx
}

// Collect implements prometheus.Collector.
func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for _, s := range c.stats() {
		ts := 0.0
		if !s.LastHandshake.IsZero() {
			ts = float64(s.LastHandshake.UnixNano()) / 1e9
			age := max(now.Sub(s.LastHandshake).Seconds(), 0)
			ch <- prometheus.MustNewConstMetric(c.handshakeAge, prometheus.GaugeValue, age, s.User, s.Device)
		}
		ch <- prometheus.MustNewConstMetric(c.handshakeTime, prometheus.GaugeValue, ts, s.User, s.Device)
		ch <- prometheus.MustNewConstMetric(c.rx, prometheus.CounterValue, float64(s.RxBytes), s.User, s.Device)
		ch <- prometheus.MustNewConstMetric(c.tx, prometheus.CounterValue, float64(s.TxBytes), s.User, s.Device)
	}
}

// peerStats reads the device's peers and names them through the peer
// index; nothing before the device is up or after it is closed.
func (g *Gateway) peerStats() []peerStat {
	var peers []wgtypes.Peer
	// Only while ready, like every other use of the device (see use).
	if err := g.use(func() (err error) {
		peers, err = g.dev.Stats()
		return err
	}); err != nil {
		return nil
	}
	out := make([]peerStat, 0, len(peers))
	for _, p := range peers {
		var name string
		for _, ip := range p.AllowedIPs {
			if a, ok := netip.AddrFromSlice(ip.IP); ok {
				if who, ok := g.peerIdx.Lookup(a.Unmap()); ok {
					name = who.Name
					break
				}
			}
		}
		user, device, ok := strings.Cut(name, "/")
		if !ok {
			continue
		}
		out = append(out, peerStat{User: user, Device: device, LastHandshake: p.LastHandshakeTime, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes})
	}
	return out
}
