package etcdstore

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore/etcdtest"
)

// benchPeers is the fleet size of BenchmarkFleet10k; benchChanges how many
// adds it times.
const (
	benchPeers   = 10000
	benchChanges = 50
)

// fillRegistry writes n peers straight into the registry's layout (32 per
// transaction), as if added one by one.
func fillRegistry(b *testing.B, endpoint, prefix string, n int) {
	b.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	be := &Backend{prefix: prefix}
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	now := time.Now().UTC().Truncate(time.Second)
	for i := range n {
		priv, _ := wgtypes.GeneratePrivateKey()
		psk, _ := wgtypes.GenerateKey()
		p := peers.Peer{User: fmt.Sprintf("user%05d", i), Device: peers.DefaultDevice, PublicKey: priv.PublicKey(), PrivateKey: &priv, PresharedKey: &psk,
			IPv4: netip.AddrFrom4([4]byte{10, 30, byte((i + 2) >> 8), byte(i + 2)}), IPv6: netip.MustParseAddr(fmt.Sprintf("fd20::%x", i+2)), Created: now}
		val, err := peers.MarshalPeer(p)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(be.peerKey(p), string(val)), clientv3.OpPut(be.addrKey(p.IPv4), p.ID()),
			clientv3.OpPut(be.addrKey(p.IPv6), p.ID()), clientv3.OpPut(be.pubKey(p), p.ID()))
		if len(ops) >= 128 {
			flush()
		}
	}
	flush()
}

func rssMiB() float64 {
	data, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkFleet10k measures the registry at fleet scale against a real
// etcd: a gateway's cold start from 10,000 peers (ns/op); the time from
// the start of an add on a running writer (one that has made a change
// before, so it decides on its view) until the peer is in the registry
// state two other followers serve (p50/p99; the state a gateway applies to
// its device, proxy and firewall, not the device itself); the first add of
// a fresh writer until it returns (cold-writer-ms: what one CLI command
// pays, reading the whole registry first); the etcd requests per change of
// the running writer, and the RSS of the process holding two followers
// and the writer. Run once (-benchtime 1x).
func BenchmarkFleet10k(b *testing.B) {
	srv := etcdtest.Start(b)
	const prefix = "/bench/"
	fillRegistry(b, srv.Endpoint, prefix, benchPeers)
	pool := peers.Pool{V4: netip.MustParsePrefix("10.30.0.1/16"), V6: netip.MustParsePrefix("fd20::1/64"),
		Reserved: []netip.Addr{netip.MustParseAddr("10.30.0.1"), netip.MustParseAddr("fd20::1")}}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var followers []*Backend
	var cold time.Duration
	b.ResetTimer()
	for range 2 {
		f, err := Open(Config{Endpoints: []string{srv.Endpoint}, Prefix: prefix})
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		if err := f.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if len(followers) == 0 {
			cold = time.Since(start)
		}
		if h := f.Health(); h.Peers != benchPeers {
			b.Fatalf("follower holds %d peers, want %d", h.Peers, benchPeers)
		}
		done := make(chan struct{})
		go func() { f.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		followers = append(followers, f)
	}
	b.StopTimer()

	wbe, err := Open(Config{Endpoints: []string{srv.Endpoint}, Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	defer wbe.Close()
	w := peers.NewStore(wbe)
	start := time.Now()
	if _, err := w.Add(peers.AddRequest{User: "first"}, pool); err != nil {
		b.Fatal(err)
	}
	coldWriter := time.Since(start)
	f0, a0, _ := wbe.Stats()
	var lat []float64
	var commitMax time.Duration
	for i := range benchChanges {
		start := time.Now()
		p, err := w.Add(peers.AddRequest{User: fmt.Sprintf("new%03d", i)}, pool)
		if err != nil {
			b.Fatal(err)
		}
		commitMax = max(commitMax, time.Since(start))
		for _, f := range followers {
			deadline := time.Now().Add(30 * time.Second)
			for !holds(f, p) {
				if time.Now().After(deadline) {
					b.Fatalf("follower did not see %s within 30s", p.ID())
				}
				select {
				case <-f.Changed():
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	slices.Sort(lat)
	b.Logf("slowest adds (ms): %v; slowest commit alone %s", lat[len(lat)-3:], commitMax)
	fetches, attempts, _ := wbe.Stats()
	fetches, attempts = fetches-f0, attempts-a0
	b.ReportMetric(float64(cold.Nanoseconds()), "ns/op")
	b.ReportMetric(float64(coldWriter.Microseconds())/1000, "cold-writer-ms")
	b.ReportMetric(lat[len(lat)/2], "p50-ms")
	b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
	b.ReportMetric(float64(fetches+attempts)/benchChanges, "etcd-req/change")
	b.ReportMetric(rssMiB(), "RSS-MiB")
}

func holds(f *Backend, p peers.Peer) bool {
	st, err := f.Load()
	if err != nil {
		return false
	}
	_, ok := slices.BinarySearchFunc(st.Peers, p, func(a, b peers.Peer) int {
		if c := strings.Compare(a.User, b.User); c != 0 {
			return c
		}
		return strings.Compare(a.Device, b.Device)
	})
	return ok
}
