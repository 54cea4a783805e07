package gateway

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
)

// The gateway drives its components through the small interfaces below,
// defined here where they are used. Production wires the real packages
// (hostComponents); tests wire fakes, so the lifecycle (ready, reload,
// stop, status, doctor) runs without root.

// device is the WireGuard interface; *wgdev.Device implements it. Its
// methods are safe for concurrent use; after Close they fail.
type device interface {
	Name() string
	Backend() wgdev.Backend
	PublicKey() wgtypes.Key
	// SyncPeers makes the device's peer set equal to peers.
	SyncPeers(peers []wgdev.PeerConfig) (added, removed, updated int, err error)
	// Stats returns the peers as the device sees them (handshakes, traffic).
	Stats() ([]wgtypes.Peer, error)
	// Close removes the interface.
	Close() error
}

// resolver is the in-tunnel DNS proxy; *dnsproxy.Proxy implements it.
// Reload may be called at any time between Start and Close.
type resolver interface {
	Start(ctx context.Context) error
	Reload(cfg dnsproxy.Config) error
	Stats() dnsproxy.Stats
	// Tap streams the queries of addrs until stop is called.
	Tap(addrs []netip.Addr, buf int) (records <-chan dnsproxy.QueryRecord, stop func())
	// CheckUpstreams checks every upstream now and records the outcome in
	// the health state Stats reports.
	CheckUpstreams(ctx context.Context) []dnsproxy.UpstreamCheck
	// Probe asks one of the proxy's own listeners, uncounted.
	Probe(ctx context.Context, server netip.AddrPort, q *dns.Msg) (*dns.Msg, time.Duration, error)
	// TLSCertificate is the DoT/DoH server certificate in use, nil when
	// encrypted DNS is off.
	TLSCertificate() *x509.Certificate
	// Close stops serving and waits for every goroutine.
	Close() error
}

// table is the firewall table; *firewall.Firewall implements it. Run
// watches the table and re-applies it until ctx ends or Close.
type table interface {
	Apply(spec firewall.Spec) error
	Run(ctx context.Context) error
	// Present returns nil when the applied table is in the kernel now.
	Present() error
	Counters() (map[firewall.Reason]firewall.Counter, error)
	PeerCounters(addrs ...netip.Addr) (map[firewall.Reason]firewall.Counter, error)
	Render() (string, error)
	AppliedAt() time.Time
	// Close stops Run and removes the table (unless kept on stop).
	Close() error

	// The resolution-gated egress: the proxy's answers are learned into
	// the table (dnsproxy.AnswerObserver), refused flows are reported.
	dnsproxy.AnswerObserver
	LearnedPairs() int
	EgressEvents(ctx context.Context, fn func(firewall.EgressEvent)) error
	// SetGroupPeers changes the members of the restricted groups in one
	// batch (groups.go).
	SetGroupPeers(rules []firewall.GroupRule) error
}

// host is what the gateway reads and changes on the host besides its own
// components: the forwarding switches, and links and routes for the doctor.
type host interface {
	// enableForwarding turns IPv4 and IPv6 forwarding on and lists the
	// switches it changed.
	enableForwarding() (changed []string, err error)
	// forwardingOff lists the forwarding switches that are off.
	forwardingOff() []string
	// link describes the named interface.
	link(name string) (linkState, error)
	// route says how the host reaches a.
	route(a netip.Addr) (routeInfo, error)
}

// linkState is what the doctor wants to know of an interface.
type linkState struct {
	Up  bool
	MTU int
}

// routeInfo is how the host reaches one address.
type routeInfo struct {
	Interface string // outgoing interface
	Via       string // gateway address, "" when on-link
	// Internet is true when the route is a default route's interface and
	// no more specific route covers the address: it leaves by the
	// internet-facing interface.
	Internet bool
}

// components builds the gateway's collaborators.
type components struct {
	firewall func(firewall.Options) (table, error)
	device   func(context.Context, wgdev.Config, wgdev.Options) (device, error)
	resolver func(dnsproxy.Config, dnsproxy.Options) (resolver, error)
	host     host
}

// hostComponents are the real packages on the real host.
func hostComponents() components {
	return components{
		firewall: func(o firewall.Options) (table, error) {
			f, err := firewall.New(o)
			if err != nil {
				return nil, err
			}
			return f, nil
		},
		device: func(ctx context.Context, c wgdev.Config, o wgdev.Options) (device, error) {
			d, err := wgdev.Open(ctx, c, o)
			if err != nil {
				return nil, err
			}
			return d, nil
		},
		resolver: func(c dnsproxy.Config, o dnsproxy.Options) (resolver, error) {
			p, err := dnsproxy.New(c, o)
			if err != nil {
				return nil, err
			}
			return p, nil
		},
		host: netlinkHost{},
	}
}

// netlinkHost is the host as the kernel reports it (netlink and /proc).
type netlinkHost struct{}

func (netlinkHost) enableForwarding() ([]string, error) { return enableForwarding() }

func (netlinkHost) forwardingOff() []string { return forwardingOff() }

func (netlinkHost) link(name string) (linkState, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return linkState{}, fmt.Errorf("find interface %s: %w", name, err)
	}
	return linkState{Up: l.Attrs().Flags&net.FlagUp != 0, MTU: l.Attrs().MTU}, nil
}

func (netlinkHost) route(a netip.Addr) (routeInfo, error) {
	routes, err := netlink.RouteGet(net.IP(a.AsSlice()))
	if err != nil {
		return routeInfo{}, err
	}
	if len(routes) == 0 {
		return routeInfo{}, fmt.Errorf("no route to %s", a)
	}
	rt := routes[0]
	ri := routeInfo{Interface: strconv.Itoa(rt.LinkIndex)}
	if l, err := netlink.LinkByIndex(rt.LinkIndex); err == nil {
		ri.Interface = l.Attrs().Name
	}
	if rt.Gw != nil {
		ri.Via = rt.Gw.String()
	}
	_, isDefault := defaultRouteLinks()[rt.LinkIndex]
	ri.Internet = isDefault && !routeIsSpecific(a)
	return ri, nil
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
