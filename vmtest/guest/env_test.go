//go:build sluicevm

package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"
	"github.com/sluice-vpn/sluice/vmtest/guestinit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The test network inside the VM (DESIGN.md's addressing): the gateway's
// underlay 192.0.2.1, the client's 192.0.2.2, the tunnel 10.20.0.0/24 and
// fd20::/64 with the resolvers on .53, and off-policy resolver addresses in
// 198.51.100.0/24 and 2001:db8:5353::/48 that the client routes into the
// tunnel and that nobody has: only the gateway's table can answer them.
var (
	gwUnderlay = netip.MustParsePrefix("192.0.2.1/24")
	clUnderlay = netip.MustParsePrefix("192.0.2.2/24")
	// the gateway's default routes point at addresses nobody has
	gwUnderlay6 = netip.MustParsePrefix("2001:db8:1::1/64")
	nextHop4    = netip.MustParseAddr("192.0.2.254")
	nextHop6    = netip.MustParseAddr("2001:db8:1::fe")
	resolver4   = netip.MustParseAddr("10.20.0.53")
	resolver6   = netip.MustParseAddr("fd20::53")
	offPolicy4  = netip.MustParseAddr("198.51.100.53")
	offPolicy6  = netip.MustParseAddr("2001:db8:5353::53")
	// answers of the upstream the test runs: only it knows them
	answerA    = netip.MustParseAddr("192.0.2.99")
	answerAAAA = netip.MustParseAddr("2001:db8::99")
)

const (
	gwPort       = 51820
	upstreamAddr = "127.0.0.1:5300"
	testName     = "www.vmtest.example."
	// readyTimeout bounds sluice up until its "ready" log line; software
	// emulation makes everything slower than on hardware.
	readyTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
	applyTimeout = 20 * time.Second
)

func unique(prefix string) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

// ns is a network namespace of one test, alive until its cleanup.
type ns struct {
	h  netns.NsHandle
	nl *netlink.Handle
}

func newNS(t testing.TB) *ns {
	t.Helper()
	h, err := guestinit.NewNetns()
	if err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		t.Fatalf("netlink in netns: %v", err)
	}
	t.Cleanup(func() { nl.Close(); h.Close() })
	return &ns{h: h, nl: nl}
}

// do runs fn on a thread switched into the namespace (guestinit.InNetns).
func (n *ns) do(fn func() error) error { return guestinit.InNetns(n.h, fn) }

