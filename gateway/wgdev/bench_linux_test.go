package wgdev

import (
	"bufio"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// BenchmarkSyncPeers10k applies 10,000 peers to a running userspace device
// in a namespace, through wgctrl and the UAPI socket as the gateway does.
//
//	add:     empty device -> 10k peers (one ConfigureDevice)
//	noop:    10k -> the same 10k (read and diff only, nothing sent)
//	change1: 10k -> 10k with one peer's allowed IPs changed
//
// Each reports the process RSS afterwards (VmRSS, MiB) and, for comparison,
// the RSS with the device open and no peers (RSS-0peers-MiB).
func BenchmarkSyncPeers10k(b *testing.B) {
	netnstest.RequirePrivileged(b)
	ns := netnstest.New(b, "bn")
	d := openIn(b, ns, gatewayConfig(b, netnstest.Unique("wg"), 0))
	peers := manyPeers(b, 10000)
	base := rssMiB(b)
	mustSync := func(p []PeerConfig) {
		b.Helper()
		if _, _, _, err := d.SyncPeers(p); err != nil {
			b.Fatal(err)
		}
	}

	b.Run("add", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			mustSync(nil)
			b.StartTimer()
			a, _, _, err := d.SyncPeers(peers)
			if err != nil || a != len(peers) {
				b.Fatalf("added %d of %d: %v", a, len(peers), err)
			}
		}
		b.StopTimer()
		b.ReportMetric(rssMiB(b), "RSS-MiB")
		b.ReportMetric(base, "RSS-0peers-MiB")
	})
	b.Run("noop", func(b *testing.B) {
		mustSync(peers)
		for range b.N {
			if a, r, u, err := d.SyncPeers(peers); err != nil || a+r+u != 0 {
				b.Fatalf("no-op sync changed %d/%d/%d: %v", a, r, u, err)
			}
		}
		b.StopTimer()
		b.ReportMetric(rssMiB(b), "RSS-MiB")
		b.ReportMetric(base, "RSS-0peers-MiB")
	})
	b.Run("change1", func(b *testing.B) {
		mustSync(peers)
		changed := make([]PeerConfig, len(peers))
		copy(changed, peers)
		for i := range b.N {
			alt := netip.MustParsePrefix("10.30.250." + strconv.Itoa(1+i%2) + "/32")
			changed[5000].AllowedIPs = []netip.Prefix{alt}
			if _, _, u, err := d.SyncPeers(changed); err != nil || u != 1 {
				b.Fatalf("updated %d: %v", u, err)
			}
		}
		b.StopTimer()
		b.ReportMetric(rssMiB(b), "RSS-MiB")
		b.ReportMetric(base, "RSS-0peers-MiB")
	})
	st, err := d.Stats()
	if err != nil || len(st) != len(peers) {
		b.Fatalf("device has %d peers: %v", len(st), err)
	}
}

// rssMiB returns the process's resident set size in MiB.
func rssMiB(b *testing.B) float64 {
	b.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				b.Fatal(err)
			}
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}
