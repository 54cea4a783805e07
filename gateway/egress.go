package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/peers"
)

// learnedFileName is where the learned egress pairs persist, in the state
// directory.
const learnedFileName = "egress-learned"

// learnedFile is the learned pairs file for cfg.
func learnedFile(cfg *Config) string {
	return filepath.Join(cfg.Peers.StateDir, cfg.FirewallTable+"-"+learnedFileName)
}

// EgressStatus is the egress gate in `sluice status`.
type EgressStatus struct {
	Mode         string `json:"mode"`          // resolved | audit | open
	LearnedPairs int    `json:"learned_pairs"` // live (peer, destination) pairs
	Unresolved   uint64 `json:"unresolved"`    // new flows to unresolved destinations (refused, or allowed in audit)
	InboundDrops uint64 `json:"inbound_dropped"`
	MinTTL       string `json:"min_ttl"`
}

func (g *Gateway) egressStatus(cfg *Config, counters map[firewall.Reason]firewall.Counter) EgressStatus {
	return EgressStatus{
		Mode:         string(cfg.Enforce.EgressMode),
		LearnedPairs: g.fw.LearnedPairs(),
		Unresolved:   counters[firewall.ReasonEgressUnresolved].Packets,
		InboundDrops: counters[firewall.ReasonInboundDropped].Packets,
		MinTTL:       cfg.Enforce.EgressMinTTL.String(),
	}
}

// doctorPeerEgress reports a peer's flows to destinations no answer gave
// it: refused in resolved mode (something resolves elsewhere, or connects
// to an IP literal), allowed but counted in audit.
func (g *Gateway) doctorPeerEgress(r *Report, p peers.Peer) {
	cfg := g.Config()
	mode := cfg.Enforce.EgressMode
	if mode != firewall.EgressResolved && mode != firewall.EgressAudit {
		return
	}
	name := "peer " + p.ID() + " egress"
	var addrs []netip.Addr
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	counters, err := g.fw.PeerCounters(addrs...)
	if err != nil {
		r.add(Check{Name: name, Detail: err.Error()})
		return
	}
	n := counters[firewall.ReasonEgressUnresolved].Packets
	verb := "refused"
	if mode == firewall.EgressAudit {
		verb = "allowed by audit, refused by resolved"
	}
	c := Check{Name: name, OK: n == 0, Detail: fmt.Sprintf("%d new flows to addresses the gateway did not resolve for it (%s; egress: %s)", n, verb, mode)}
	if n > 0 {
		c.Action = "an app connects to an IP literal or resolves elsewhere (a hard-coded resolver, DoH on an unlisted address): `sluice peer trace " + p.ID() + "` shows each one with destination and port; add addresses it must reach to enforce.egress_allow"
	}
	r.add(c)
}

// EgressTrace is one refused (or audited) flow in `sluice peer trace`.
type EgressTrace struct {
	Dst     string `json:"dst"`
	Proto   string `json:"proto"`
	Port    uint16 `json:"port,omitempty"`
	Refused bool   `json:"refused"`
}

// egressTaps fans the firewall's egress events out to trace streams.
type egressTaps struct {
	mu   sync.Mutex // protects subs
	subs []*egressSub
}

type egressSub struct {
	addrs []netip.Addr
	ch    chan firewall.EgressEvent
}

// tap returns the egress events of addrs until stop is called.
func (t *egressTaps) tap(addrs []netip.Addr, buf int) (<-chan firewall.EgressEvent, func()) {
	s := &egressSub{addrs: addrs, ch: make(chan firewall.EgressEvent, buf)}
	t.mu.Lock()
	t.subs = append(t.subs, s)
	t.mu.Unlock()
	return s.ch, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.subs = slices.DeleteFunc(t.subs, func(x *egressSub) bool { return x == s })
	}
}

func (t *egressTaps) publish(ev firewall.EgressEvent) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.subs {
		if slices.Contains(s.addrs, ev.Src) {
			select {
			case s.ch <- ev:
			default: // a slow reader loses events, never the gateway
			}
		}
	}
}

// watchEgress logs every refused (or audited) flow the table reports and
// hands it to trace streams, until ctx ends. It does nothing while egress
// is open. A failed reader is retried.
func (g *Gateway) watchEgress(ctx context.Context) error {
	for {
		cfg := g.Config()
		mode := cfg.Enforce.EgressMode
		if mode == firewall.EgressResolved || mode == firewall.EgressAudit {
			err := g.fw.EgressEvents(ctx, func(ev firewall.EgressEvent) {
				msg := "egress refused: not resolved by the gateway"
				if !ev.Refused {
					msg = "egress audit: not resolved by the gateway (allowed)"
				}
				g.log.Info(msg, "peer", g.peerName(ev.Src), "src", ev.Src, "dst", ev.Dst, "proto", ev.Proto, "port", ev.Port)
				g.egress.publish(ev)
			})
			if err != nil {
				g.log.Warn("egress log reader", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second): // mode changed by a reload, or the reader failed
		}
	}
}
