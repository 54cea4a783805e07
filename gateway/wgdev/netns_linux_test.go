package wgdev

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// doIn runs fn in ns on a thread that is switched back afterwards.
// netnstest.NS.Do leaves its thread switched; when that goroutine lands on
// the main thread Go wedges it there, and the namespace cleanup (ip netns
// pids + kill) then kills the test binary.
func doIn(t testing.TB, ns *netnstest.NS, fn func() error) error {
	t.Helper()
	h := ns.Handle()
	defer h.Close()
	var err error
	if nerr := inNamespace(h, func() { err = fn() }); nerr != nil {
		return nerr
	}
	return err
}

// openIn opens a device inside ns and closes it in cleanup.
func openIn(t testing.TB, ns *netnstest.NS, cfg Config) *Device {
	t.Helper()
	var d *Device
	err := doIn(t, ns, func() error {
		var err error
		d, err = Open(context.Background(), cfg, Options{Logger: testLogger(t)})
		return err
	})
	if err != nil {
		t.Fatalf("open %s in %s: %v", cfg.Name, ns.Name, err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close %s: %v", d.Name(), err)
		}
	})
	return d
}

func gatewayConfig(t testing.TB, name string, port int) Config {
	t.Helper()
	cfg := testConfig(t, BackendUserspace)
	cfg.Name = name
	cfg.ListenPort = port
	cfg.FirewallMark = 0
	return cfg
}

