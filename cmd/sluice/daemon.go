package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/sluice-vpn/sluice/gateway"
)

func (g *globals) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", g.logFormat)
}

func (g *globals) load() (*gateway.Config, error) {
	return gateway.Load(g.config)
}

func newUpCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Run the gateway in the foreground",
		Long: `Bring up the WireGuard interface, the DNS proxy and the firewall, and serve
until SIGINT or SIGTERM, then tear everything down (the firewall table stays
if enforce.keep_on_stop is set, or if sluice is killed: it fails closed).

SIGHUP or 'sluice reload' re-reads the configuration; an invalid file is
refused and the running configuration stays. Under systemd (Type=notify)
sluice reports READY=1 once everything is up and pings the watchdog.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Signals are hooked before anything else: a SIGHUP that comes
			// early is answered "not ready yet" (logged) once the gateway
			// exists, never by the default action (exit).
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			// Until the process exits: a late SIGHUP must not kill it either.
			defer signal.Ignore(syscall.SIGHUP)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log, err := g.logger(os.Stderr)
			if err != nil {
				return err
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			gw := gateway.New(cfg, gateway.Options{
				Logger:  log,
				Version: version,
				Ready: func() {
					if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
						log.Warn("notify systemd", "err", err)
					}
				},
				Reloading: func() { _, _ = daemon.SdNotify(false, sdNotifyReloading()) },     // best effort
				Watchdog:  func() { _, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog) }, // best effort, like systemd's own tools
			})
			hupCtx, hupStop := context.WithCancel(ctx)
			hupDone := make(chan struct{})
			go func() {
				defer close(hupDone)
				for {
					select {
					case <-hupCtx.Done():
						return
					case <-hup:
						_, _ = gw.Reload() // logged by the gateway, "not ready yet" included
					}
				}
			}()
			err = gw.Run(ctx)
			hupStop()
			<-hupDone
			_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
			return err
		},
	}
}

// sdNotifyReloading is systemd's RELOADING=1 with the CLOCK_MONOTONIC
// timestamp that Type=notify-reload asks for.
func sdNotifyReloading() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return daemon.SdNotifyReloading
	}
	return fmt.Sprintf("%s\nMONOTONIC_USEC=%d", daemon.SdNotifyReloading, ts.Nano()/1000)
}

// client connects to the daemon run with the configured file. It does not
// validate the file: a reload is usually asked for right after editing it.
func (g *globals) client() (*gateway.Client, error) {
	path, err := gateway.ControlSocketPath(g.config)
	if err != nil {
		return nil, err
	}
	return gateway.NewClient(path), nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the interface, peers, DNS and firewall counters of the running daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printStatus(w io.Writer, st *gateway.Status) {
	in := st.Interface
	fmt.Fprintf(w, "interface: %s (%s backend, %s mode)\n", in.Name, in.Backend, in.Mode)
	fmt.Fprintf(w, "  public key: %s\n  listening port: %d\n  addresses: %s\n  resolvers: %s\n  uptime: %s\n",
		in.PublicKey, in.ListenPort, strings.Join(in.Addresses, ", "), strings.Join(in.Resolvers, ", "), st.Uptime)
	printFleetStatus(w, st.Fleet)
	for _, p := range st.Peers {
		id := p.ID
		if id == "" {
			id = "(not in store)"
		}
		fmt.Fprintf(w, "\npeer: %s\n  public key: %s\n  allowed ips: %s\n", id, p.PublicKey, strings.Join(p.Addresses, ", "))
		if p.Endpoint != "" {
			fmt.Fprintf(w, "  endpoint: %s\n", p.Endpoint)
		}
		if !p.LatestHandshake.IsZero() {
			fmt.Fprintf(w, "  latest handshake: %s ago\n", time.Since(p.LatestHandshake).Round(time.Second))
		}
		fmt.Fprintf(w, "  transfer: %d B received, %d B sent\n", p.RxBytes, p.TxBytes)
	}
	fmt.Fprintf(w, "\ndns:\n")
	printDNSStats(w, st)
	if eg := st.Egress; eg.Mode != "" {
		fmt.Fprintf(w, "\negress: %s, %d learned pairs (at least %s each), %d new flows to unresolved addresses, %d inbound dropped\n",
			eg.Mode, eg.LearnedPairs, eg.MinTTL, eg.Unresolved, eg.InboundDrops)
	}
	fmt.Fprintf(w, "\nfirewall counters (packets):\n")
	for _, k := range sortedKeys(st.Firewall) {
		fmt.Fprintf(w, "  %-22s %d\n", k, st.Firewall[k].Packets)
	}
	for _, e := range st.Errors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
	for _, e := range st.NotReady {
		fmt.Fprintf(w, "not ready: %s\n", e)
	}
	for _, e := range st.Degraded {
		fmt.Fprintf(w, "degraded: %s\n", e)
	}
}

func newDoctorCmd(g *globals) *cobra.Command {
	var asJSON bool
	var peer string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Run the DNS-leak playbook on the gateway and say what to do",
		Long: `Check, on the running gateway: the interface and recent handshakes; the
