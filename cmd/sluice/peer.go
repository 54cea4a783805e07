package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/peers"
)

func newPeerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peer",
		Short: "Manage peers (one per user device) and their client configs",
		Long: `Peers are named USER/DEVICE (DEVICE defaults to "default"). Each device gets
one IPv4 /32 and one IPv6 /128 from the interface prefixes. Changes apply to
the running daemon within a second, and at the next 'sluice up' otherwise.`,
	}
	cmd.AddCommand(newPeerAddCmd(g), newPeerListCmd(g), newPeerShowCmd(g), newPeerRemoveCmd(g), newPeerConfigCmd(g), newPeerLintCmd(), newPeerTraceCmd(g))
	cmd.AddCommand(newPeerDisableCmd(g, true), newPeerDisableCmd(g, false), newPeerExpireCmd(g), newPeerRenameCmd(g),
		newPeerRotateCmd(g), newPeerImportCmd(g), newPeerExportCmd(g), newPeerSetGroupCmd(g))
	cmd.Long += "\n\n" + exitCodesHelp
	usageFlagErrors(cmd)
	return cmd
}

func (g *globals) store() (*peers.Store, *gateway.Config, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, nil, err
	}
	st, err := gateway.OpenStore(cfg) // the local file, or the fleet's etcd registry
	if err != nil {
		return nil, nil, fmt.Errorf("open peer store: %w", err)
	}
	return st, cfg, nil
}

// notifyDaemon asks a running daemon to apply the store now; without one
// the change waits for the next start.
func notifyDaemon(cmd *cobra.Command, cfg *gateway.Config) {
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	err := gateway.NewClient(cfg.ControlSocket()).SyncPeers(ctx)
	switch {
	case err == nil:
		fmt.Fprintln(cmd.ErrOrStderr(), "applied to the running gateway")
	case errors.Is(err, gateway.ErrNotRunning):
		fmt.Fprintln(cmd.ErrOrStderr(), "sluice is not running: the change applies at the next 'sluice up'")
	default:
		fmt.Fprintln(cmd.ErrOrStderr(), "warning: the running gateway did not confirm the change (it also polls the store every second):", err)
	}
}

func newPeerAddCmd(g *globals) *cobra.Command {
	var device, pub, expires, group string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "add USER",
		Short: "Add a device for a user and allocate its addresses",
		Long: `Add a device and allocate its tunnel addresses. sluice generates the device's
key pair unless --public-key is given (the user keeps the private key; the
rendered config then carries a placeholder for it).`,
		Example: "  sluice peer add alice --device laptop\n  sluice peer add bob --device phone --public-key 'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, cfg, err := g.store()
			if err != nil {
				return err
			}
			user, dev := args[0], device
			if strings.Contains(user, "/") {
				if dev != "" {
					return errors.New("give the device either as USER/DEVICE or with --device, not both")
				}
				if user, dev, err = peers.ParseID(user); err != nil {
					return err
				}
			}
			if err := checkGroup(cfg, group); err != nil {
				return err
			}
			req := peers.AddRequest{User: user, Device: dev, Group: group}
			gwPub := gatewayPublicKey(cfg)
			if err := checkDaemon(cmd, cfg, gwPub); err != nil {
				return err
			}
			if pub != "" {
				k, err := wgtypes.ParseKey(pub)
				if err != nil {
					return fmt.Errorf("--public-key: not a base64 WireGuard key (a device shows it with `wg pubkey`)")
				}
				if gwPub != nil && k == *gwPub {
					return fmt.Errorf("--public-key %s is the gateway's own public key (%s): give the device's key, shown on the device by `wg pubkey`", k, cfg.Interface.PrivateKeyFile)
				}
				req.PublicKey = &k
			}
			if expires != "" {
				if req.Expires, err = parseExpiry(expires, time.Now()); err != nil {
					return err
				}
			}
			st.SetAddressQuarantine(cfg.Peers.AddressQuarantine)
			p, err := st.Add(req, cfg.Pool())
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), []peerJSON{peerJSONOf(cfg, p, time.Now())}); err != nil {
					return err
				}
				notifyDaemon(cmd, cfg)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s: %s, %s, public key %s\n", p.ID(), p.IPv4, p.IPv6, p.PublicKey)
			if cfg.Groups.Enabled() {
				fmt.Fprintf(cmd.OutOrStdout(), "group: %s\n", cfg.GroupOf(p))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "client config: sluice peer config %s [--format conf|qr|png|nrpt|mobileconfig|resolved]\n", p.ID())
			notifyDaemon(cmd, cfg)
			return nil
		},
	}
	cmd.Flags().StringVarP(&device, "device", "d", "", "device name (default \"default\")")
	cmd.Flags().StringVar(&pub, "public-key", "", "the device's own public key (its private key never leaves it)")
	cmd.Flags().StringVar(&expires, "expires", "", "expire the device after a duration (90d, 2w, 12h) or on a date (2026-12-31); see 'peer expire'")
	cmd.Flags().StringVarP(&group, "group", "g", "", "the device's group (default: peers.default_group)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the added peer as a JSON array")
	return cmd
}