// nlIn returns a netlink handle inside ns for observation.
func nlIn(t testing.TB, ns *netnstest.NS) *netlink.Handle {
	t.Helper()
	h := ns.Handle()
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

func TestNetnsUserspaceBringUp(t *testing.T) {
	netnstest.RequirePrivileged(t, "wg", "ss")
	ns := netnstest.New(t, "gw")
	name := netnstest.Unique("wg")
	cfg := gatewayConfig(t, name, 51820)
	cfg.FirewallMark = 0x51

	var d *Device
	err := doIn(t, ns, func() error {
		var err error
		d, err = Open(context.Background(), cfg, Options{Logger: testLogger(t)})
		if err != nil {
			return err
		}
		// The resolver addresses are usable at once (no DAD wait).
		for _, a := range []string{"[fd20::53]:0", "10.20.0.53:0"} {
			c, err := net.ListenPacket("udp", a)
			if err != nil {
				return err
			}
			_ = c.Close() // probe only
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() }) // the test closes it itself; this covers failures
	if d.Backend() != BackendUserspace {
		t.Fatalf("backend %s", d.Backend())
	}

	nl := nlIn(t, ns)
	link, err := nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().MTU != DefaultMTU || link.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("link mtu %d flags %v", link.Attrs().MTU, link.Attrs().Flags)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			got = append(got, a.IPNet.String())
		}
	}
	slices.Sort(got)
	want := []string{"10.20.0.1/24", "10.20.0.53/32", "fd20::1/64", "fd20::53/128"}
	if !slices.Equal(got, want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
	routes, err := nl.RouteGet(net.ParseIP("10.20.0.7"))
	if err != nil || len(routes) == 0 || routes[0].LinkIndex != link.Attrs().Index {
		t.Fatalf("route to 10.20.0.7: %+v %v", routes, err)
	}

	show := ns.Run("wg", "show", name)
	if !strings.Contains(show, d.PublicKey().String()) || !strings.Contains(show, "listening port: 51820") || !strings.Contains(show, "fwmark: 0x51") {
		t.Fatalf("wg show:\n%s", show)
	}
	// The UDP socket lives in the namespace.
	if out := ns.Run("ss", "-H", "-uln", "sport = :51820"); !strings.Contains(out, "51820") {
		t.Fatalf("no udp listener on 51820 in %s: %q", ns.Name, out)
	}
	// Nothing landed in the test process's own namespace.
	if _, err := netlink.LinkByName(name); err == nil {
		t.Fatalf("interface %s appeared outside the namespace", name)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := nl.LinkByName(name); err == nil {
		t.Fatal("interface still exists after close")
	}
	if _, err := os.Stat(uapiPath(name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("uapi socket after close: %v", err)
	}
}

func TestNetnsAutoPicksWorkingBackend(t *testing.T) {
	netnstest.RequirePrivileged(t)
	ns := netnstest.New(t, "gw")
	probe := netnstest.Unique("wp")
	_, kerr := ns.Exec("ip", "link", "add", probe, "type", "wireguard")
	if kerr == nil {
		ns.Run("ip", "link", "del", probe)
	}
	cfg := gatewayConfig(t, netnstest.Unique("wg"), 0)
	cfg.Backend = BackendAuto
	d := openIn(t, ns, cfg)
	want := BackendKernel
	if kerr != nil {
		want = BackendUserspace
	}
	if d.Backend() != want {
		t.Fatalf("auto chose %s, want %s (kernel probe: %v)", d.Backend(), want, kerr)
	}
	if d.ListenPort() == 0 {
		t.Fatal("listen port 0 not resolved to the bound port")
	}
}

// pair is a gateway and a client namespace joined by a veth underlay, each
// running a device from this package.
type pair struct {
	gw, cl       *netnstest.NS
	gwDev, clDev *Device
	gwPeer       PeerConfig // the client as the gateway sees it
}

// newPair builds the pair; the client reaches the gateway at gwUnderlay
// (192.0.2.1 or 2001:db8::1) port 51820.
func newPair(t *testing.T, gwUnderlay string) *pair {
	t.Helper()
	p := &pair{gw: netnstest.New(t, "gw"), cl: netnstest.New(t, "cl")}
	netnstest.Veth(t, p.gw, "eth0", p.cl, "eth0")
	p.gw.Run("ip", "addr", "add", "192.0.2.1/24", "dev", "eth0")
	p.cl.Run("ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
	p.gw.Run("ip", "addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
	p.cl.Run("ip", "addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad")

	p.gwDev = openIn(t, p.gw, gatewayConfig(t, netnstest.Unique("wg"), 51820))
	clCfg := gatewayConfig(t, netnstest.Unique("wc"), 0)
	clCfg.Addresses = []netip.Prefix{netip.MustParsePrefix("10.20.0.2/24"), netip.MustParsePrefix("fd20::2/64")}
	clCfg.ExtraAddrs = nil
	p.clDev = openIn(t, p.cl, clCfg)

	p.gwPeer = PeerConfig{PublicKey: p.clDev.PublicKey(), AllowedIPs: pfx("10.20.0.2/32", "fd20::2/128")}
	if a, r, u, err := p.gwDev.SyncPeers([]PeerConfig{p.gwPeer}); err != nil || a != 1 || r+u != 0 {
		t.Fatalf("gateway sync: %d/%d/%d %v", a, r, u, err)
	}
	if _, _, _, err := p.clDev.SyncPeers([]PeerConfig{{
		PublicKey:           p.gwDev.PublicKey(),
		AllowedIPs:          pfx("10.20.0.0/24", "fd20::/64"),
		Endpoint:            &net.UDPAddr{IP: net.ParseIP(gwUnderlay), Port: 51820},
		PersistentKeepalive: 25 * time.Second,
	}}); err != nil {
		t.Fatal(err)
	}
	return p
}

// ping reports whether one of tries pings (one second each) from ns reaches addr.
func ping(ns *netnstest.NS, addr string, tries int) bool {
	for range tries {
		if _, err := ns.Exec("ping", "-c1", "-W1", addr); err == nil {
			return true
		}
	}
	return false
}

func (p *pair) mustPing(t *testing.T) {
	t.Helper()
	for _, a := range []string{"10.20.0.1", "fd20::1"} {
		if !ping(p.cl, a, 5) {
			t.Fatalf("ping %s from client through the tunnel failed", a)
		}
	}
}

func peerStats(t *testing.T, d *Device, k wgtypes.Key) wgtypes.Peer {
	t.Helper()
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st {
		if p.PublicKey == k {
			return p
		}
	}
	t.Fatalf("peer %s not on %s", k, d.Name())
	return wgtypes.Peer{}
}

func TestNetnsPeerChangesKeepSessions(t *testing.T) {
	netnstest.RequirePrivileged(t, "ping")
	p := newPair(t, "192.0.2.1")
	p.mustPing(t)

	first := peerStats(t, p.gwDev, p.gwPeer.PublicKey)
	if first.LastHandshakeTime.IsZero() || first.ReceiveBytes == 0 || first.Endpoint == nil || !first.Endpoint.IP.Equal(net.ParseIP("192.0.2.2")) {
		t.Fatalf("after ping: handshake %v rx %d endpoint %v", first.LastHandshakeTime, first.ReceiveBytes, first.Endpoint)
	}

	// checkSession pings again and checks the first peer's session survived:
	// same handshake, counters still growing.
	rx := first.ReceiveBytes
	checkSession := func(step string) {
		t.Helper()
		p.mustPing(t)
		s := peerStats(t, p.gwDev, p.gwPeer.PublicKey)
		if !s.LastHandshakeTime.Equal(first.LastHandshakeTime) {
			t.Fatalf("%s: re-handshake (%v, was %v)", step, s.LastHandshakeTime, first.LastHandshakeTime)
		}
		if s.ReceiveBytes <= rx {
			t.Fatalf("%s: rx bytes %d, not above %d", step, s.ReceiveBytes, rx)
		}
		rx = s.ReceiveBytes
	}

	second := PeerConfig{PublicKey: testKey(t), AllowedIPs: pfx("10.20.0.3/32", "fd20::3/128")}
	if a, r, u, err := p.gwDev.SyncPeers([]PeerConfig{p.gwPeer, second}); err != nil || a != 1 || r != 0 || u != 0 {
		t.Fatalf("add second: %d/%d/%d %v", a, r, u, err)
	}
	checkSession("add second peer")

	wider := p.gwPeer
	wider.AllowedIPs = pfx("10.20.0.2/32", "fd20::2/128", "10.20.0.99/32")
	if a, r, u, err := p.gwDev.SyncPeers([]PeerConfig{wider, second}); err != nil || a != 0 || r != 0 || u != 1 {
		t.Fatalf("update first: %d/%d/%d %v", a, r, u, err)
	}
	checkSession("update first peer")

	if a, r, u, err := p.gwDev.SyncPeers([]PeerConfig{wider}); err != nil || a != 0 || r != 1 || u != 0 {
		t.Fatalf("remove second: %d/%d/%d %v", a, r, u, err)
	}
	checkSession("remove second peer")
	if st, _ := p.gwDev.Stats(); len(st) != 1 {
		t.Fatalf("%d peers after removing the second", len(st))
	}

	if a, r, u, err := p.gwDev.SyncPeers(nil); err != nil || a != 0 || r != 1 || u != 0 {
		t.Fatalf("remove first: %d/%d/%d %v", a, r, u, err)
	}
	for _, a := range []string{"10.20.0.1", "fd20::1"} {
		if ping(p.cl, a, 1) {
			t.Fatalf("ping %s crossed after the peer was removed", a)
		}
	}
}

// TestNetnsIPv6Underlay runs the tunnel over an IPv6 underlay: the gateway's
// UDP socket must serve v6 in the namespace too.
func TestNetnsIPv6Underlay(t *testing.T) {
	netnstest.RequirePrivileged(t, "ping")
	p := newPair(t, "2001:db8::1")
	p.mustPing(t)
	s := peerStats(t, p.gwDev, p.gwPeer.PublicKey)
	if s.Endpoint == nil || !s.Endpoint.IP.Equal(net.ParseIP("2001:db8::2")) || s.LastHandshakeTime.IsZero() {
		t.Fatalf("client seen at %v, handshake %v", s.Endpoint, s.LastHandshakeTime)
	}
}

func TestNetnsTeardownAndExists(t *testing.T) {
	netnstest.RequirePrivileged(t, "ping", "wg")
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	p := newPair(t, "192.0.2.1")
	p.mustPing(t)
	name := p.gwDev.Name()

	// Same name in the same namespace: the link exists.
	again := gatewayConfig(t, name, 51821)
	err := doIn(t, p.gw, func() error {
		_, err := Open(context.Background(), again, Options{Logger: testLogger(t)})
		return err
	})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second open in the same namespace: %v, want ErrExists", err)
	}
	// Same name in another namespace: the UAPI socket is live.
	other := netnstest.New(t, "ot")
	err = doIn(t, other, func() error {
		_, err := Open(context.Background(), again, Options{Logger: testLogger(t)})
		return err
	})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second open in another namespace: %v, want ErrExists", err)
	}
	if _, err := nlIn(t, other).LinkByName(name); err == nil {
		t.Fatal("failed open left an interface behind")
	}
	// The first instance is untouched.
	p.mustPing(t)
	if show := p.gw.Run("wg", "show", name); !strings.Contains(show, p.gwDev.PublicKey().String()) || !strings.Contains(show, "listening port: 51820") {
		t.Fatalf("first instance changed:\n%s", show)
	}

	if err := p.gwDev.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := nlIn(t, p.gw).LinkByName(name); err == nil {
		t.Fatal("interface survived close")
	}
	if _, err := os.Stat(uapiPath(name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket survived close: %v", err)
	}
	if _, err := p.gwDev.Stats(); !errors.Is(err, ErrClosed) {
		t.Fatalf("stats after close: %v", err)
	}
	if err := p.clDev.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNetnsStaleSocketIsReplaced(t *testing.T) {
	netnstest.RequirePrivileged(t)
	ns := netnstest.New(t, "gw")
	name := netnstest.Unique("wg")
	if err := os.MkdirAll(uapiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: uapiPath(name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(uapiPath(name)) }) // in case Open failed
	d := openIn(t, ns, gatewayConfig(t, name, 0))
	if _, err := d.Stats(); err != nil {
		t.Fatalf("device behind replaced socket: %v", err)
	}
}

// TestNetnsListenPortChangeStaysInNamespace changes the port over the UAPI
// socket from outside (wg set): the rebind must happen in the device's
// namespace even though the request is served by another goroutine.
func TestNetnsListenPortChangeStaysInNamespace(t *testing.T) {
	netnstest.RequirePrivileged(t, "wg", "ss")
	ns := netnstest.New(t, "gw")
	d := openIn(t, ns, gatewayConfig(t, netnstest.Unique("wg"), 51820))
	for i := range 3 { // several connections, so several handler threads
		port := strconv.Itoa(51830 + i)
		if out, err := exec("wg", "set", d.Name(), "listen-port", port); err != nil {
			t.Fatalf("wg set: %v: %s", err, out)
		}
		if out := ns.Run("ss", "-H", "-uln", "sport = :"+port); !strings.Contains(out, port) {
			t.Fatalf("rebind to %s did not land in %s: %q", port, ns.Name, out)
		}
	}
	runtime.GC()
	if _, err := d.Stats(); err != nil {
		t.Fatal(err)
	}
}

// TestNetnsKernelBackend checks the kernel backend against whatever this
// kernel offers: with the module it must work end to end; without it Open
// must fail with EOPNOTSUPP and leave nothing behind. (No skip: make test
// treats a skipped privileged test as a failure.)
func TestNetnsKernelBackend(t *testing.T) {
	netnstest.RequirePrivileged(t, "wg")
	ns := netnstest.New(t, "gw")
	probe := netnstest.Unique("wp")
	_, kerr := ns.Exec("ip", "link", "add", probe, "type", "wireguard")
	if kerr == nil {
		ns.Run("ip", "link", "del", probe)
	}
	cfg := gatewayConfig(t, netnstest.Unique("wg"), 51820)
	cfg.Backend = BackendKernel
	var d *Device
	err := doIn(t, ns, func() error {
		var err error
		d, err = Open(context.Background(), cfg, Options{Logger: testLogger(t)})
		return err
	})
	nl := nlIn(t, ns)
	if kerr != nil {
		if err == nil || !errors.Is(err, unix.EOPNOTSUPP) {
			t.Fatalf("kernel backend without module: %v", err)
		}
		if _, lerr := nl.LinkByName(cfg.Name); lerr == nil {
			t.Fatal("failed kernel open left a link")
		}
		if _, serr := os.Stat(uapiPath(cfg.Name)); !errors.Is(serr, os.ErrNotExist) {
			t.Fatalf("failed kernel open left a socket: %v", serr)
		}
		return
	}
	if err != nil {
		t.Fatalf("kernel backend with module: %v", err)
	}
	link, err := nl.LinkByName(cfg.Name)
	if err != nil || link.Type() != "wireguard" || link.Attrs().MTU != DefaultMTU {
		t.Fatalf("kernel link: %v %v", link, err)
	}
	if show := ns.Run("wg", "show", cfg.Name); !strings.Contains(show, d.PublicKey().String()) || !strings.Contains(show, "listening port: 51820") {
		t.Fatalf("wg show:\n%s", show)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := nl.LinkByName(cfg.Name); err == nil {
		t.Fatal("kernel link survived close")
	}
}

// TestNetnsTUNQueriesFromOtherThreads asks the userspace device's TUN for
// its MTU from a goroutine outside the namespace, as wireguard-go's event
// reader does after an MTU change.
func TestNetnsTUNQueriesFromOtherThreads(t *testing.T) {
	netnstest.RequirePrivileged(t)
	ns := netnstest.New(t, "gw")
	name := netnstest.Unique("wg")
	var us *userspace
	err := doIn(t, ns, func() error {
		u, err := startUserspace(name, 1400, testLogger(t))
		if err != nil {
			return err
		}
		us = u.(*userspace)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = us.Close() }) // the test closes it; this covers failures
	mtu, err := us.tun.MTU()
	if err != nil || mtu != 1400 {
		t.Fatalf("mtu = %d, %v", mtu, err)
	}
	ns.Run("ip", "link", "set", name, "mtu", "1300")
	if mtu, err := us.tun.MTU(); err != nil || mtu != 1300 {
		t.Fatalf("mtu after change = %d, %v", mtu, err)
	}
	// Up/down events never reach wireguard-go; MTU events do.
	ns.Run("ip", "link", "set", name, "up")
	ns.Run("ip", "link", "set", name, "down")
	if err := us.Close(); err != nil {
		t.Fatal(err)
	}
	// Late queries during and after shutdown answer the last known MTU.
	if mtu, err := us.tun.MTU(); err != nil || mtu != 1300 {
		t.Fatalf("mtu after close = %d, %v", mtu, err)
	}
}
