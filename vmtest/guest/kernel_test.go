//go:build sluicevm

package guest

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// handshakeLimit bounds the first handshake plus echo under emulation.
const handshakeLimit = 30 * time.Second

// TestKernelLink: `sluice up` with backend kernel creates a real wireguard
// link (no fallback to the embedded device) and programs the kernel.
func TestKernelLink(t *testing.T) {
	g := newGateway(t, gatewayOpts{backend: "kernel", offPolicy: "redirect"})
	g.start()
	if kind := g.linkKind(); kind != "wireguard" {
		t.Fatalf("interface %s has link kind %q, want wireguard", g.ifname, kind)
	}
	dev, err := g.wg.Device(g.ifname)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Type != wgtypes.LinuxKernel {
		t.Fatalf("device type %v, want the kernel implementation", dev.Type)
	}
	if dev.ListenPort != gwPort {
		t.Fatalf("listen port %d, want %d", dev.ListenPort, gwPort)
	}
	if n, ok := g.tableRules(); !ok || n == 0 {
		t.Fatalf("table %s: present %v with %d rules", g.table, ok, n)
	}
	if _, err := os.Stat("/run/wireguard/" + g.ifname + ".sock"); err == nil {
		t.Fatalf("a userspace UAPI socket exists for %s: the embedded backend is running", g.ifname)
	}
}

// TestKernelPeersLive: peers added, changed and removed while sluice runs
// reach the kernel device; the change is an in-place update.
func TestKernelPeersLive(t *testing.T) {
	g := newGateway(t, gatewayOpts{backend: "kernel", offPolicy: "redirect"})
	g.start()
	g.waitPeers("no peers at start", func(ps []wgtypes.Peer) bool { return len(ps) == 0 })

	g.sluice("peer", "add", "alice", "--device", "laptop")
	g.sluice("peer", "add", "bob", "--device", "phone")
	alice, bob := g.storePeer("alice", "laptop"), g.storePeer("bob", "phone")
	g.waitPeers("alice and bob added", func(ps []wgtypes.Peer) bool {
		return len(ps) == 2 && hasPeer(ps, alice.key, alice.allowed) && hasPeer(ps, bob.key, bob.allowed)
	})

	// Change bob in the store, as another process editing it would: new
	// addresses. The daemon polls the store and updates the peer in place.
	newV4, newV6 := netip.MustParseAddr("10.20.0.200"), netip.MustParseAddr("fd20::200")
	g.editStore(func(r map[string]any) {
		if r["user"] == "bob" {
			r["ipv4"], r["ipv6"] = newV4.String(), newV6.String()
		}
	})
	want := []netip.Prefix{netip.PrefixFrom(newV4, 32), netip.PrefixFrom(newV6, 128)}
	g.waitPeers("bob's addresses changed", func(ps []wgtypes.Peer) bool {
		return len(ps) == 2 && hasPeer(ps, bob.key, want) && hasPeer(ps, alice.key, alice.allowed)
	})
	g.proc.waitLog(t, `msg="peers applied" total=2 added=0 removed=0 updated=1 `)

	g.sluice("peer", "remove", "bob/phone")
	g.waitPeers("bob removed", func(ps []wgtypes.Peer) bool {
		return len(ps) == 1 && hasPeer(ps, alice.key, alice.allowed)
	})
}