// wgctrl opens a WireGuard control client in the namespace.
func (n *ns) wgctrl(t testing.TB) *wgctrl.Client {
	t.Helper()
	var c *wgctrl.Client
	if err := n.do(func() (err error) { c, err = wgctrl.New(); return err }); err != nil {
		t.Fatalf("wgctrl: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// veth connects a (aName, aAddr) to b (bName, bAddr).
func veth(t testing.TB, a *ns, aName string, aAddr netip.Prefix, b *ns, bName string, bAddr netip.Prefix) {
	t.Helper()
	la := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, Namespace: netlink.NsFd(a.h)},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.h),
	}
	if err := netlink.LinkAdd(la); err != nil {
		t.Fatalf("add veth %s/%s: %v", aName, bName, err)
	}
	for _, end := range []struct {
		n    *ns
		name string
		addr netip.Prefix
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		l, err := end.n.nl.LinkByName(end.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := end.n.nl.AddrAdd(l, &netlink.Addr{IPNet: ipNet(end.addr)}); err != nil {
			t.Fatal(err)
		}
		if err := end.n.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// upstream runs the DNS server sluice forwards to, on 127.0.0.1:5300 (UDP
// and TCP) in n: A and AAAA for any name are answerA and answerAAAA, other
// types NOERROR without records.
func upstream(t testing.TB, n *ns) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			q := r.Question[0]
			hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Rrtype: q.Qtype, Ttl: 60}
			switch q.Qtype {
			case dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: answerA.AsSlice()})
			case dns.TypeAAAA:
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: answerAAAA.AsSlice()})
			}
		}
		_ = w.WriteMsg(m) // the client may be gone; nothing to do about it
	})
	var pc net.PacketConn
	var ln net.Listener
	err := n.do(func() (err error) {
		if pc, err = net.ListenPacket("udp", upstreamAddr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", upstreamAddr)
		return err
	})
	if err != nil {
		t.Fatalf("upstream listen: %v", err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		s := s
		done := make(chan struct{})
		go func() { defer close(done); _ = s.ActivateAndServe() }()
		t.Cleanup(func() { _ = s.Shutdown(); <-done })
	}
}

// gateway is one sluice under test with its namespaces.
type gateway struct {
	t       testing.TB
	gw, cl  *ns
	dir     string
	conf    string
	ifname  string
	table   string
	wg      *wgctrl.Client // in gw
	proc    *daemon
	backend string
}

type gatewayOpts struct {
	backend   string // kernel or userspace
	offPolicy string // redirect or reject
	port      int
}

// newGateway builds the test network (gateway and client namespaces joined
// by a veth underlay, the upstream DNS server in the gateway namespace)
// and writes sluice's config; start runs sluice up.
func newGateway(t testing.TB, o gatewayOpts) *gateway {
	t.Helper()
	if o.port == 0 {
		o.port = gwPort
	}
	g := &gateway{t: t, dir: t.TempDir(), ifname: unique("slwg"), table: unique("slvm"), backend: o.backend}
	g.gw, g.cl = newNS(t), newNS(t)
	veth(t, g.gw, "under0", gwUnderlay, g.cl, "under0", clUnderlay)
	g.defaultRoutes()
	upstream(t, g.gw)
	g.wg = g.gw.wgctrl(t)
	conf := fmt.Sprintf(`interface:
  name: %s
  backend: %s
  listen_port: %d
  private_key_file: %s/gw.key
  addresses: [10.20.0.1/24, fd20::1/64]
  endpoint: %s:%d
dns:
  mode: split
  listen: [%s, %s]
  default: {upstreams: ["%s"]}
enforce:
  off_policy_dns: %s
  table: %s
peers:
  state_dir: %s/state
  routes: [198.51.100.0/24, 2001:db8:5353::/48]
admin:
  listen: ""
  control_socket: %s/ctl.sock
`, g.ifname, o.backend, o.port, g.dir, gwUnderlay.Addr(), o.port, resolver4, resolver6, upstreamAddr, o.offPolicy, g.table, g.dir, g.dir)
	g.conf = filepath.Join(g.dir, "sluice.yaml")
	if err := os.WriteFile(g.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

// defaultRoutes gives the gateway namespace default routes out of the
// underlay, as a concentrator has: traffic peers send to other addresses is
// then forwarded (and meets the table's forward chain) instead of being
// dropped for want of a route. The next hops exist nowhere, so nothing
// forwarded ever arrives anywhere.
func (g *gateway) defaultRoutes() {
	g.t.Helper()
	l, err := g.gw.nl.LinkByName("under0")
	if err != nil {
		g.t.Fatal(err)
	}
	a6 := &netlink.Addr{IPNet: ipNet(gwUnderlay6), Flags: unix.IFA_F_NODAD}
	if err := g.gw.nl.AddrAdd(l, a6); err != nil {
		g.t.Fatalf("underlay v6 address: %v", err)
	}
	for _, via := range []netip.Addr{nextHop4, nextHop6} {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: via.AsSlice()}
		if err := g.gw.nl.RouteAdd(r); err != nil {
			g.t.Fatalf("default route via %s: %v", via, err)
		}
	}
}

// sluice runs a sluice CLI command (not up) against the gateway's config.
func (g *gateway) sluice(args ...string) string {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sluiceBin, append(args, "-c", g.conf)...).CombinedOutput()
	if err != nil {
		g.t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// daemon is a running `sluice up`.
type daemon struct {
	cmd   *exec.Cmd
	ready chan struct{}
	exit  chan struct{} // closed when Wait returned
	err   error         // of Wait, valid after exit

	mu  sync.Mutex // protects log
	log bytes.Buffer
}

// start runs sluice up in the gateway namespace and waits for "ready".
// The test's cleanup kills it if it still runs and prints its log when the
// test failed.
func (g *gateway) start() *daemon {
	g.t.Helper()
	d := &daemon{ready: make(chan struct{}), exit: make(chan struct{})}
	pr, pw := io.Pipe()
	d.cmd = exec.Command(sluiceBin, "up", "-c", g.conf, "--log-level", "debug")
	d.cmd.Stdout, d.cmd.Stderr = pw, pw
	if err := g.gw.do(d.cmd.Start); err != nil {
		g.t.Fatalf("start sluice up: %v", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		pw.Close()
		close(d.exit)
	}()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.log.WriteString(line + "\n")
			d.mu.Unlock()
			if strings.Contains(line, "msg=ready") {
				once.Do(func() { close(d.ready) })
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	g.t.Cleanup(func() {
		select {
		case <-d.exit:
		default:
			_ = d.cmd.Process.Kill()
			<-d.exit
		}
		<-scanned
		if g.t.Failed() {
			g.t.Logf("sluice up log:\n%s", d.logText())
		}
	})
	select {
	case <-d.ready:
	case <-d.exit:
		g.t.Fatalf("sluice up exited before ready: %v\n%s", d.err, d.logText())
	case <-time.After(readyTimeout):
		g.t.Fatalf("sluice up not ready after %s\n%s", readyTimeout, d.logText())
	}
	g.proc = d
	return d
}

// waitLog waits (bounded) until the daemon has logged a line containing s.
func (d *daemon) waitLog(t testing.TB, s string) {
	t.Helper()
	deadline := time.Now().Add(applyTimeout)
	for time.Now().Before(deadline) {
		if strings.Contains(d.logText(), s) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("sluice up did not log %q within %s:\n%s", s, applyTimeout, d.logText())
}

func (d *daemon) logText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

// stop sends sig and waits (bounded) for the process to exit; it returns
// Wait's error.
func (d *daemon) stop(t testing.TB, sig syscall.Signal) error {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-d.exit:
		return d.err
	case <-time.After(stopTimeout):
		t.Fatalf("sluice up still running %s after %v\n%s", stopTimeout, sig, d.logText())
		return nil
	}
}

// linkKind returns the kind of the gateway's interface, or "" when it does
// not exist.
func (g *gateway) linkKind() string {
	g.t.Helper()
	l, err := g.gw.nl.LinkByName(g.ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return ""
		}
		g.t.Fatalf("look up %s: %v", g.ifname, err)
	}
	return l.Type()
}

// tableRules returns how many rules the gateway's nftables table has, and
// whether it exists.
func (g *gateway) tableRules() (int, bool) {
	g.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(g.gw.h)))
	if err != nil {
		g.t.Fatal(err)
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		g.t.Fatalf("list tables: %v", err)
	}
	for _, tb := range tables {
		if tb.Name != g.table {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			g.t.Fatalf("list chains: %v", err)
		}
		n := 0
		for _, ch := range chains {
			if ch.Table.Name != g.table {
				continue
			}
			rules, err := c.GetRules(tb, ch)
			if err != nil {
				g.t.Fatalf("list rules of %s: %v", ch.Name, err)
			}
			n += len(rules)
		}
		return n, true
	}
	return 0, false
}

// waitPeers waits until the device's peers satisfy ok.
func (g *gateway) waitPeers(what string, ok func([]wgtypes.Peer) bool) []wgtypes.Peer {
	g.t.Helper()
	deadline := time.Now().Add(applyTimeout)
	var last []wgtypes.Peer
	for time.Now().Before(deadline) {
		dev, err := g.wg.Device(g.ifname)
		if err != nil {
			g.t.Fatalf("read device %s: %v", g.ifname, err)
		}
		last = dev.Peers
		if ok(last) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.t.Fatalf("device %s: %s: not within %s; peers now: %v", g.ifname, what, applyTimeout, peerSummary(last))
	return nil
}

func peerSummary(ps []wgtypes.Peer) string {
	var s []string
	for _, p := range ps {
		var ips []string
		for _, n := range p.AllowedIPs {
			ips = append(ips, n.String())
		}
		s = append(s, p.PublicKey.String()[:8]+"["+strings.Join(ips, ",")+"]")
	}
	return strings.Join(s, " ")
}

// clientConf is what the client needs from a rendered wg-quick config.
type clientConf struct {
	priv, peer, psk wgtypes.Key
	hasPSK          bool
	addrs           []netip.Prefix
	allowed         []netip.Prefix
	endpoint        netip.AddrPort
}

func parseConf(t testing.TB, text string) clientConf {
	t.Helper()
	var c clientConf
	prefixes := func(v string) []netip.Prefix {
		var out []netip.Prefix
		for _, f := range strings.Split(v, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(f))
			if err != nil {
				t.Fatalf("config value %q: %v", v, err)
			}
			out = append(out, p)
		}
		return out
	}
	key := func(v string) wgtypes.Key {
		k, err := wgtypes.ParseKey(v)
		if err != nil {
			t.Fatalf("config key: %v", err)
		}
		return k
	}
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "PrivateKey":
			c.priv = key(v)
		case "PublicKey":
			c.peer = key(v)
		case "PresharedKey":
			c.psk, c.hasPSK = key(v), true
		case "Address":
			c.addrs = prefixes(v)
		case "AllowedIPs":
			c.allowed = prefixes(v)
		case "Endpoint":
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				t.Fatalf("endpoint %q: %v", v, err)
			}
			c.endpoint = ap
		}
	}
	if c.priv == (wgtypes.Key{}) || c.peer == (wgtypes.Key{}) || len(c.addrs) == 0 || len(c.allowed) == 0 || !c.endpoint.IsValid() {
		t.Fatalf("incomplete client config:\n%s", text)
	}
	return c
}