route to every upstream (an internal zone's resolver reached over the
internet-facing interface fails); a real query to every upstream with its
latency and rcode; the firewall table and its counters; the proxy answering
on every in-tunnel address with the canary names blocked.

With --peer USER[/DEVICE]: that peer's last handshake, how many of its DNS
packets reached the proxy and how many were redirected or rejected (DNS to
other resolvers, DoT, DoQ, DoH) since the firewall table was last applied.
"handshakes but no DNS from this peer" means its device uses another resolver.

Each line is PASS, WARN (passed, but look at the note under it) or FAIL with
the action to take. Exit status 1 when any check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
			defer cancel()
			rep, err := c.Doctor(ctx, peer)
			if err != nil {
				if errors.Is(err, gateway.ErrNotRunning) {
					rep = &gateway.Report{Checks: []gateway.Check{{Name: "daemon", Detail: err.Error(), Action: "start it: sluice up (or systemctl start sluice)"}}}
				} else {
					return err
				}
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				width := 0
				for _, c := range rep.Checks {
					width = max(width, len(c.Name))
				}
				for _, c := range rep.Checks {
					mark := "PASS"
					switch {
					case !c.OK:
						mark = "FAIL"
					case c.Action != "":
						mark = "WARN" // passed, with something worth a look
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s  %-*s  %s\n", mark, width, c.Name, c.Detail)
					if c.Action != "" {
						fmt.Fprintf(cmd.OutOrStdout(), "      -> %s\n", c.Action)
					}
				}
			}
			if !rep.OK {
				return exitError{1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&peer, "peer", "", "also check this peer (user or user/device)")
	return cmd
}

func newReloadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Make the running daemon re-read its configuration (like SIGHUP)",
		Long: `Re-read the configuration file in the running daemon. An invalid file is
refused with its FILE:LINE errors and the daemon keeps the configuration it
runs. A valid one is applied without dropping tunnels or the DNS cache, and
the firewall table is replaced in one batch. Interface settings (name,
backend, addresses, port, key, MTU, dns.listen, admin) need a restart.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			applied, notes, err := c.Reload(cmd.Context())
			for _, n := range notes {
				fmt.Fprintln(cmd.ErrOrStderr(), "note:", n)
			}
			if errors.Is(err, gateway.ErrNotReady) {
				fmt.Fprintf(cmd.ErrOrStderr(), "sluice: reload not done: %v; try again once it is up\n", err)
				return exitError{1}
			}
			if errors.Is(err, gateway.ErrNotRunning) || errors.Is(err, gateway.ErrPermission) {
				return err
			}
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "reload refused; the daemon keeps its running configuration:")
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return exitError{1}
			}
			if applied {
				fmt.Fprintln(cmd.OutOrStdout(), "reloaded")
			}
			return nil
		},
	}
}

func newFirewallCmd(g *globals) *cobra.Command {
	fw := &cobra.Command{Use: "firewall", Short: "Inspect the nftables table"}
	fw.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the active table in nft syntax, with counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			text, err := c.Firewall(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), text)
			return nil
		},
	})
	return fw
}
