package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/peers"
)

// Doctor tuning.
const (
	doctorQueryTimeout = 2 * time.Second
	recentHandshake    = 3 * time.Minute // WireGuard re-handshakes every 2 minutes on an active session
)

// Check is one step of the doctor's playbook.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Action string `json:"action,omitempty"` // what the operator should do when it failed
}

// Report is the doctor's result.
type Report struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
}

func (r *Report) add(c Check) {
	r.Checks = append(r.Checks, c)
}

// Doctor runs the gateway-side playbook: is the interface up and who has
// handshaken; how is each upstream routed and does it answer; is the
// firewall in place; does the proxy answer on every tunnel address and
// block the canaries. With peer ("user/device") it adds that peer's view.
func (g *Gateway) Doctor(ctx context.Context, peer string) *Report {
	cfg := g.Config()
	r := &Report{}
	g.doctorInterface(r, cfg)
	g.doctorUpstreams(ctx, r, cfg)
	g.doctorFirewall(r)
	if cfg.forwards() {
		if off := forwardingOff(); len(off) > 0 {
			r.add(Check{Name: "forwarding", Detail: "off: " + strings.Join(off, ", "), Action: "peers cannot reach peers.routes or the internet: something turned forwarding off; restart sluice or set the sysctls to 1"})
		} else {
			r.add(Check{Name: "forwarding", OK: true, Detail: "IPv4 and IPv6 forwarding on"})
		}
	}
	g.doctorProxy(ctx, r, cfg)
	g.doctorEncrypted(ctx, r, cfg)
	if peer != "" {
		g.doctorPeer(r, peer)
	}
	r.OK = true
	for _, c := range r.Checks {
		r.OK = r.OK && c.OK
	}
	return r
}

func (g *Gateway) doctorInterface(r *Report, cfg *Config) {
	link, err := netlink.LinkByName(cfg.Interface.Name)
	switch {
	case err != nil:
		r.add(Check{Name: "interface", Detail: err.Error(), Action: "restart sluice; check `journalctl -u sluice` for why the interface went away"})
	case link.Attrs().Flags&net.FlagUp == 0:
		r.add(Check{Name: "interface", Detail: cfg.Interface.Name + " is down", Action: "restart sluice (something set the link down)"})
	default:
		r.add(Check{Name: "interface", OK: true, Detail: fmt.Sprintf("%s up (%s backend, mtu %d)", cfg.Interface.Name, g.dev.Backend(), link.Attrs().MTU)})
	}
	stats, err := g.dev.Stats()
	if err != nil {
		r.add(Check{Name: "handshakes", Detail: err.Error(), Action: "check the interface"})
		return
	}
	var recent []string
	for _, p := range stats {
		if time.Since(p.LastHandshakeTime) < recentHandshake {
			recent = append(recent, g.peerLabel(p.AllowedIPs))
		}
	}
	detail := fmt.Sprintf("%d of %d peers handshaken in the last %s", len(recent), len(stats), recentHandshake)
	if len(recent) > 0 {
		detail += ": " + strings.Join(recent, ", ")
	}
	r.add(Check{Name: "handshakes", OK: true, Detail: detail})
}

func (g *Gateway) peerLabel(ips []net.IPNet) string {
	for _, n := range ips {
		if a, ok := netipFromIP(n.IP); ok {
			if name := g.peerName(a); name != "" {
				return name
			}
		}
	}
	if len(ips) > 0 {
		return ips[0].String()
	}
	return "?"
}

// defaultRouteLinks returns the interfaces of the default routes (v4 and v6).
func defaultRouteLinks() map[int]string {
	out := map[int]string{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
		if err != nil {
			continue
		}
		for _, rt := range routes {
			if rt.Dst == nil || rt.Dst.IP.IsUnspecified() {
				if l, err := netlink.LinkByIndex(rt.LinkIndex); err == nil {
					out[rt.LinkIndex] = l.Attrs().Name
				}
			}
		}
	}
	return out
}

func (g *Gateway) doctorUpstreams(ctx context.Context, r *Report, cfg *Config) {
	egress := defaultRouteLinks()
	roots, err := loadRoots(cfg.DNS.TLSCAFile)
	if err != nil {
		r.add(Check{Name: "dns.tls_ca_file", Detail: err.Error(), Action: "fix the CA file"})
	}
	groups := append([]dnsproxy.Zone{}, cfg.DNS.Zones...)
	groups = append(groups, dnsproxy.Zone{Name: "", Upstreams: cfg.DNS.Default.Upstreams})
	for _, z := range groups {
		group := z.Name
		if group == "" {
			group = "default"
		}
		for _, s := range z.Upstreams {
			u, err := dnsproxy.ParseUpstream(s)
			if err != nil {
				r.add(Check{Name: "upstream " + s, Detail: err.Error(), Action: "fix the configuration"})
				continue
			}
			g.doctorRoute(r, group, z.Name != "", u, egress)
			doctorQuery(ctx, r, group, z.Name, u, roots)
		}
	}
}