// client brings up a kernel WireGuard interface in the client namespace
// from a rendered client config: key, peer, addresses, and a route for
// every AllowedIPs prefix, as wg-quick would.
func (g *gateway) client(conf clientConf) {
	g.t.Helper()
	const name = "wgc0"
	if err := g.cl.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		g.t.Fatalf("add client wireguard link: %v", err)
	}
	wg := g.cl.wgctrl(g.t)
	var allowed []net.IPNet
	for _, p := range conf.allowed {
		allowed = append(allowed, *ipNet(p))
	}
	ka := 5 * time.Second
	peer := wgtypes.PeerConfig{
		PublicKey:                   conf.peer,
		Endpoint:                    net.UDPAddrFromAddrPort(conf.endpoint),
		AllowedIPs:                  allowed,
		ReplaceAllowedIPs:           true,
		PersistentKeepaliveInterval: &ka,
	}
	if conf.hasPSK {
		peer.PresharedKey = &conf.psk
	}
	if err := wg.ConfigureDevice(name, wgtypes.Config{PrivateKey: &conf.priv, Peers: []wgtypes.PeerConfig{peer}}); err != nil {
		g.t.Fatalf("configure client: %v", err)
	}
	l, err := g.cl.nl.LinkByName(name)
	if err != nil {
		g.t.Fatal(err)
	}
	for _, a := range conf.addrs {
		addr := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := g.cl.nl.AddrAdd(l, addr); err != nil {
			g.t.Fatalf("client address %s: %v", a, err)
		}
	}
	if err := g.cl.nl.LinkSetMTU(l, 1420); err != nil {
		g.t.Fatal(err)
	}
	if err := g.cl.nl.LinkSetUp(l); err != nil {
		g.t.Fatal(err)
	}
	for _, p := range conf.allowed {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(p.Masked())}
		if err := g.cl.nl.RouteReplace(r); err != nil {
			g.t.Fatalf("client route %s: %v", p, err)
		}
	}
}