func (g *globals) peerByID(id string) (*peers.Store, *gateway.Config, peers.Peer, error) {
	st, cfg, err := g.store()
	if err != nil {
		return nil, nil, peers.Peer{}, err
	}
	user, dev, err := peers.ParseID(id)
	if err != nil {
		return nil, nil, peers.Peer{}, err
	}
	p, err := st.Get(user, dev)
	if errors.Is(err, peers.ErrNotFound) {
		return nil, nil, peers.Peer{}, fmt.Errorf("%w: %s/%s (see `sluice peer list`)", peers.ErrNotFound, user, dev)
	}
	return st, cfg, p, err
}

func newPeerConfigCmd(g *globals) *cobra.Command {
	var format, out, endpoint, platform, gw string
	cmd := &cobra.Command{
		Use:   "config USER[/DEVICE]",
		Short: "Render a device's client config",
		Long: `Render the client config of a device. Every format routes the in-tunnel
resolver addresses (IPv4 and IPv6) through the tunnel, whatever peers.routes
says: split mode routes peers.routes plus the resolvers, full mode everything.

Formats:
  conf          wg-quick config (Linux, macOS and Windows WireGuard apps)
  qr            the conf as a QR code in the terminal (mobile apps scan it)
  png           the conf as a QR code image (use -o FILE)
  nrpt          Windows PowerShell: NRPT rules for split DNS on managed fleets
  mobileconfig  Apple configuration profile carrying the tunnel and its DNS
                (--platform ios or macos: the WireGuard app it is for)
  resolved      Linux systemd-resolved variant with per-link ~domain routing`,
		Example: "  sluice peer config alice/laptop > alice.conf\n  sluice peer config alice/phone --format qr\n  sluice peer config alice/phone --format png -o alice.png",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, cfg, p, err := g.peerByID(args[0])
			if err != nil {
				return err
			}
			data, err := renderForGateway(cmd, cfg, p, format, endpoint, platform, gw)
			if err != nil {
				return err
			}
			secret := peers.HoldsPrivateKey(format, p)
			if out != "" && out != "-" {
				if err := writePrivate(out, data); err != nil {
					return err
				}
				if secret {
					fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (mode 0600: it holds the device's private key)\n", out)
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (mode 0600; no private key in it: the device keeps its own)\n", out)
				}
				return nil
			}
			w := cmd.OutOrStdout()
			if secret && isTerminalOrPipe(w) {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: this config holds %s's private key: keep it off shared screens, logs and scrollback (-o FILE writes it 0600)\n", p.ID())
			}
			_, err = w.Write(data)
			return err
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "conf", "output format: "+strings.Join(peers.Formats(), ", "))
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE (mode 0600) instead of standard output")
	cmd.Flags().StringVar(&endpoint, "endpoint", "", "endpoint host:port clients dial (default: interface.endpoint)")
	cmd.Flags().StringVar(&platform, "platform", peers.DefaultApplePlatform, "mobileconfig: the Apple platform, ios or macos")
	cmd.Flags().StringVar(&gw, "gateway", "", "fleet: render for this gateway of the fleet (its endpoint and public key from the registry; default: this one)")
	return cmd
}

func newPeerLintCmd() *cobra.Command {
	var mtu int
	cmd := &cobra.Command{
		Use:         "lint FILE",
		Annotations: map[string]string{noConfig: "1"},
		Short:       "Find DNS leak paths in any wg-quick client config",
		Long: `Read a wg-quick client config (any, not only sluice's) and report DNS leak
paths: a DNS server not routed by AllowedIPs (IPv4 or IPv6), no DNS line,
IPv6 addresses without an IPv6 route or resolver, a full tunnel without ::/0,
an MTU above the tunnel's. Each finding says what to add. Exit status 1 when
there is a finding, 2 when the file cannot be read or is over 4 MiB.`,
		Example: "  sluice peer lint /etc/wireguard/wg0.conf\n  sluice peer lint --mtu 1420 alice.conf",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := peers.ReadLintFile(args[0])
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "sluice:", err)
				return exitError{2}
			}
			findings, err := peers.Lint(data, peers.LintOptions{TunnelMTU: mtu})
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "sluice: %s: %v\n", args[0], err)
				return exitError{2}
			}
			for _, f := range findings {
				fmt.Fprintf(cmd.OutOrStdout(), "%s:%d: %s: %s\n", args[0], f.Line, f.Severity, f.Message)
				if f.Fix != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "    fix: %s\n", f.Fix)
				}
			}
			if len(findings) > 0 {
				return exitError{1}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: no DNS leak path found\n", args[0])
			return nil
		},
	}
	cmd.Flags().IntVar(&mtu, "mtu", 0, "the tunnel's MTU; warn when the config's is above it")
	return cmd
}

