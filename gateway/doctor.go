package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

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
//
// Its upstream checks are the proxy's own health checks (CheckUpstreams),
// so `sluice status` shows the same health afterwards; its queries to the
// proxy are probes, not counted as client traffic.
func (g *Gateway) Doctor(ctx context.Context, peer string) (*Report, error) {
	var r *Report
	err := g.use(func() error {
		r = g.doctorLocked(ctx, peer)
		return nil
	})
	return r, err
}

func (g *Gateway) doctorLocked(ctx context.Context, peer string) *Report {
	cfg := g.Config()
	r := &Report{}
	g.doctorInterface(r, cfg)
	g.doctorUpstreams(ctx, r, cfg)
	g.doctorFirewall(r, cfg)
	if cfg.forwards() {
		if off := g.parts.host.forwardingOff(); len(off) > 0 {
			r.add(Check{Name: "forwarding", Detail: "off: " + strings.Join(off, ", "), Action: "peers cannot reach peers.routes or the internet: something turned forwarding off; restart sluice or set the sysctls to 1"})
		} else {
			r.add(Check{Name: "forwarding", OK: true, Detail: "IPv4 and IPv6 forwarding on"})
		}
	}
	g.doctorProxy(ctx, r, cfg)
	g.doctorEncrypted(ctx, r, cfg)
	g.doctorFleet(r)
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
	link, err := g.parts.host.link(cfg.Interface.Name)
	switch {
	case err != nil:
		r.add(Check{Name: "interface", Detail: err.Error(), Action: "restart sluice; check `journalctl -u sluice` for why the interface went away"})
	case !link.Up:
		r.add(Check{Name: "interface", Detail: cfg.Interface.Name + " is down", Action: "restart sluice (something set the link down)"})
	default:
		r.add(Check{Name: "interface", OK: true, Detail: fmt.Sprintf("%s up (%s backend, mtu %d)", cfg.Interface.Name, g.dev.Backend(), link.MTU)})
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

// doctorUpstreams reports the route to every upstream and the outcome of a
// health check run now by the proxy itself: the same check, and the same
// health state, that `sluice status` and /readyz show.
func (g *Gateway) doctorUpstreams(ctx context.Context, r *Report, cfg *Config) {
	internal := map[string]bool{} // group label → an internal zone's group
	for _, z := range cfg.DNS.Zones {
		internal[dns.Fqdn(strings.ToLower(z.Name))] = true
	}
	qctx, cancel := context.WithTimeout(ctx, doctorQueryTimeout)
	defer cancel()
	checks := g.proxy.CheckUpstreams(qctx)
	for _, c := range checks {
		if ap, err := netip.ParseAddrPort(upstreamHostPort(c.Addr)); err == nil {
			g.doctorRoute(r, c.Group, internal[dns.Fqdn(c.Group)] && c.Group != "default", ap.Addr())
		}
		name := fmt.Sprintf("query %s (%s)", c.Addr, c.Group)
		health := "healthy"
		if !c.Healthy {
			health = "EJECTED: queries go to the group's other upstreams"
		}
		if c.Failures > 0 {
			health += fmt.Sprintf(", %d failures in a row", c.Failures)
		}
		switch {
		case c.Error != "":
			r.add(Check{Name: name, Detail: fmt.Sprintf("%s: %s (%s)", c.Query, c.Error, health),
				Action: "the resolver does not answer: check it is running and reachable from the gateway"})
		default:
			r.add(Check{Name: name, OK: true, Detail: fmt.Sprintf("%s: %s in %s (%s)", c.Query, c.Rcode, c.RTT.Round(time.Microsecond), health)})
		}
	}
}

// upstreamHostPort strips an upstream label ("tls://1.2.3.4:853#name",
// "tcp://...", "1.2.3.4:53") to its address and port.
func upstreamHostPort(label string) string {
	if _, rest, ok := strings.Cut(label, "://"); ok {
		label = rest
	}
	host, _, _ := strings.Cut(label, "#")
	return host
}

func (g *Gateway) doctorRoute(r *Report, group string, internal bool, a netip.Addr) {
	name := fmt.Sprintf("route %s (%s)", a, group)
	rt, err := g.parts.host.route(a)
	if err != nil {
		r.add(Check{Name: name, Detail: fmt.Sprintf("no route: %v", err), Action: "add a route to this resolver"})
		return
	}
	detail := "out of " + rt.Interface
	if rt.Via != "" {
		detail += " via " + rt.Via
	}
	if internal && rt.Internet {
		r.add(Check{Name: name, Detail: detail + ", the internet-facing interface (default route)",
			Action: "an internal zone's resolver must not be reached over the internet: add a route to it through the internal network"})
		return
	}
	r.add(Check{Name: name, OK: true, Detail: detail})
}

func (g *Gateway) doctorFirewall(r *Report, cfg *Config) {
	action := "the table is missing: sluice re-applies it within a second; if this persists another tool keeps removing it"
	if err := g.fw.Present(); err != nil {
		r.add(Check{Name: "firewall", Detail: err.Error(), Action: action})
		return
	}
	counters, err := g.fw.Counters()
	if err != nil {
		r.add(Check{Name: "firewall", Detail: err.Error(), Action: action})
		return
	}
	var parts []string
	for reason, c := range counters {
		parts = append(parts, fmt.Sprintf("%s=%d", reason, c.Packets))
	}
	slices.Sort(parts)
	r.add(Check{Name: "firewall", OK: true, Detail: "table " + cfg.FirewallTable + " present: " + strings.Join(parts, " ")})
}

// canaries are names the proxy must answer NXDOMAIN for, by default.
var canaries = []string{"use-application-dns.net.", "mask.icloud.com."}

// doctorProxy asks the proxy on every in-tunnel address for the canaries,
// over its real sockets, as probes: they are not client traffic.
func (g *Gateway) doctorProxy(ctx context.Context, r *Report, cfg *Config) {
	for _, a := range cfg.Resolvers() {
		addr := netip.AddrPortFrom(a, dnsproxy.DefaultPort)
		for _, name := range canaries {
			q := new(dns.Msg)
			q.SetQuestion(name, dns.TypeA)
			qctx, cancel := context.WithTimeout(ctx, doctorQueryTimeout)
			resp, rtt, err := g.proxy.Probe(qctx, addr, q)
			cancel()
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
	g.doctorPeerEgress(r, p)
	g.doctorPeerGroup(r, p) // groups.go
}

func humanTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
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
		if reason == firewall.ReasonDNSAccepted || reason == firewall.ReasonDNSRedirected || reason == firewall.ReasonEgressUnresolved || n == 0 {
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
