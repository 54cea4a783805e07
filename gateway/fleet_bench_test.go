package gateway

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore/etcdtest"
)

// Fleet size and timed adds of BenchmarkFleetGateways10k.
const (
	fleetBenchPeers   = 10000
	fleetBenchChanges = 40
)

// BenchmarkFleetGateways10k measures a change of the fleet registry down
// to the devices of two gateways running the real follower path (watch,
// snapshot file, syncPeers: active peers, group members, proxy index,
// SyncPeers on the device), with 10,000 peers in a real etcd. The devices
// are the in-memory fakes of these tests: the time a real wireguard-go
// device takes to apply one changed peer of 10,000 is the wgdev benchmark
// (BenchmarkSyncPeers10k/change1) and adds to these figures.
//
// p50-ms/p99-ms: from the start of an add on a running writer (a store
// that has made a change before) until the peer is on both devices.
// Run once (-benchtime 1x).
func BenchmarkFleetGateways10k(b *testing.B) {
	srv := etcdtest.Start(b)
	cfgA := fleetConfigIn(b, "gw-a", srv.Endpoint, filepath.Join(b.TempDir(), "state"), "10.20.0.1/16")
	cfgB := fleetConfigIn(b, "gw-b", srv.Endpoint, filepath.Join(b.TempDir(), "state"), "10.20.0.1/16")
	w, err := OpenStore(cfgA)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	pool := cfgA.Pool()
	for i := 0; i < fleetBenchPeers; i += 25 {
		var reqs []peers.AddRequest
		for j := i; j < min(i+25, fleetBenchPeers); j++ {
			reqs = append(reqs, peers.AddRequest{User: fmt.Sprintf("user%05d", j)})
		}
		if _, err := w.AddMany(reqs, pool); err != nil {
			b.Fatalf("fill the registry: %v", err)
		}
	}
	_, fa, _ := runFleetGateway(b, cfgA)
	_, fb, _ := runFleetGateway(b, cfgB)
	for _, f := range []*fakes{fa, fb} {
		waitFor(b, "10,000 peers on both devices", func() bool { return deviceCount(f) == fleetBenchPeers })
	}
	b.ResetTimer()
	var lat []float64
	for i := range fleetBenchChanges {
		start := time.Now()
		p, err := w.Add(peers.AddRequest{User: fmt.Sprintf("new%03d", i)}, pool)
		if err != nil {
			b.Fatal(err)
		}
		for _, f := range []*fakes{fa, fb} {
			deadline := time.Now().Add(30 * time.Second)
			for !deviceHas(f, p.PublicKey) {
				if time.Now().After(deadline) {
					b.Fatalf("%s not on a device within 30s", p.ID())
				}
				time.Sleep(time.Millisecond)
			}
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.Logf("slowest adds to both devices (ms): %v", lat[len(lat)-3:])
	b.ReportMetric(lat[len(lat)/2], "p50-ms")
	b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
}

func deviceCount(f *fakes) int {
	f.dev.mu.Lock()
	defer f.dev.mu.Unlock()
	return len(f.dev.peers)
}

func deviceHas(f *fakes, key wgtypes.Key) bool {
	f.dev.mu.Lock()
	defer f.dev.mu.Unlock()
	for _, p := range f.dev.peers {
		if p.PublicKey == key {
			return true
		}
	}
	return false
}