// addClient adds user/device to the running gateway, renders its config
// and brings the client up from it.
func (g *gateway) addClient(id string) (clientConf, wgtypes.Key) {
	g.t.Helper()
	user, dev, _ := strings.Cut(id, "/")
	g.sluice("peer", "add", user, "--device", dev)
	conf := parseConf(g.t, g.sluice("peer", "config", id))
	g.client(conf)
	return conf, conf.priv.PublicKey()
}

// ping sends ICMP echo requests from the client namespace to dst until
// one is answered or limit passes.
func (g *gateway) ping(dst netip.Addr, limit time.Duration) error {
	network, laddr, reqType, replyType := "ip4:icmp", "0.0.0.0", byte(8), byte(0)
	if dst.Is6() {
		network, laddr, reqType, replyType = "ip6:ipv6-icmp", "::", 128, 129
	}
	var c net.PacketConn
	if err := g.cl.do(func() (err error) { c, err = net.ListenPacket(network, laddr); return err }); err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer c.Close()
	var idb [2]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return err
	}
	id := binary.BigEndian.Uint16(idb[:])
	deadline := time.Now().Add(limit)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		msg := []byte{reqType, 0, 0, 0, idb[0], idb[1], byte(seq >> 8), byte(seq), 's', 'l', 'u', 'i', 'c', 'e'}
		if dst.Is4() {
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		} // ICMPv6: the kernel fills the checksum
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			time.Sleep(200 * time.Millisecond) // no route yet, handshake pending
			continue
		}
		buf := make([]byte, 1500)
		wait := time.Now().Add(time.Second)
		for time.Now().Before(wait) {
			_ = c.SetReadDeadline(wait)
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			ip, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			if !ok || ip.Unmap() != dst || n < 8 || buf[0] != replyType {
				continue
			}
			if binary.BigEndian.Uint16(buf[4:]) == id {
				return nil
			}
		}
	}
	return fmt.Errorf("no echo reply from %s within %s", dst, limit)
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// query sends one DNS query over UDP from the client namespace.
func (g *gateway) query(server netip.Addr, name string, qtype uint16) (*dns.Msg, error) {
	var conn net.Conn
	err := g.cl.do(func() (err error) {
		conn, err = net.Dial("udp", netip.AddrPortFrom(server, 53).String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Conn{Conn: conn}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMsg(m); err != nil {
		return nil, err
	}
	return c.ReadMsg()
}

// answerAddr returns the single address of an A or AAAA answer.
func answerAddr(m *dns.Msg) (netip.Addr, error) {
	if m.Rcode != dns.RcodeSuccess {
		return netip.Addr{}, fmt.Errorf("rcode %s", dns.RcodeToString[m.Rcode])
	}
	for _, rr := range m.Answer {
		switch r := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(r.A)
			return a.Unmap(), nil
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(r.AAAA)
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no address in answer: %v", m.Answer)
}