// gatewayPublicKey is the public key of cfg's key file, or nil when there is
// none yet (the daemon creates it at its first start).
func gatewayPublicKey(cfg *gateway.Config) *wgtypes.Key {
	k, err := gateway.ReadKey(cfg.Interface.PrivateKeyFile)
	if err != nil {
		return nil
	}
	pub := k.PublicKey()
	return &pub
}

// checkDaemon compares cfg (and the gateway public key it implies, when
// known) with the daemon answering on cfg's control socket. A daemon that
// runs another interface, key or mode means this is not its file: what the
// command would write could never handshake, so it refuses. No daemon, or
// one that cannot be asked, is not a disagreement.
func checkDaemon(cmd *cobra.Command, cfg *gateway.Config, pub *wgtypes.Key) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
	defer cancel()
	st, err := gateway.NewClient(cfg.ControlSocket()).Status(ctx)
	if errors.Is(err, gateway.ErrNotRunning) {
		otherDaemons(cmd, cfg)
		return nil
	}
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: cannot compare with the running daemon: %v\n", err)
		return nil
	}
	var diffs []string
	if st.Interface.Name != cfg.Interface.Name {
		diffs = append(diffs, fmt.Sprintf("interface %s, the daemon runs %s", cfg.Interface.Name, st.Interface.Name))
	}
	if st.Interface.Mode != string(cfg.Mode) {
		diffs = append(diffs, fmt.Sprintf("mode %s, the daemon runs %s mode", cfg.Mode, st.Interface.Mode))
	}
	if pub != nil && st.Interface.PublicKey != pub.String() {
		diffs = append(diffs, fmt.Sprintf("public key %s (%s), the daemon's is %s", pub, cfg.Interface.PrivateKeyFile, st.Interface.PublicKey))
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("%s disagrees with the daemon on %s: %s; a client config from it could never handshake (name the daemon's file with -c)",
		cfg.Source, cfg.ControlSocket(), strings.Join(diffs, "; "))
}

// writePrivate writes data to path with mode 0600, also when path already
// exists with a wider mode: the mode is narrowed before a byte is written.
func writePrivate(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// isTerminalOrPipe reports whether w is a terminal or a pipe, where a
// private key ends up on a screen or in another program (a regular file
// the shell redirected to is the operator's choice).
func isTerminalOrPipe(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	return fi.Mode()&(os.ModeCharDevice|os.ModeNamedPipe|os.ModeSocket) != 0
}

// otherDaemons notes the daemons that run beside the control socket cfg
// names when none runs on it: the operator may have meant one of them.
func otherDaemons(cmd *cobra.Command, cfg *gateway.Config) {
	socks, _ := filepath.Glob(filepath.Join(filepath.Dir(cfg.ControlSocket()), "*.sock"))
	for _, s := range socks {
		if s == cfg.ControlSocket() {
			continue
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
		st, err := gateway.NewClient(s).Status(ctx)
		cancel()
		if err == nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "note: no daemon runs %s's interface %s, but one runs interface %s (%s mode) on %s: is -c the right file?\n",
				cfg.Source, cfg.Interface.Name, st.Interface.Name, st.Interface.Mode, s)
		}
	}
}
