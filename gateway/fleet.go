package gateway

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore"
)

// fleetMemberInterval is how often a fleet gateway refreshes its
// registration (handshaking peer count, last seen).
var fleetMemberInterval = etcdstore.DefaultMemberInterval

// OpenStore opens the peer registry cfg names, for the CLI: the local file
// in peers.state_dir, or with `fleet:` the fleet's registry in etcd (reads
// fall back to this host's snapshot when the cluster is unreachable;
// changes are refused then). The caller closes it.
func OpenStore(cfg *Config) (*peers.Store, error) {
	if !cfg.Fleet.Enabled {
		st, err := peers.Open(cfg.Peers.StateDir)
		if err != nil {
			return nil, err
		}
		st.SetAddressQuarantine(cfg.Peers.AddressQuarantine)
		return st, nil
	}
	be, err := openEtcd(cfg, nil)
	if err != nil {
		return nil, err
	}
	st := peers.NewStore(be)
	st.SetAddressQuarantine(cfg.Peers.AddressQuarantine)
	return st, nil
}

// OpenFleet opens the fleet's etcd registry for the fleet commands
// (membership, import, export); an error when cfg has no `fleet:`.
func OpenFleet(cfg *Config) (*etcdstore.Backend, error) {
	if !cfg.Fleet.Enabled {
		return nil, fmt.Errorf("%s has no fleet section: this gateway keeps its peers in %s", cfg.Source, filepath.Join(cfg.Peers.StateDir, peers.StoreFile))
	}
	return openEtcd(cfg, nil)
}

func openEtcd(cfg *Config, g *Gateway) (*etcdstore.Backend, error) {
	tlsCfg, err := etcdstore.LoadTLS(cfg.Fleet.CAFile, cfg.Fleet.CertFile, cfg.Fleet.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("fleet.etcd: %w", err)
	}
	ec := etcdstore.Config{
		Endpoints: cfg.Fleet.Endpoints,
		Prefix:    cfg.Fleet.Prefix,
		TLS:       tlsCfg,
		Snapshot:  filepath.Join(cfg.Peers.StateDir, SnapshotFile),
	}
	if g != nil {
		ec.Log = g.log.With("component", "fleet")
	}
	return etcdstore.Open(ec)
}

// fleetRun is a fleet gateway's registry follower.
type fleetRun struct {
	be *etcdstore.Backend
}

// openPeerStore opens the registry for Run: the file store, or the etcd
// registry followed from its first read (or the snapshot when etcd is
// unreachable). g.fleet is set for a fleet.
func (g *Gateway) openPeerStore(ctx context.Context, cfg *Config) (*peers.Store, error) {
	if !cfg.Fleet.Enabled {
		st, err := peers.Open(cfg.Peers.StateDir)
		if err != nil {
			return nil, fmt.Errorf("open peer store: %w", err)
		}
		return st, nil
	}
	be, err := openEtcd(cfg, g)
	if err != nil {
		return nil, err
	}
	if err := be.Start(ctx); err != nil {
		be.Close()
		return nil, fmt.Errorf("open fleet peer registry: %w", err)
	}
	g.fleet = &fleetRun{be: be}
	if err := g.metrics.registerFleet(g.regr, be); err != nil {
		g.log.Error("fleet metrics", "err", err)
	}
	h := be.Health()
	g.log.Info("fleet peer registry", "gateway", cfg.Fleet.Name, "store", be.Where(), "online", h.Online, "from_snapshot", h.FromSnapshot, "peers", h.Peers)
	st := peers.NewStore(be)
	st.SetAddressQuarantine(cfg.Peers.AddressQuarantine)
	return st, nil
}

// runFleet follows the registry and keeps this gateway's registration
// until ctx ends.
func (g *Gateway) runFleet(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.fleet.be.Register(ctx, fleetMemberInterval, g.fleetMember)
	}()
	g.fleet.be.Run(ctx)
	<-done
	return nil
}

