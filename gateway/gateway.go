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
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sluice-vpn/sluice/internal/atomicfile"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
	"github.com/sluice-vpn/sluice/peers"
)

// Options are the gateway's collaborators.
type Options struct {
	Logger *slog.Logger
	// Ready is called once the interface, proxy and firewall are up, and
	// again each time a reload has finished (systemd's READY=1).
	Ready func()
	// Reloading is called when a reload starts (systemd's RELOADING=1);
	// Ready follows when it is done, whatever its result.
	Reloading func()
	// Watchdog, if set, is called periodically while the gateway runs.
	Watchdog func()
	// Version is sluice's version, in the fleet registration.
	Version string
}

// Gateway is one running sluice instance.
type Gateway struct {
	log      *slog.Logger
	opts     Options
	reg      *prometheus.Registry
	regr     prometheus.Registerer // reg, with the gateway label in a fleet
	parts    components            // builds the device, proxy and firewall; fakes in tests
	metrics  *gatewayMetrics
	syncMu   sync.Mutex // serializes peer syncs
	lastSync string     // store version last applied; protected by syncMu
	nextSync time.Time  // when the active set changes by itself (an expiry); protected by syncMu

	peerIdx peerIndex  // tunnel address → peer, for the proxy, status and doctor
	egress  egressTaps // refused egress flows, for peer trace

	// life is the lifecycle's one owner. Run's transitions and Reload hold
	// it for writing; every other use of the components below (status,
	// doctor, firewall, trace, peer sync from the control socket) holds it
	// for reading and first checks phase. So nothing touches a component
	// before Run has built it, two reloads never overlap, and a stop waits
	// for the reload or request in progress, after which no new one starts.
	life    sync.RWMutex
	phase   phase // protected by life
	started time.Time
	store   *peers.Store
	fleet   *fleetRun // the etcd registry follower; nil without fleet (fleet.go)
	dev     device
	proxy   resolver
	fw      table

	groupMu    sync.Mutex   // protects groupPeers
	groupPeers []peers.Peer // peers of the last sync, for the firewall's group rules

	mu  sync.RWMutex // protects cfg
	cfg *Config
}

// phase is where the gateway is in its life.
type phase int

const (
	phaseNew      phase = iota // New returned, Run not called yet
	phaseStarting              // Run is bringing the components up
	phaseReady                 // everything up, serving
	phaseStopping              // Run is tearing down
	phaseStopped               // Run returned
)

func (p phase) String() string {
	switch p {
	case phaseNew, phaseStarting:
		return "still starting"
	case phaseReady:
		return "ready"
	case phaseStopping:
		return "stopping"
	}
	return "stopped"
}

// ErrNotReady is returned by operations asked of a gateway that is not up
// yet (or no longer): reload, status, doctor and the other control calls.
var ErrNotReady = errors.New("not ready yet")

// notReadyLocked explains why the gateway cannot serve a request. g.life
// must be held.
func (g *Gateway) notReadyLocked() error {
	if g.phase == phaseReady {
		return nil
	}
	return fmt.Errorf("%w: sluice is %s", ErrNotReady, g.phase)
}

// use runs fn while the gateway is ready, holding the lifecycle for
// reading so that no stop or reload starts under it; otherwise it returns
// an error wrapping ErrNotReady.
func (g *Gateway) use(fn func() error) error {
	g.life.RLock()
	defer g.life.RUnlock()
	if err := g.notReadyLocked(); err != nil {
		return err
	}
	return fn()
}

func (g *Gateway) setPhase(p phase) {
	g.life.Lock()
	g.phase = p
	g.life.Unlock()
}

// New prepares a gateway for cfg; Run brings it up.
func New(cfg *Config, opts Options) *Gateway {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	var regr prometheus.Registerer = reg
	if cfg.Fleet.Enabled {
		// "Which node answered" is one grep away: every metric and log
		// line of a fleet gateway carries its name.
		regr = prometheus.WrapRegistererWith(prometheus.Labels{"gateway": cfg.Fleet.Name}, reg)
		opts.Logger = opts.Logger.With("gateway", cfg.Fleet.Name)
	}
	regr.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g := &Gateway{log: opts.Logger, opts: opts, cfg: cfg, reg: reg, regr: regr, metrics: newGatewayMetrics(regr), parts: hostComponents()}
	regr.MustRegister(newPeerCollector(g.peerStats))
	return g
}

// Config returns the configuration in force.
func (g *Gateway) Config() *Config {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.cfg
}

