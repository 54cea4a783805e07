package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
	"github.com/sluice-vpn/sluice/peers"
)

// peerPollInterval bounds how long a peer change made without the control
// socket (another process editing the store) takes to reach the device.
const peerPollInterval = 500 * time.Millisecond

// peerName maps a tunnel address to "user/device", or "".
func (g *Gateway) peerName(a netip.Addr) string {
	if p, ok := g.peerIdx.Lookup(a); ok {
		return p.Name
	}
	return ""
}

// watchPeers applies store changes made by other processes.
func (g *Gateway) watchPeers(ctx context.Context) error {
	t := time.NewTicker(peerPollInterval)
	defer t.Stop()
	var errs errorLatch // a damaged store is logged once, and on change
	var changed <-chan struct{}
	if n, ok := g.store.Backend().(peers.Notifier); ok {
		changed = n.Changed() // a fleet registry's watch: apply at once
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-changed:
		}
		errs.report(g.log, "sync peers", g.syncPeers())
	}
}

// syncPeers brings the device's peers in line with the store, if it changed.
func (g *Gateway) syncPeers() error {
	g.syncMu.Lock()
	defer g.syncMu.Unlock()
	ver, err := g.store.Version()
	if err != nil {
		return fmt.Errorf("read peer store: %w", err)
	}
	now := time.Now()
	if ver == g.lastSync && (g.nextSync.IsZero() || now.Before(g.nextSync)) {
		return nil
	}
	// Disabled and expired peers stay in the store but not on the device.
	list, next, err := g.store.Active(now)
	if err != nil {
		return fmt.Errorf("read peer store: %w", err)
	}
	cfg := g.Config()
	want := make([]wgdev.PeerConfig, 0, len(list))
	idx := make(map[netip.Addr]*dnsproxy.Peer, 2*len(list))
	for _, p := range list {
		want = append(want, wgdev.PeerConfig{
			PublicKey:    p.PublicKey,
			PresharedKey: p.PresharedKey,
			AllowedIPs:   []netip.Prefix{netip.PrefixFrom(p.IPv4, 32), netip.PrefixFrom(p.IPv6, 128)},
		})
		who := &dnsproxy.Peer{Name: p.ID(), Group: cfg.GroupOf(p), V4: p.IPv4, V6: p.IPv6}
		idx[p.IPv4] = who
		idx[p.IPv6] = who
	}
	if err := g.groupsBeforeSync(cfg, list, idx); err != nil {
		return fmt.Errorf("apply group members to the firewall: %w", err)
	}
	start := time.Now()
	added, removed, updated, err := g.dev.SyncPeers(want)
	if err != nil {
		return fmt.Errorf("configure peers on %s: %w", g.dev.Name(), err)
	}
	g.peerIdx.set(idx)
	if err := g.applyGroupPeers(cfg, list); err != nil {
		return fmt.Errorf("apply group members to the firewall: %w", err)
	}
	g.lastSync, g.nextSync = ver, next
	g.metrics.peers.Set(float64(len(list)))
	if added+removed+updated > 0 {
		g.log.Info("peers applied", "total", len(list), "added", added, "removed", removed, "updated", updated, "took", time.Since(start).Round(time.Microsecond))
	}
	return nil
}
