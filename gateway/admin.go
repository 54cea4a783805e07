package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-vpn/sluice/dnsproxy"
)

// adminShutdownTimeout bounds how long a stop waits for admin requests.
const adminShutdownTimeout = 2 * time.Second

type gatewayMetrics struct {
	peers   prometheus.Gauge
	reloads *prometheus.CounterVec
}

func newGatewayMetrics(reg prometheus.Registerer) *gatewayMetrics {
	m := &gatewayMetrics{
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_peers", Help: "Peers (devices) configured on the interface.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_reloads_total", Help: "Configuration reloads by result (applied, refused).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.peers, m.reloads)
	return m
}

func (g *Gateway) listenAdmin(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen admin %s: %w", addr, err)
	}
	return ln, nil
}

// adminHandler serves /metrics, /healthz (the process answers) and /readyz
// (interface, proxy and firewall are up).
func (g *Gateway) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{Registry: g.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := g.readiness(); len(why) > 0 {
			http.Error(w, "not ready:\n"+strings.Join(why, "\n"), http.StatusServiceUnavailable)
			return
		}
		if why := g.fleetDegraded(); why != "" {
			fmt.Fprintln(w, "ready, degraded:\n"+why)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// readiness lists why the gateway should not be sent traffic; none when it
// is ready: it runs, its firewall table is in the kernel, and every DNS
// group has a healthy upstream (a group without one answers SERVFAIL).
func (g *Gateway) readiness() []string {
	var why []string
	if err := g.use(func() error {
		why = g.readinessLocked(g.proxy.Stats().Upstreams)
		return nil
	}); err != nil {
		return []string{err.Error()}
	}
	return why
}

// readinessLocked is readiness with g.life held, given the proxy's
// upstream health.
func (g *Gateway) readinessLocked(ups []dnsproxy.UpstreamStats) []string {
	var why []string
	if err := g.fw.Present(); err != nil {
		why = append(why, "firewall: "+err.Error())
	}
	return append(why, deadGroups(ups)...)
}

// deadGroups names the groups none of whose upstreams is healthy.
func deadGroups(ups []dnsproxy.UpstreamStats) []string {
	var order []string
	down := map[string][]string{}
	healthy := map[string]bool{}
	for _, u := range ups {
		if _, seen := down[u.Group]; !seen {
			order = append(order, u.Group)
			down[u.Group] = nil
		}
		if u.Healthy {
			healthy[u.Group] = true
		} else {
			down[u.Group] = append(down[u.Group], fmt.Sprintf("%s (%d failures in a row)", u.Addr, u.Failures))
		}
	}
	var why []string
	for _, grp := range order {
		if !healthy[grp] {
			why = append(why, fmt.Sprintf("dns group %s has no healthy upstream: %s ejected", grp, strings.Join(down[grp], ", ")))
		}
	}
	return why
}

// serveHTTP serves h on ln until ctx is done. Requests carry base (nil:
// context.Background()), so a stop can end long requests before ctx.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, base context.Context) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if base != nil {
		srv.BaseContext = func(net.Listener) context.Context { return base }
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), adminShutdownTimeout)
	defer cancel()
	_ = srv.Shutdown(sctx) // bounded; Serve returns below either way
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (g *Gateway) serveAdmin(ctx context.Context, ln net.Listener) error {
	return serveHTTP(ctx, ln, g.adminHandler(), nil)
}