func (g *Gateway) doctorRoute(r *Report, group string, internal bool, u dnsproxy.Upstream, egress map[int]string) {
	name := fmt.Sprintf("route %s (%s)", u.Addr.Addr(), group)
	routes, err := netlink.RouteGet(net.IP(u.Addr.Addr().AsSlice()))
	if err != nil || len(routes) == 0 {
		r.add(Check{Name: name, Detail: fmt.Sprintf("no route: %v", err), Action: "add a route to this resolver"})
		return
	}
	rt := routes[0]
	ifname := strconv.Itoa(rt.LinkIndex)
	if l, err := netlink.LinkByIndex(rt.LinkIndex); err == nil {
		ifname = l.Attrs().Name
	}
	via := ""
	if rt.Gw != nil {
		via = " via " + rt.Gw.String()
	}
	detail := fmt.Sprintf("out of %s%s", ifname, via)
	if _, isEgress := egress[rt.LinkIndex]; internal && isEgress && !routeIsSpecific(u.Addr.Addr()) {
		r.add(Check{Name: name, Detail: detail + ", the internet-facing interface (default route)",
			Action: "an internal zone's resolver must not be reached over the internet: add a route to it through the internal network"})
		return
	}
	r.add(Check{Name: name, OK: true, Detail: detail})
}

// routeIsSpecific reports whether a non-default route covers a.
func routeIsSpecific(a netip.Addr) bool {
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	routes, err := netlink.RouteList(nil, fam)
	if err != nil {
		return false
	}
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		if ones == 0 {
			continue
		}
		if p, ok := netip.AddrFromSlice(rt.Dst.IP); ok && netip.PrefixFrom(p.Unmap(), ones).Contains(a) {
			return true
		}
	}
	return false
}

func doctorQuery(ctx context.Context, r *Report, group, zone string, u dnsproxy.Upstream, roots *x509.CertPool) {
	name := fmt.Sprintf("query %s (%s)", u.Addr, group)
	q := new(dns.Msg)
	qname := dns.Fqdn(zone)
	q.SetQuestion(qname, dns.TypeSOA)
	c := &dns.Client{Timeout: doctorQueryTimeout}
	switch u.Proto {
	case "tcp":
		c.Net = "tcp"
	case "tls":
		c.Net = "tcp-tls"
		c.TLSConfig = &tls.Config{ServerName: u.ServerName, MinVersion: tls.VersionTLS12, RootCAs: roots}
	}
	qctx, cancel := context.WithTimeout(ctx, doctorQueryTimeout)
	defer cancel()
	resp, rtt, err := c.ExchangeContext(qctx, q, u.Addr.String())
	if err != nil {
		r.add(Check{Name: name, Detail: fmt.Sprintf("SOA %s: %v", qname, err), Action: "the resolver does not answer: check it is running and reachable from the gateway"})
		return
	}
	rc := dns.RcodeToString[resp.Rcode]
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		r.add(Check{Name: name, Detail: fmt.Sprintf("SOA %s: %s in %s", qname, rc, rtt.Round(time.Microsecond)), Action: "the resolver answers but fails: check its logs"})
		return
	}
	r.add(Check{Name: name, OK: true, Detail: fmt.Sprintf("SOA %s: %s in %s", qname, rc, rtt.Round(time.Microsecond))})
}

func (g *Gateway) doctorFirewall(r *Report) {
	counters, err := g.fw.Counters()
	if err != nil {
		r.add(Check{Name: "firewall", Detail: err.Error(), Action: "the table is missing: sluice re-applies it within a second; if this persists another tool keeps removing it"})
		return
	}
	var parts []string
	for reason, c := range counters {
		parts = append(parts, fmt.Sprintf("%s=%d", reason, c.Packets))
	}
	slices.Sort(parts)
	r.add(Check{Name: "firewall", OK: true, Detail: "table " + g.Config().FirewallTable + " present: " + strings.Join(parts, " ")})
}

// canaries are names the proxy must answer NXDOMAIN for, by default.
var canaries = []string{"use-application-dns.net.", "mask.icloud.com."}