// TestKernelTunnel: a real client (a second kernel WireGuard interface in
// its own namespace, configured from `sluice peer config`) handshakes,
// pings the resolver on v4 and v6, gets DNS answered by the proxy through
// the tunnel, and an off-policy query to another address on port 53 is
// redirected to the proxy by the table.
func TestKernelTunnel(t *testing.T) {
	g := newGateway(t, gatewayOpts{backend: "kernel", offPolicy: "redirect"})
	g.start()
	_, pub := g.addClient("alice/laptop")
	g.waitPeers("alice on the device", func(ps []wgtypes.Peer) bool { return len(ps) == 1 })

	for _, dst := range []netip.Addr{resolver4, resolver6} {
		if err := g.ping(dst, handshakeLimit); err != nil {
			t.Fatalf("ping through the tunnel: %v", err)
		}
	}
	ps := g.waitPeers("alice handshaken", func(ps []wgtypes.Peer) bool {
		return len(ps) == 1 && ps[0].PublicKey == pub && !ps[0].LastHandshakeTime.IsZero()
	})
	if ps[0].ReceiveBytes == 0 || ps[0].TransmitBytes == 0 {
		t.Fatalf("gateway counters rx %d tx %d after pings", ps[0].ReceiveBytes, ps[0].TransmitBytes)
	}

	cases := []struct {
		name   string
		server netip.Addr
		qtype  uint16
		want   netip.Addr
	}{
		{"resolver v4, A", resolver4, dns.TypeA, answerA},
		{"resolver v6, AAAA", resolver6, dns.TypeAAAA, answerAAAA},
		{"off-policy v4 redirected", offPolicy4, dns.TypeA, answerA},
		{"off-policy v6 redirected", offPolicy6, dns.TypeAAAA, answerAAAA},
	}
	for _, c := range cases {
		m, err := g.query(c.server, testName, c.qtype)
		if err != nil {
			t.Fatalf("%s: query %s: %v", c.name, c.server, err)
		}
		got, err := answerAddr(m)
		if err != nil || got != c.want {
			t.Fatalf("%s: answer %v (%v), want %s from the proxy's upstream", c.name, got, err, c.want)
		}
	}
}

// TestKernelOffPolicyReject: with off_policy_dns: reject, DNS to another
// address through the tunnel fails at once and is never answered: UDP gets
// the table's ICMP administratively prohibited (sent from the gateway's
// own tunnel address, which client configs route for exactly this reason;
// without it the client's WireGuard dropped the error and the application
// waited for its own timeout), and a TCP connection is reset. The resolver
// answers.
func TestKernelOffPolicyReject(t *testing.T) {
	g := newGateway(t, gatewayOpts{backend: "kernel", offPolicy: "reject"})
	g.start()
	g.addClient("alice/laptop")
	if err := g.ping(resolver4, handshakeLimit); err != nil {
		t.Fatalf("ping through the tunnel: %v", err)
	}
	if m, err := g.query(resolver4, testName, dns.TypeA); err != nil {
		t.Fatalf("query resolver: %v", err)
	} else if a, err := answerAddr(m); err != nil || a != answerA {
		t.Fatalf("resolver answer %v (%v), want %s", a, err, answerA)
	}
	for _, dst := range []netip.Addr{offPolicy4, offPolicy6} {
		m, err := g.query(dst, testName, dns.TypeA)
		if err == nil {
			t.Fatalf("off-policy UDP query to %s answered (%v): the table did not reject it", dst, m.Answer)
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("off-policy UDP query to %s timed out (%v): the table's ICMP error did not reach the client", dst, err)
		}
		err = g.dialTCP(netip.AddrPortFrom(dst, 53))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("off-policy TCP to %s:53: %v, want a prompt reset (connection refused)", dst, err)
		}
	}
}

