package gateway

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// scrape returns the sample lines of reg that start with prefix.
func scrape(t *testing.T, reg *prometheus.Registry, prefix string) []string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var out []string
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func TestPeerCollectorFollowsPeers(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	stats := []peerStat{
		{User: "alice", Device: "laptop", LastHandshake: now.Add(-42 * time.Second), RxBytes: 1000, TxBytes: 2000},
		{User: "bob", Device: "phone"}, // never handshaken
	}
	c := newPeerCollector(func() []peerStat { return stats })
	c.now = func() time.Time { return now }
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)

	got := strings.Join(scrape(t, reg, "sluice_peer_"), "\n")
	want := strings.Join([]string{
		`sluice_peer_handshake_age_seconds{device="laptop",user="alice"} 42`,
		`sluice_peer_last_handshake_timestamp_seconds{device="laptop",user="alice"} 1.777636758e+09`,
		`sluice_peer_last_handshake_timestamp_seconds{device="phone",user="bob"} 0`,
		`sluice_peer_receive_bytes_total{device="laptop",user="alice"} 1000`,
		`sluice_peer_receive_bytes_total{device="phone",user="bob"} 0`,
		`sluice_peer_transmit_bytes_total{device="laptop",user="alice"} 2000`,
		`sluice_peer_transmit_bytes_total{device="phone",user="bob"} 0`,
	}, "\n")
	if got != want {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, want)
	}
	// A removed (or disabled, or expired) peer leaves no series behind.
	stats = stats[:1]
	if got := scrape(t, reg, "sluice_peer_"); len(got) != 4 || strings.Contains(strings.Join(got, "\n"), "bob") {
		t.Errorf("after bob left:\n%s", strings.Join(got, "\n"))
	}
	stats = nil
	if got := scrape(t, reg, "sluice_peer_"); len(got) != 0 {
		t.Errorf("with no peers:\n%s", strings.Join(got, "\n"))
	}
}

func TestPeerStatsWithoutDevice(t *testing.T) {
	g := New(&Config{}, Options{})
	if s := g.peerStats(); s != nil {
		t.Errorf("peerStats before Run = %v", s)
	}
	if got := scrape(t, g.reg, "sluice_peer_"); len(got) != 0 {
		t.Errorf("peer metrics before Run:\n%s", strings.Join(got, "\n"))
	}
}