func (g *Gateway) doctorProxy(ctx context.Context, r *Report, cfg *Config) {
	for _, a := range cfg.Resolvers() {
		addr := netip.AddrPortFrom(a, dnsproxy.DefaultPort).String()
		c := &dns.Client{Timeout: doctorQueryTimeout}
		for _, name := range canaries {
			q := new(dns.Msg)
			q.SetQuestion(name, dns.TypeA)
			resp, rtt, err := c.ExchangeContext(ctx, q, addr)
			check := Check{Name: fmt.Sprintf("proxy %s %s", addr, strings.TrimSuffix(name, "."))}
			switch {
			case err != nil:
				check.Detail = err.Error()
				check.Action = "the proxy does not answer on this address: check `sluice status` and the logs"
			case !cfg.DNS.Policy.Canaries:
				check.OK = true
				check.Detail = fmt.Sprintf("answered %s in %s (canaries disabled by dns.policy.canaries)", dns.RcodeToString[resp.Rcode], rtt.Round(time.Microsecond))
			case resp.Rcode != dns.RcodeNameError:
				check.Detail = "answered " + dns.RcodeToString[resp.Rcode] + ", not NXDOMAIN"
				check.Action = "clients will enable their own DoH/relay: keep dns.policy.canaries on"
			default:
				check.OK = true
				check.Detail = fmt.Sprintf("NXDOMAIN (blocked) in %s", rtt.Round(time.Microsecond))
			}
			r.add(check)
		}
	}
}

func (g *Gateway) doctorPeer(r *Report, id string) {
	user, device, err := peers.ParseID(id)
	if err != nil {
		r.add(Check{Name: "peer " + id, Detail: err.Error(), Action: "name the peer as user or user/device"})
		return
	}
	p, err := g.store.Get(user, device)
	if err != nil {
		r.add(Check{Name: "peer " + id, Detail: err.Error(), Action: "see `sluice peer list`"})
		return
	}
	stats, err := g.dev.Stats()
	if err != nil {
		r.add(Check{Name: "peer " + id, Detail: err.Error()})
		return
	}
	var hs time.Time
	for _, s := range stats {
		if s.PublicKey == p.PublicKey {
			hs = s.LastHandshakeTime
		}
	}
	name := "peer " + p.ID()
	if hs.IsZero() || time.Since(hs) > recentHandshake {
		r.add(Check{Name: name + " handshake", Detail: "no recent handshake (last: " + humanTime(hs) + ")",
			Action: "the device is not connected: check its endpoint, its clock and that it uses the config from `sluice peer config " + p.ID() + "`"})
		return
	}
	r.add(Check{Name: name + " handshake", OK: true, Detail: "last handshake " + humanTime(hs)})
	g.doctorPeerTraffic(r, p)
}

func humanTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

// loadRoots reads a PEM CA bundle; "" means the system roots (nil).
func loadRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// doctorPeerTraffic reports what the firewall saw of a peer's DNS since the
// table was last applied: queries that reached the proxy, queries redirected
// to it, and everything rejected. A peer with a live session and no DNS at
// all is the classic leak: its device resolves somewhere else.
func (g *Gateway) doctorPeerTraffic(r *Report, p peers.Peer) {
	name := "peer " + p.ID() + " dns"
	var addrs []netip.Addr
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	counters, err := g.fw.PeerCounters(addrs...)
	if err != nil {
		r.add(Check{Name: name, Detail: err.Error(), Action: "check the firewall table with `sluice firewall show`"})
		return
	}
	accepted := counters[firewall.ReasonDNSAccepted].Packets
	var rejected []string
	for _, reason := range firewall.PeerReasons() {
		n := counters[reason].Packets
		if reason == firewall.ReasonDNSAccepted || reason == firewall.ReasonDNSRedirected || n == 0 {
			continue
		}
		rejected = append(rejected, fmt.Sprintf("%s %d", reason, n))
	}
	detail := fmt.Sprintf("%d packets to the proxy, %d redirected flows", accepted, counters[firewall.ReasonDNSRedirected].Packets)
	if len(rejected) > 0 {
		detail += ", rejected: " + strings.Join(rejected, ", ")
	}
	detail += " (since the firewall was last applied, " + humanTime(g.fw.AppliedAt()) + ")"
	c := Check{Name: name, Detail: detail, OK: true}
	switch {
	case accepted == 0:
		c.OK = false
		c.Action = "handshakes but no DNS from this peer: its device uses another resolver. Check that it imported the config from `sluice peer config " + p.ID() + "` (DNS = line), and that the OS or browser has no DoH setting of its own; watch it live with `sluice peer trace " + p.ID() + "`"
	case len(rejected) > 0:
		c.Action = "the device also tries other resolvers (blocked): look for a hard-coded resolver or DoH in its apps; `sluice peer trace " + p.ID() + "` shows what it does resolve"
	}
	r.add(c)
}
