// Package gateway owns sluice's lifecycle: configuration file → control
// socket → firewall table → WireGuard device (kernel or embedded
// wireguard-go, package wgdev) with its addresses and peers → DNS proxy →
// forwarding, then live peer changes, reload, the admin HTTP listener, the
// CLI's control socket, and a clean stop in reverse order. The table comes
// before the device and goes after it, so no peer packet passes without it.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
	"github.com/sluice-vpn/sluice/peers"
)

// peerPollInterval bounds how long a peer change made without the control
// socket (another process editing the store) takes to reach the device.
const peerPollInterval = 500 * time.Millisecond

// Options are the gateway's collaborators.
type Options struct {
	Logger *slog.Logger
	// Ready is called once the interface, proxy and firewall are up.
	Ready func()
	// Watchdog, if set, is called periodically while the gateway is healthy.
	Watchdog func()
}

// Gateway is one running sluice instance.
type Gateway struct {
	log      *slog.Logger
	opts     Options
	reg      *prometheus.Registry
	started  time.Time
	store    *peers.Store
	dev      *wgdev.Device
	proxy    *dnsproxy.Proxy
	fw       *firewall.Firewall
	metrics  *gatewayMetrics
	syncMu   sync.Mutex // serializes peer syncs
	lastSync string     // store version last applied; protected by syncMu

	peerIdx peerIndex // tunnel address → peer, for the proxy, status and doctor

	mu    sync.RWMutex // protects cfg, ready
	cfg   *Config
	ready bool
}

// New prepares a gateway for cfg; Run brings it up.
func New(cfg *Config, opts Options) *Gateway {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Gateway{log: opts.Logger, opts: opts, cfg: cfg, reg: reg, metrics: newGatewayMetrics(reg)}
}

// Config returns the configuration in force.
func (g *Gateway) Config() *Config {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.cfg
}

// Run brings everything up, serves until ctx is done, then tears everything
// down in reverse order. A failure part-way undoes what was done.
func (g *Gateway) Run(ctx context.Context) (err error) {
	cfg := g.Config()
	g.started = time.Now()
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()

	key, err := LoadOrCreateKey(cfg.Interface.PrivateKeyFile)
	if err != nil {
		return err
	}
	if g.store, err = peers.Open(cfg.Peers.StateDir); err != nil {
		return fmt.Errorf("open peer store: %w", err)
	}
	// The control socket is claimed first: a second `sluice up` for the same
	// interface stops here without touching the running one.
	ctl, err := listenControl(cfg.ControlSocket())
	if err != nil {
		return err
	}
	undo = append(undo, func() { ctl.Close() })

	// The table goes in before the interface exists and comes out after it
	// is gone, so no peer packet ever passes without it (it matches the
	// interface by name). Forwarding is only turned on once it is in place.
	g.fw, err = firewall.New(firewall.Options{Logger: g.log.With("component", "firewall"), Registerer: g.reg})
	if err != nil {
		return fmt.Errorf("open firewall: %w", err)
	}
	if err := g.fw.Apply(g.firewallSpec(cfg)); err != nil {
		g.fw.Close()
		return fmt.Errorf("apply firewall: %w", err)
	}
	undo = append(undo, func() {
		if err := g.fw.Close(); err != nil {
			g.log.Error("close firewall", "err", err)
		}
	})

	g.dev, err = wgdev.Open(ctx, wgdev.Config{
		Name:       cfg.Interface.Name,
		Backend:    cfg.Interface.Backend,
		PrivateKey: key,
		ListenPort: cfg.Interface.ListenPort,
		MTU:        cfg.Interface.MTU,
		Addresses:  cfg.Interface.Addresses,
		ExtraAddrs: cfg.Resolvers(),
	}, wgdev.Options{Logger: g.log.With("component", "wireguard")})
	if err != nil {
		return fmt.Errorf("bring up interface %s: %w", cfg.Interface.Name, err)
	}
	undo = append(undo, func() {
		if err := g.dev.Close(); err != nil {
			g.log.Error("remove interface", "interface", cfg.Interface.Name, "err", err)
		}
	})
	g.log.Info("interface up", "interface", g.dev.Name(), "backend", g.dev.Backend(), "public_key", g.dev.PublicKey().String(), "listen_port", cfg.Interface.ListenPort)
	if err := g.syncPeers(); err != nil {
		return err
	}

	if _, err := g.ensureDNSCert(cfg); err != nil {
		return err
	}
	g.proxy, err = dnsproxy.New(cfg.DNS, dnsproxy.Options{
		Logger:     g.log.With("component", "dns"),
		Registerer: g.reg,
		Identities: &g.peerIdx,
	})
	if err != nil {
		return fmt.Errorf("configure dns proxy: %w", err)
	}
	if err := g.proxy.Start(ctx); err != nil {
		return fmt.Errorf("start dns proxy: %w", err)
	}
	undo = append(undo, func() { g.proxy.Close() })

	if cfg.forwards() {
		changed, err := enableForwarding()
		if err != nil {
			return fmt.Errorf("peers route through the gateway: %w", err)
		}
		if len(changed) > 0 {
			g.log.Info("enabled ip forwarding: peers route through the gateway", "sysctls", changed)
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	undo = append(undo, func() { cancel(); wg.Wait() })
	start := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(runCtx); err != nil && !errors.Is(err, context.Canceled) {
				g.log.Error(name+" stopped", "err", err)
			}
		}()
	}
	start("firewall watch", g.fw.Run)
	start("control socket", func(ctx context.Context) error { return g.serveControl(ctx, ctl) })
	if cfg.Admin.Listen != "" {
		admin, err := g.listenAdmin(cfg.Admin.Listen)
		if err != nil {
			return err
		}
		start("admin listener", func(ctx context.Context) error { return g.serveAdmin(ctx, admin) })
	}
	start("peer watch", g.watchPeers)
	if cfg.OwnDNSCA {
		start("dns certificate renewal", g.renewDNSCert)
	}

	g.mu.Lock()
	g.ready = true
	g.mu.Unlock()
	g.log.Info("ready", "interface", cfg.Interface.Name, "resolvers", cfg.Resolvers(), "mode", cfg.Mode, "admin", cfg.Admin.Listen, "control", cfg.ControlSocket())
	if g.opts.Ready != nil {
		g.opts.Ready()
	}
	if g.opts.Watchdog != nil {
		start("watchdog", g.watchdog)
	}
	<-ctx.Done()
	g.mu.Lock()
	g.ready = false
	g.mu.Unlock()
	g.log.Info("stopping", "interface", cfg.Interface.Name)
	return nil
}

