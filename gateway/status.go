package gateway

import (
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
)

// Status is what `sluice status` shows: the interface and its peers (like
// `wg show`, with user and device names), DNS totals, cache and upstream
// health, and the firewall counters.
type Status struct {
	Interface InterfaceStatus             `json:"interface"`
	Peers     []PeerStatus                `json:"peers"`
	DNS       dnsproxy.Stats              `json:"dns"`
	Firewall  map[string]firewall.Counter `json:"firewall"`
	Egress    EgressStatus                `json:"egress"`
	Errors    []string                    `json:"errors,omitempty"`
	Uptime    string                      `json:"uptime"`
	// NotReady lists why /readyz fails (no healthy upstream in a group,
	// firewall table missing); empty when ready.
	NotReady []string `json:"not_ready,omitempty"`
	// Fleet is the shared peer registry's state; absent without fleet.
	Fleet *FleetHealth `json:"fleet,omitempty"`
	// Degraded lists what works but not fully (a fleet gateway serving
	// its last known peers while etcd is unreachable); /readyz stays 200.
	Degraded []string `json:"degraded,omitempty"`
}

// InterfaceStatus describes the WireGuard interface.
type InterfaceStatus struct {
	Name       string   `json:"name"`
	Backend    string   `json:"backend"`
	PublicKey  string   `json:"public_key"`
	ListenPort int      `json:"listen_port"`
	Addresses  []string `json:"addresses"`
	Resolvers  []string `json:"resolvers"`
	Mode       string   `json:"mode"`
}

// PeerStatus is one device as the interface sees it.
type PeerStatus struct {
	ID              string    `json:"id"` // user/device, "" for a peer not in the store
	PublicKey       string    `json:"public_key"`
	Addresses       []string  `json:"addresses"`
	Endpoint        string    `json:"endpoint,omitempty"`
	LatestHandshake time.Time `json:"latest_handshake,omitzero"`
	RxBytes         int64     `json:"rx_bytes"`
	TxBytes         int64     `json:"tx_bytes"`
}

// Status collects the live state of every component.
func (g *Gateway) Status() (*Status, error) {
	var s *Status
	err := g.use(func() error {
		s = g.statusLocked()
		return nil
	})
	return s, err
}

// statusLocked is Status with g.life held.
func (g *Gateway) statusLocked() *Status {
	cfg := g.Config()
	s := &Status{
		Interface: InterfaceStatus{
			Name:       g.dev.Name(),
			Backend:    string(g.dev.Backend()),
			PublicKey:  g.dev.PublicKey().String(),
			ListenPort: cfg.Interface.ListenPort,
			Mode:       string(cfg.Mode),
		},
		DNS:    g.proxy.Stats(),
		Uptime: time.Since(g.started).Round(time.Second).String(),
	}
	for _, a := range cfg.Interface.Addresses {
		s.Interface.Addresses = append(s.Interface.Addresses, a.String())
	}
	for _, a := range cfg.Resolvers() {
		s.Interface.Resolvers = append(s.Interface.Resolvers, a.String())
	}
	devPeers, err := g.dev.Stats()
	if err != nil {
		s.Errors = append(s.Errors, "read interface peers: "+err.Error())
	}
	for _, p := range devPeers {
		ps := PeerStatus{
			PublicKey:       p.PublicKey.String(),
			LatestHandshake: p.LastHandshakeTime,
			RxBytes:         p.ReceiveBytes,
			TxBytes:         p.TransmitBytes,
		}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		for _, a := range p.AllowedIPs {
			ps.Addresses = append(ps.Addresses, a.String())
			if ip, ok := netipFromIP(a.IP); ok && ps.ID == "" {
				ps.ID = g.peerName(ip)
			}
		}
		s.Peers = append(s.Peers, ps)
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].ID < s.Peers[j].ID })
	counters, err := g.fw.Counters()
	if err != nil {
		s.Errors = append(s.Errors, "read firewall counters: "+err.Error())
	}
	s.Firewall = make(map[string]firewall.Counter, len(counters))
	for r, c := range counters {
		s.Firewall[string(r)] = c
	}
	s.NotReady = g.readinessLocked(s.DNS.Upstreams)
	s.Fleet = g.fleetHealth()
	if why := g.fleetDegraded(); why != "" {
		s.Degraded = append(s.Degraded, why)
	}
	s.Egress = g.egressStatus(cfg, counters)
	return s
}

func joinLines(s []string) string { return strings.Join(s, "\n") }

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