// fleetMember is this gateway's registration.
func (g *Gateway) fleetMember() etcdstore.Member {
	cfg := g.Config()
	m := etcdstore.Member{Name: cfg.Fleet.Name, Endpoint: cfg.Interface.Endpoint, Version: g.opts.Version, Started: g.started.UTC().Truncate(time.Second)}
	for _, a := range cfg.Interface.Addresses {
		m.Addresses = append(m.Addresses, a.String())
	}
	_ = g.use(func() error {
		m.PublicKey = g.dev.PublicKey().String()
		stats, err := g.dev.Stats()
		if err != nil {
			return err
		}
		m.Peers = len(stats)
		for _, s := range stats {
			if !s.LastHandshakeTime.IsZero() && time.Since(s.LastHandshakeTime) < recentHandshake {
				m.Handshaking++
			}
		}
		return nil
	})
	return m
}

// FleetHealth is the registry's state as status shows it; nil without a
// fleet.
type FleetHealth struct {
	Name         string    `json:"name"`
	Store        string    `json:"store"`
	Online       bool      `json:"online"`
	Error        string    `json:"error,omitempty"`
	Since        time.Time `json:"since"`
	Revision     int64     `json:"revision"`
	FromSnapshot bool      `json:"from_snapshot,omitempty"`
	Peers        int       `json:"peers"`
}

// fleetHealth reports the registry's state; nil without a fleet.
func (g *Gateway) fleetHealth() *FleetHealth {
	if g.fleet == nil {
		return nil
	}
	h := g.fleet.be.Health()
	return &FleetHealth{Name: g.Config().Fleet.Name, Store: h.Where, Online: h.Online, Error: h.Err, Since: h.Since,
		Revision: h.Revision, FromSnapshot: h.FromSnapshot, Peers: h.Peers}
}

// fleetDegraded says why the registry is degraded, "" when it is not. A
// fleet gateway whose store is unreachable stays ready: it keeps enforcing
// and serving the peers it last knew, which is what clients need; only
// changes are refused. /readyz reports it in its body, status and doctor
// name it, and sluice_fleet_store_up is 0.
func (g *Gateway) fleetDegraded() string {
	h := g.fleetHealth()
	if h == nil || h.Online {
		return ""
	}
	why := "peer registry " + h.Store + " unreachable since " + h.Since.UTC().Format(time.RFC3339)
	if h.FromSnapshot {
		why += " (serving the local snapshot)"
	}
	if h.Error != "" {
		why += ": " + h.Error
	}
	return why + "; serving the last known peers, changes refused"
}

// doctorFleet adds the registry check.
func (g *Gateway) doctorFleet(r *Report) {
	h := g.fleetHealth()
	if h == nil {
		return
	}
	name := "fleet registry"
	if why := g.fleetDegraded(); why != "" {
		r.add(Check{Name: name, Detail: "gateway " + h.Name + ": " + why,
			Action: "restore etcd quorum (check the members with `etcdctl endpoint health`); this gateway converges by itself when it is back"})
		return
	}
	r.add(Check{Name: name, OK: true, Detail: fmt.Sprintf("gateway %s: %s online at revision %d, %d peers", h.Name, h.Store, h.Revision, h.Peers)})
}

// registerFleet adds the registry's gauges.
func (m *gatewayMetrics) registerFleet(reg prometheus.Registerer, be *etcdstore.Backend) error {
	up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_fleet_store_up", Help: "1 while the fleet's etcd peer registry answers with quorum, 0 while the gateway serves its last known peers.",
	}, func() float64 {
		if be.Health().Online {
			return 1
		}
		return 0
	})
	rev := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_fleet_store_revision", Help: "etcd revision of the peer registry state this gateway applied (0: from the local snapshot).",
	}, func() float64 { return float64(be.Health().Revision) })
	for _, c := range []prometheus.Collector{up, rev} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return fmt.Errorf("register fleet metrics: %w", err)
			}
		}
	}
	return nil
}
