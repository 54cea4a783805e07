package wgdev

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func testKey(t testing.TB) wgtypes.Key {
	t.Helper()
	var k wgtypes.Key
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func mustNet(s string) net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return *n
}

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestDiffPeersAddsNewPeer(t *testing.T) {
	k, psk := testKey(t), testKey(t)
	ep := &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 51820}
	cfg, n, err := diffPeers(nil, []PeerConfig{{
		PublicKey:           k,
		PresharedKey:        &psk,
		AllowedIPs:          pfx("fd20::2/128", "10.20.0.2/32"),
		Endpoint:            ep,
		PersistentKeepalive: 25 * time.Second,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if n != (syncCounts{added: 1}) {
		t.Fatalf("counts = %+v, want 1 added", n)
	}
	ka := 25 * time.Second
	want := wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey:                   k,
		PresharedKey:                &psk,
		Endpoint:                    ep,
		PersistentKeepaliveInterval: &ka,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  []net.IPNet{mustNet("10.20.0.2/32"), mustNet("fd20::2/128")},
	}}}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config =\n%+v\nwant\n%+v", cfg, want)
	}
}

func TestDiffPeersUnchangedSendsNothing(t *testing.T) {
	k := testKey(t)
	// The device reports v4 as 16-byte IPs and keeps its learned endpoint.
	cur := []wgtypes.Peer{{
		PublicKey:  k,
		Endpoint:   &net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 40000},
		AllowedIPs: []net.IPNet{{IP: net.ParseIP("10.20.0.2"), Mask: net.CIDRMask(32, 32)}, mustNet("fd20::2/128")},
	}}
	cfg, n, err := diffPeers(cur, []PeerConfig{{PublicKey: k, AllowedIPs: pfx("fd20::2/128", "10.20.0.2/32", "10.20.0.2/32")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Peers) != 0 || n != (syncCounts{}) {
		t.Fatalf("unchanged peer produced %+v (%+v)", cfg.Peers, n)
	}
}

func TestDiffPeersUpdatesOnlyWhatChanged(t *testing.T) {
	k1, k2, k3, psk := testKey(t), testKey(t), testKey(t), testKey(t)
	cur := []wgtypes.Peer{
		{PublicKey: k1, AllowedIPs: []net.IPNet{mustNet("10.20.0.2/32")}},
		{PublicKey: k2, PresharedKey: psk, AllowedIPs: []net.IPNet{mustNet("10.20.0.3/32")}},
		{PublicKey: k3, AllowedIPs: []net.IPNet{mustNet("10.20.0.4/32")}, PersistentKeepaliveInterval: 25 * time.Second},
	}
	cfg, n, err := diffPeers(cur, []PeerConfig{
		{PublicKey: k1, AllowedIPs: pfx("10.20.0.2/32", "fd20::2/128")}, // allowed IPs grew
		{PublicKey: k2, AllowedIPs: pfx("10.20.0.3/32")},                // PSK dropped
		{PublicKey: k3, AllowedIPs: pfx("10.20.0.4/32")},                // keepalive off
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != (syncCounts{updated: 3}) {
		t.Fatalf("counts = %+v, want 3 updated", n)
	}
	var zero wgtypes.Key
	var noKA time.Duration
	want := []wgtypes.PeerConfig{
		{PublicKey: k1, UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{mustNet("10.20.0.2/32"), mustNet("fd20::2/128")}},
		{PublicKey: k2, UpdateOnly: true, PresharedKey: &zero},
		{PublicKey: k3, UpdateOnly: true, PersistentKeepaliveInterval: &noKA},
	}
	if !reflect.DeepEqual(cfg.Peers, want) {
		t.Fatalf("peers =\n%+v\nwant\n%+v", cfg.Peers, want)
	}
	if cfg.ReplacePeers || cfg.PrivateKey != nil || cfg.ListenPort != nil {
		t.Fatalf("peer sync touched device settings: %+v", cfg)
	}
}

func TestDiffPeersRemovesGonePeers(t *testing.T) {
	k1, k2 := testKey(t), testKey(t)
	cur := []wgtypes.Peer{{PublicKey: k1}, {PublicKey: k2}}
	cfg, n, err := diffPeers(cur, []PeerConfig{{PublicKey: k2}})
	if err != nil {
		t.Fatal(err)
	}
	want := []wgtypes.PeerConfig{{PublicKey: k1, Remove: true}}
	if n != (syncCounts{removed: 1}) || !reflect.DeepEqual(cfg.Peers, want) {
		t.Fatalf("got %+v %+v, want %+v", n, cfg.Peers, want)
	}
}

func TestDiffPeersEndpoint(t *testing.T) {
	k := testKey(t)
	cur := []wgtypes.Peer{{PublicKey: k, Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.1").To16(), Port: 51820}}}
	same := &net.UDPAddr{IP: net.ParseIP("192.0.2.1").To4(), Port: 51820}
	if cfg, _, err := diffPeers(cur, []PeerConfig{{PublicKey: k, Endpoint: same}}); err != nil || len(cfg.Peers) != 0 {
		t.Fatalf("same endpoint: %+v %v", cfg.Peers, err)
	}
	moved := &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 51820}
	cfg, _, err := diffPeers(cur, []PeerConfig{{PublicKey: k, Endpoint: moved}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Peers) != 1 || cfg.Peers[0].Endpoint != moved || cfg.Peers[0].AllowedIPs != nil || !cfg.Peers[0].UpdateOnly {
		t.Fatalf("moved endpoint: %+v", cfg.Peers)
	}
}

func TestDiffPeersRejectsBadInput(t *testing.T) {
	k1, k2 := testKey(t), testKey(t)
	for _, tc := range []struct {
		name  string
		peers []PeerConfig
		want  string
	}{
		{"zero key", []PeerConfig{{}}, "public key is required"},
		{"duplicate key", []PeerConfig{{PublicKey: k1}, {PublicKey: k1}}, "duplicate public key"},
		{"shared allowed ip", []PeerConfig{{PublicKey: k1, AllowedIPs: pfx("10.20.0.2/32")}, {PublicKey: k2, AllowedIPs: pfx("10.20.0.2/32")}}, "already belongs"},
		{"shared after masking", []PeerConfig{{PublicKey: k1, AllowedIPs: pfx("10.30.0.0/16")}, {PublicKey: k2, AllowedIPs: pfx("10.30.1.1/16")}}, "already belongs"},
		{"invalid prefix", []PeerConfig{{PublicKey: k1, AllowedIPs: []netip.Prefix{{}}}}, "invalid allowed ip"},
		{"short 4in6", []PeerConfig{{PublicKey: k1, AllowedIPs: pfx("::ffff:0.0.0.0/64")}}, "invalid allowed ip"},
		{"keepalive", []PeerConfig{{PublicKey: k1, PersistentKeepalive: 70000 * time.Second}}, "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := diffPeers(nil, tc.peers)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestSyncPeersConverges applies the diff to a fake device with WireGuard's
// semantics through several desired states and checks that the device ends
// in exactly the desired state and that a second sync is a no-op.
func TestSyncPeersConverges(t *testing.T) {
	fw := newFakeWG("wgt0")
	d := &Device{name: "wgt0", wg: fw, log: discardLogger()}
	keys := make([]wgtypes.Key, 6)
	for i := range keys {
		keys[i] = testKey(t)
	}
	peer := func(i int, ips ...string) PeerConfig {
		return PeerConfig{PublicKey: keys[i], AllowedIPs: pfx(ips...)}
	}
	steps := []struct {
		peers                   []PeerConfig
		added, removed, updated int
	}{
		{[]PeerConfig{peer(0, "10.20.0.2/32", "fd20::2/128"), peer(1, "10.20.0.3/32", "fd20::3/128")}, 2, 0, 0},
		{[]PeerConfig{peer(0, "10.20.0.2/32", "fd20::2/128"), peer(1, "10.20.0.3/32", "fd20::3/128"), peer(2, "10.20.0.4/32")}, 1, 0, 0},
		// Swap addresses between 1 and 2 in one batch: the device must end
		// with each address on exactly one peer.
		{[]PeerConfig{peer(0, "10.20.0.2/32", "fd20::2/128"), peer(1, "10.20.0.4/32"), peer(2, "10.20.0.3/32", "fd20::3/128")}, 0, 0, 2},
		{[]PeerConfig{peer(2, "10.20.0.3/32", "fd20::3/128"), peer(3, "10.20.0.5/32")}, 1, 2, 0},
		{nil, 0, 2, 0},
	}
	for i, st := range steps {
		a, r, u, err := d.SyncPeers(st.peers)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if a != st.added || r != st.removed || u != st.updated {
			t.Fatalf("step %d: added/removed/updated = %d/%d/%d, want %d/%d/%d", i, a, r, u, st.added, st.removed, st.updated)
		}
		calls := len(fw.configs)
		if a, r, u, err := d.SyncPeers(st.peers); err != nil || a+r+u != 0 || len(fw.configs) != calls {
			t.Fatalf("step %d: second sync not a no-op: %d/%d/%d %v (%d configure calls)", i, a, r, u, err, len(fw.configs)-calls)
		}
		got, err := d.Stats()
		if err != nil {
			t.Fatal(err)
		}
		want := map[wgtypes.Key][]netip.Prefix{}
		for _, p := range st.peers {
			want[p.PublicKey] = p.AllowedIPs
		}
		if len(got) != len(want) {
			t.Fatalf("step %d: device has %d peers, want %d", i, len(got), len(want))
		}
		for _, p := range got {
			w, ok := want[p.PublicKey]
			if !ok {
				t.Fatalf("step %d: unexpected peer %s", i, p.PublicKey)
			}
			if g := canonicalAllowed(p.AllowedIPs); len(g) != len(w) {
				t.Fatalf("step %d: peer %s has %v, want %v", i, p.PublicKey, g, w)
			}
		}
	}
	for _, c := range fw.configs {
		if c.ReplacePeers {
			t.Fatal("SyncPeers used ReplacePeers")
		}
	}
}

func TestSyncPeersErrors(t *testing.T) {
	fw := newFakeWG("wgt0")
	d := &Device{name: "wgt0", wg: fw, log: discardLogger()}
	fw.configureErr = errFake
	if _, _, _, err := d.SyncPeers([]PeerConfig{{PublicKey: testKey(t)}}); !errorsIs(err, errFake) || !strings.Contains(err.Error(), `configure peers of "wgt0"`) {
		t.Fatalf("configure error = %v", err)
	}
	fw.deviceErr = errFake
	if _, _, _, err := d.SyncPeers(nil); !errorsIs(err, errFake) || !strings.Contains(err.Error(), `read peers of "wgt0"`) {
		t.Fatalf("read error = %v", err)
	}
	if _, err := d.Stats(); !errorsIs(err, errFake) {
		t.Fatalf("stats error = %v", err)
	}
}

func TestStatsHidesPresharedKeys(t *testing.T) {
	fw := newFakeWG("wgt0")
	d := &Device{name: "wgt0", wg: fw, log: discardLogger()}
	psk := testKey(t)
	if _, _, _, err := d.SyncPeers([]PeerConfig{{PublicKey: testKey(t), PresharedKey: &psk}}); err != nil {
		t.Fatal(err)
	}
	st, err := d.Stats()
	if err != nil || len(st) != 1 || st[0].PresharedKey != (wgtypes.Key{}) {
		t.Fatalf("stats = %+v, %v", st, err)
	}
	// The device still has it: a resync is a no-op.
	if a, r, u, err := d.SyncPeers([]PeerConfig{{PublicKey: st[0].PublicKey, PresharedKey: &psk}}); err != nil || a+r+u != 0 {
		t.Fatalf("resync changed %d/%d/%d %v", a, r, u, err)
	}
}

// manyPeers returns n peers with a /32 in 10.30.0.0/16 and a /128 in fd20::/64 each.
func manyPeers(t testing.TB, n int) []PeerConfig {
	out := make([]PeerConfig, n)
	for i := range out {
		var v4 [4]byte
		binary.BigEndian.PutUint32(v4[:], 10<<24|30<<16|uint32(i+1))
		var v6 [16]byte
		copy(v6[:], netip.MustParseAddr("fd20::").AsSlice())
		binary.BigEndian.PutUint32(v6[12:], uint32(i+0x1000))
		out[i] = PeerConfig{
			PublicKey:  testKey(t),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4(v4), 32), netip.PrefixFrom(netip.AddrFrom16(v6), 128)},
		}
	}
	return out
}

func TestDiffPeers10kOneChange(t *testing.T) {
	want := manyPeers(t, 10000)
	fw := newFakeWG("wgt0")
	cfg, _, err := diffPeers(nil, want)
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.ConfigureDevice("wgt0", cfg); err != nil {
		t.Fatal(err)
	}
	cur, _ := fw.Device("wgt0")
	want[5000].AllowedIPs = pfx("10.30.200.1/32")
	cfg, n, err := diffPeers(cur.Peers, want)
	if err != nil {
		t.Fatal(err)
	}
	if n != (syncCounts{updated: 1}) || len(cfg.Peers) != 1 || cfg.Peers[0].PublicKey != want[5000].PublicKey {
		t.Fatalf("one change among 10k produced %+v with %d peer configs", n, len(cfg.Peers))
	}
}

func BenchmarkDiffPeers10k(b *testing.B) {
	want := manyPeers(b, 10000)
	cfg, _, err := diffPeers(nil, want)
	if err != nil {
		b.Fatal(err)
	}
	fw := newFakeWG("wgt0")
	if err := fw.ConfigureDevice("wgt0", cfg); err != nil {
		b.Fatal(err)
	}
	cur, _ := fw.Device("wgt0")
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := diffPeers(cur.Peers, want); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDeviceConcurrentUse runs syncs, stats and Close at once (under -race
// in CI): every call either succeeds or reports ErrClosed.
func TestDeviceConcurrentUse(t *testing.T) {
	fw := newFakeWG("wgt0")
	d := &Device{name: "wgt0", wg: fw, log: discardLogger(), teardown: func() error { return nil }}
	peers := manyPeers(t, 50)
	errc := make(chan error, 64)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				var err error
				if (i+j)%2 == 0 {
					_, _, _, err = d.SyncPeers(peers[:10+(i*j)%40])
				} else {
					_, err = d.Stats()
				}
				if err != nil && !errors.Is(err, ErrClosed) {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := d.Close(); err != nil {
			errc <- err
		}
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}