// Run brings everything up, serves until ctx is done, then tears everything
// down in reverse order. A failure part-way undoes what was done. Run may
// be called once.
func (g *Gateway) Run(ctx context.Context) (err error) {
	g.life.Lock()
	if g.phase != phaseNew {
		g.life.Unlock()
		return errors.New("run gateway: already run")
	}
	g.phase = phaseStarting
	g.life.Unlock()
	defer g.setPhase(phaseStopped) // after every undo below

	cfg := g.Config()
	if err := Preflight(cfg); err != nil {
		return err
	}
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
	if g.store, err = g.openPeerStore(ctx, cfg); err != nil {
		return err
	}
	undo = append(undo, func() { g.store.Close() })
	// The control socket is claimed first: a second `sluice up` for the same
	// interface stops here without touching the running one. It answers from
	// now until the very end ("not ready yet" while starting and stopping).
	// Requests carry runCtx: streams and the doctor end when the stop begins.
	ctl, err := listenControl(cfg.ControlSocket())
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctlCtx, ctlStop := context.WithCancel(context.Background())
	ctlDone := make(chan struct{})
	go func() {
		defer close(ctlDone)
		if err := serveHTTP(ctlCtx, ctl, newControlHandler(runCtx, g), runCtx); err != nil {
			g.log.Error("control socket stopped", "err", err)
		}
	}()
	undo = append(undo, func() { ctlStop(); <-ctlDone })

	// The table goes in before the interface exists and comes out after it
	// is gone, so no peer packet ever passes without it (it matches the
	// interface by name). Forwarding is only turned on once it is in place.
	fw, err := g.parts.firewall(firewall.Options{Logger: g.log.With("component", "firewall"), Registerer: g.regr,
		LearnedFile: learnedFile(cfg)})
	if err != nil {
		return fmt.Errorf("open firewall: %w", err)
	}
	if err := fw.Apply(g.firewallSpec(cfg)); err != nil {
		fw.Close()
		return fmt.Errorf("apply firewall: %w", err)
	}
	g.fw = fw
	undo = append(undo, func() {
		if err := fw.Close(); err != nil {
			g.log.Error("close firewall", "err", err)
		}
	})

	dev, err := g.parts.device(ctx, wgdev.Config{
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
	g.dev = dev
	undo = append(undo, func() {
		if err := dev.Close(); err != nil {
			g.log.Error("remove interface", "interface", cfg.Interface.Name, "err", err)
		}
	})
	g.log.Info("interface up", "interface", dev.Name(), "backend", dev.Backend(), "public_key", dev.PublicKey().String(), "listen_port", cfg.Interface.ListenPort)
	if err := g.syncPeers(); err != nil {
		return err
	}

	if _, err := g.ensureDNSCert(cfg); err != nil {
		return err
	}
	wait := dnsproxy.UDPWaitKernel
	if dev.Backend() == wgdev.BackendUserspace {
		// The embedded device's goroutines need the cores more than the
		// resolver needs threads of its own (dnsproxy.UDPWaitPoller).
		wait = dnsproxy.UDPWaitPoller
	}
	proxy, err := g.parts.resolver(cfg.DNS, dnsproxy.Options{
		Logger:     g.log.With("component", "dns"),
		Registerer: g.regr,
		Identities: &g.peerIdx,
		Observer:   g.fw, // egress learning: the firewall's learned pairs
		UDPWait:    wait,
	})
	if err != nil {
		return fmt.Errorf("configure dns proxy: %w", err)
	}
	if err := proxy.Start(ctx); err != nil {
		return fmt.Errorf("start dns proxy: %w", err)
	}
	g.proxy = proxy
	undo = append(undo, func() { proxy.Close() })

	if cfg.forwards() {
		changed, err := g.parts.host.enableForwarding()
		if err != nil {
			return fmt.Errorf("peers route through the gateway: %w", err)
		}
		if len(changed) > 0 {
			g.log.Info("enabled ip forwarding: peers route through the gateway", "sysctls", changed)
		}
	}

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
	start("firewall watch", fw.Run)
	if cfg.Admin.Listen != "" {
		admin, err := g.listenAdmin(cfg.Admin.Listen)
		if err != nil {
			return err
		}
		start("admin listener", func(ctx context.Context) error { return g.serveAdmin(ctx, admin) })
	}
	start("peer watch", g.watchPeers)
	if g.fleet != nil {
		start("fleet registry", g.runFleet)
	}
	start("egress log", g.watchEgress)
	if cfg.OwnDNSCA {
		start("dns certificate renewal", g.renewDNSCert)
	}

	g.setPhase(phaseReady)
	g.log.Info("ready", "interface", cfg.Interface.Name, "resolvers", cfg.Resolvers(), "mode", cfg.Mode, "admin", cfg.Admin.Listen, "control", cfg.ControlSocket())
	if g.opts.Ready != nil {
		g.opts.Ready()
	}
	if g.opts.Watchdog != nil {
		start("watchdog", g.watchdog)
	}
	<-ctx.Done()
	// Waits for a reload or request in progress; none starts after this.
	g.setPhase(phaseStopping)
	g.log.Info("stopping", "interface", cfg.Interface.Name)
	return nil
}

// watchdog pings systemd while the gateway runs. It follows liveness, not
// readiness: a dead upstream makes /readyz fail, but a restart would not
// bring the upstream back.
func (g *Gateway) watchdog(ctx context.Context) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if g.use(func() error { return nil }) == nil {
				g.opts.Watchdog()
			}
		}
	}
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
		Groups:         g.groupRulesNow(cfg),
		GroupBound:     cfg.groupBound(),
		Encrypted:      firewallEncrypted(cfg),
	}
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
		if err := atomicfile.Write(path, []byte(key.String()+"\n"), 0o600); err != nil {
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