// TestKernelStopAndCrash: SIGTERM removes the link and the table; after
// SIGKILL the table stays (fail closed) and the next `sluice up` replaces
// it, without duplicate rules, and comes up on the kernel backend again.
func TestKernelStopAndCrash(t *testing.T) {
	g := newGateway(t, gatewayOpts{backend: "kernel", offPolicy: "redirect"})
	d := g.start()
	rules, ok := g.tableRules()
	if !ok || rules == 0 {
		t.Fatalf("table %s missing after start", g.table)
	}
	if err := d.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("sluice up after SIGTERM: %v\n%s", err, d.logText())
	}
	if kind := g.linkKind(); kind != "" {
		t.Fatalf("after SIGTERM the %s link (%s) is still there", g.ifname, kind)
	}
	if _, ok := g.tableRules(); ok {
		t.Fatalf("after SIGTERM table %s is still there", g.table)
	}

	d = g.start()
	_ = d.stop(t, syscall.SIGKILL) // a killed process reports the signal
	n, ok := g.tableRules()
	if !ok || n != rules {
		t.Fatalf("after SIGKILL table %s present %v with %d rules, want it kept with %d (fail closed)", g.table, ok, n, rules)
	}

	d = g.start()
	if kind := g.linkKind(); kind != "wireguard" {
		t.Fatalf("after restart the link kind is %q, want wireguard", kind)
	}
	if n, ok := g.tableRules(); !ok || n != rules {
		t.Fatalf("after restart table %s present %v with %d rules, want %d (replaced, not duplicated)", g.table, ok, n, rules)
	}
	g.addClient("alice/laptop")
	if err := g.ping(resolver4, handshakeLimit); err != nil {
		t.Fatalf("ping through the restarted gateway: %v", err)
	}
	if err := d.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("sluice up after SIGTERM: %v", err)
	}
	if kind := g.linkKind(); kind != "" {
		t.Fatalf("after the final SIGTERM the link (%s) is still there", kind)
	}
	if _, ok := g.tableRules(); ok {
		t.Fatalf("after the final SIGTERM the table is still there")
	}
}

// dialTCP connects from the client namespace and closes at once.
func (g *gateway) dialTCP(dst netip.AddrPort) error {
	return g.cl.do(func() error {
		c, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// storePeer is a peer as the store has it.
type storePeer struct {
	key     wgtypes.Key
	allowed []netip.Prefix
}

func (g *gateway) storePeer(user, device string) storePeer {
	g.t.Helper()
	var found *storePeer
	g.readStore(func(r map[string]any) {
		if r["user"] != user || r["device"] != device {
			return
		}
		k, err := wgtypes.ParseKey(r["public_key"].(string))
		if err != nil {
			g.t.Fatal(err)
		}
		v4 := netip.MustParseAddr(r["ipv4"].(string))
		v6 := netip.MustParseAddr(r["ipv6"].(string))
		found = &storePeer{key: k, allowed: []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)}}
	})
	if found == nil {
		g.t.Fatalf("%s/%s not in the store", user, device)
	}
	return *found
}

func (g *gateway) storePath() string { return filepath.Join(g.dir, "state", "peers.json") }

func (g *gateway) readStore(fn func(map[string]any)) map[string]any {
	g.t.Helper()
	b, err := os.ReadFile(g.storePath())
	if err != nil {
		g.t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		g.t.Fatalf("decode peer store: %v", err)
	}
	list, ok := doc["peers"].([]any)
	if !ok {
		g.t.Fatalf("peer store has no peers list")
	}
	for _, p := range list {
		fn(p.(map[string]any))
	}
	return doc
}

// editStore rewrites the store file (atomically, by rename) with fn
// applied to every peer record.
func (g *gateway) editStore(fn func(map[string]any)) {
	g.t.Helper()
	doc := g.readStore(fn)
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		g.t.Fatal(err)
	}
	tmp := g.storePath() + ".vmtest"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Rename(tmp, g.storePath()); err != nil {
		g.t.Fatal(err)
	}
}

func hasPeer(ps []wgtypes.Peer, key wgtypes.Key, allowed []netip.Prefix) bool {
	for _, p := range ps {
		if p.PublicKey != key {
			continue
		}
		var got []netip.Prefix
		for _, n := range p.AllowedIPs {
			a, _ := netip.AddrFromSlice(n.IP)
			ones, _ := n.Mask.Size()
			got = append(got, netip.PrefixFrom(a.Unmap(), ones))
		}
		want := slices.Clone(allowed)
		cmp := func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }
		slices.SortFunc(got, cmp)
		slices.SortFunc(want, cmp)
		return slices.Equal(got, want)
	}
	return false
}