func (g *Gateway) watchdog(ctx context.Context) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if g.healthy() == nil {
				g.opts.Watchdog()
			}
		}
	}
}

// healthy reports why the gateway is not ready to serve, or nil.
func (g *Gateway) healthy() error {
	g.mu.RLock()
	ready := g.ready
	g.mu.RUnlock()
	if !ready {
		return errors.New("not ready")
	}
	return nil
}

// firewallSpec is the desired firewall state for cfg.
func (g *Gateway) firewallSpec(cfg *Config) firewall.Spec {
	doh := firewall.BuiltinDoH()
	if cfg.Enforce.DoHIPsFile != "" {
		extra, err := firewall.LoadDoHFile(cfg.Enforce.DoHIPsFile)
		if err != nil {
			// Validated at load; a file changed since then keeps the built-in list.
			g.log.Error("read doh_ips_file", "err", err)
		}
		doh = append(doh, extra...)
	}
	return firewall.Spec{
		Table:          cfg.FirewallTable,
		Interface:      cfg.Interface.Name,
		Resolvers:      cfg.Resolvers(),
		TunnelPrefixes: cfg.TunnelPrefixes(),
		FullTunnel:     cfg.FullTunnel(),
		Config:         cfg.Enforce,
		DoHSet:         firewall.NormalizePrefixes(doh, cfg.Enforce.DoHAllow),
		Encrypted:      firewallEncrypted(cfg),
	}
}

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
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := g.syncPeers(); err != nil {
				g.log.Error("sync peers", "err", err)
			}
		}
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
	if ver == g.lastSync {
		return nil
	}
	list, err := g.store.List()
	if err != nil {
		return fmt.Errorf("read peer store: %w", err)
	}
	want := make([]wgdev.PeerConfig, 0, len(list))
	idx := make(map[netip.Addr]*dnsproxy.Peer, 2*len(list))
	for _, p := range list {
		want = append(want, wgdev.PeerConfig{
			PublicKey:    p.PublicKey,
			PresharedKey: p.PresharedKey,
			AllowedIPs:   []netip.Prefix{netip.PrefixFrom(p.IPv4, 32), netip.PrefixFrom(p.IPv6, 128)},
		})
		who := &dnsproxy.Peer{Name: p.ID(), V4: p.IPv4, V6: p.IPv6}
		idx[p.IPv4] = who
		idx[p.IPv6] = who
	}
	start := time.Now()
	added, removed, updated, err := g.dev.SyncPeers(want)
	if err != nil {
		return fmt.Errorf("configure peers on %s: %w", g.dev.Name(), err)
	}
	g.peerIdx.set(idx)
	g.lastSync = ver
	g.metrics.peers.Set(float64(len(list)))
	if added+removed+updated > 0 {
		g.log.Info("peers applied", "total", len(list), "added", added, "removed", removed, "updated", updated, "took", time.Since(start).Round(time.Microsecond))
	}
	return nil
}

// LoadOrCreateKey reads a WireGuard private key file, creating it (0600, in a
// 0700 directory) with a new key if it does not exist. A file readable by
// others is refused.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("generate private key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return wgtypes.Key{}, fmt.Errorf("create key directory: %w", err)
		}
		if err := writeFileAtomic(path, []byte(key.String()+"\n"), 0o600); err != nil {
			return wgtypes.Key{}, fmt.Errorf("write private key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read private key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return wgtypes.Key{}, fmt.Errorf("private key %s is readable by others (mode %04o): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	key, err := wgtypes.ParseKey(string(trimSpace(data)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("parse private key %s: not a base64 WireGuard key (create one with `wg genkey`)", path)
	}
	return key, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// writeFileAtomic writes data to path via a synced temporary file and rename.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
