// Command dnsproxy-bench runs sluice's in-tunnel DNS proxy on loopback for the
// benchmark harness (bench/run.sh). Loopback stands for the tunnel here: the
// proxy listens on 127.0.0.1:PORT and accepts 127.0.0.0/8 as its tunnel
// sources, and forwards everything to one upstream group. It owns nothing but
// this wiring, an optional CPU profile, and a clean stop on SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
)

const (
	defaultPort     = 5401
	defaultUpstream = "127.0.0.1:5300"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dnsproxy-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		listen     = flag.String("listen", "127.0.0.1", "address to listen on")
		port       = flag.Uint("port", defaultPort, "port to listen on (udp and tcp)")
		upstream   = flag.String("upstream", defaultUpstream, "upstream resolver host:port of the default group")
		cpuprofile = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
		groups     = flag.Int("groups", 0, "configure this many peer groups (groups.go); 0: none")
		peers      = flag.Int("peers", 0, "with -groups: this many peer identities (127.0.0.1 is the first)")
		dotPort    = flag.Uint("dot-port", 0, "also serve DoT on this port (needs -cert, -key, -server-name)")
		dohPort    = flag.Uint("doh-port", 0, "also serve DoH on this port (needs -cert, -key, -server-name)")
		certFile   = flag.String("cert", "", "PEM certificate of the DoT/DoH listeners")
		keyFile    = flag.String("key", "", "PEM key of the DoT/DoH listeners")
		serverName = flag.String("server-name", "", "the name the certificate is for")
		egress     = flag.Bool("egress", false, "learn answered addresses into an nftables table (egress: resolved) in this namespace")
		table      = flag.String("table", "sluicebench", "with -egress: the nftables table (distinct per process in one namespace)")
		queryLog   = flag.String("querylog", "", "write the query log to this file")
		trace      = flag.Bool("trace", false, "attach a trace (tap) to the load generator's address 127.0.0.1 and drain it as `sluice peer trace` does")
		udpWait    = flag.String("udp-wait", "kernel", "where the UDP path waits for datagrams: kernel (the default, a standalone proxy's) or poller (a gateway's on the embedded WireGuard device)")
	)
	flag.Parse()
	addr, err := netip.ParseAddr(*listen)
	if err != nil {
		return fmt.Errorf("parse listen address %q: %w", *listen, err)
	}
	if *port == 0 || *port > 65535 {
		return fmt.Errorf("bad port %d", *port)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	cfg := dnsproxy.DefaultConfig()
	cfg.Listen = []netip.Addr{addr}
	cfg.Port = uint16(*port)
	cfg.AllowedSources = []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("::1/128"),
	}
	cfg.Default = dnsproxy.Zone{Upstreams: dnsproxy.MustParseUpstreams(*upstream)}
	// Every load generator query comes from 127.0.0.1, one "peer": the
	// per-peer rate limit would measure the limit, not the proxy, and the
	// anchors (dnsdist, unbound) have none configured either. The in-flight
	// cap stays at its default.
	cfg.Limits.PeerQPS = 0
	cfg.QueryLog.Path = *queryLog
	if *dotPort != 0 || *dohPort != 0 {
		if *dotPort > 65535 || *dohPort > 65535 {
			return fmt.Errorf("bad dot or doh port")
		}
		cfg.Encrypted = dnsproxy.EncryptedConfig{
			DoT: *dotPort != 0, DoH: *dohPort != 0,
			DoTPort: uint16(*dotPort), DoHPort: uint16(*dohPort),
			ServerName: *serverName, CertFile: *certFile, KeyFile: *keyFile,
		}
	}

	opts := dnsproxy.Options{Logger: log, Registerer: prometheus.NewRegistry()}
	switch *udpWait {
	case "kernel":
	case "poller":
		opts.UDPWait = dnsproxy.UDPWaitPoller
	default:
		fmt.Fprintf(os.Stderr, "dnsproxy-bench: -udp-wait %q: want kernel or poller\n", *udpWait)
		os.Exit(2)
	}
	if *groups > 0 {
		opts.Identities = withGroups(&cfg, *groups, *peers, *upstream)
	}
	if *egress {
		fw, err := egressFirewall(addr, *table, log)
		if err != nil {
			return err
		}
		defer fw.Close()
		opts.Observer = fw
	}
	p, err := dnsproxy.New(cfg, opts)
	if err != nil {
		return fmt.Errorf("create proxy: %w", err)
	}
	defer p.Close()

	if *trace {
		stopTrace := attachTrace(p, netip.MustParseAddr("127.0.0.1"))
		defer stopTrace()
	}

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return fmt.Errorf("create cpu profile %q: %w", *cpuprofile, err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := p.Start(ctx); err != nil {
		return fmt.Errorf("start proxy: %w", err)
	}
	fmt.Fprintf(os.Stderr, "dnsproxy-bench: listening on %s\n", netip.AddrPortFrom(addr, uint16(*port)))
	<-ctx.Done()
	return nil
}

// egressFirewall applies a table with egress: resolved for loopback "peers"
// (the bench runs in a namespace of its own) and returns it: the proxy then
// learns every answered address before it answers, as in a gateway.
func egressFirewall(resolver netip.Addr, table string, log *slog.Logger) (*firewall.Firewall, error) {
	fw, err := firewall.New(firewall.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("open firewall: %w", err)
	}
	spec := firewall.Spec{
		Table:          table,
		Interface:      "wgbench0",
		Resolvers:      []netip.Addr{resolver},
		TunnelPrefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Config:         firewall.Config{EgressMode: firewall.EgressResolved},
	}
	if err := fw.Apply(spec); err != nil {
		fw.Close()
		return nil, fmt.Errorf("apply firewall: %w", err)
	}
	return fw, nil
}
