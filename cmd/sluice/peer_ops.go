package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/peers"
)

// peerJSON is a peer as every peer command prints it with --json: never
// with a private or preshared key. Field names are stable; durations are
// seconds (numbers), times RFC 3339 in UTC.
type peerJSON struct {
	ID        string `json:"id"`
	User      string `json:"user"`
	Device    string `json:"device"`
	State     string `json:"state"` // active, disabled or expired
	IPv4      string `json:"ipv4"`
	IPv6      string `json:"ipv6"`
	PublicKey string `json:"public_key"`
	// Group is the peer's group (peers.default_group when it has none);
	// omitted when no groups are configured.
	Group string `json:"group,omitempty"`
	// OwnKey: the user brought their own key pair; sluice has no private key.
	OwnKey  bool      `json:"user_brought_key"`
	Created time.Time `json:"created"`
	// Expires is omitted when the peer never expires; ExpiresInSeconds is
	// negative once it has expired.
	Expires          *time.Time `json:"expires,omitempty"`
	ExpiresInSeconds *int64     `json:"expires_in_seconds,omitempty"`
	// Live values, present when the daemon answered and has the peer on
	// its device.
	LatestHandshakeAgeSeconds *int64 `json:"latest_handshake_age_seconds,omitempty"`
	RxBytes                   *int64 `json:"rx_bytes,omitempty"`
	TxBytes                   *int64 `json:"tx_bytes,omitempty"`
}

func peerJSONOf(cfg *gateway.Config, p peers.Peer, now time.Time) peerJSON {
	v := peerJSON{ID: p.ID(), User: p.User, Device: p.Device, State: p.State(now), Group: cfg.GroupOf(p),
		IPv4: addrString(p.IPv4), IPv6: addrString(p.IPv6), PublicKey: p.PublicKey.String(),
		OwnKey: p.PrivateKey == nil, Created: p.Created.UTC()}
	if !p.Expires.IsZero() {
		e := p.Expires.UTC()
		in := int64(p.Expires.Sub(now).Truncate(time.Second) / time.Second)
		v.Expires, v.ExpiresInSeconds = &e, &in
	}
	return v
}

func peersJSON(cfg *gateway.Config, list []peers.Peer, now time.Time) []peerJSON {
	out := make([]peerJSON, len(list))
	for i, p := range list {
		out[i] = peerJSONOf(cfg, p, now)
	}
	return out
}

func addrString(a fmt.Stringer) string {
	s := a.String()
	if s == "invalid IP" {
		return ""
	}
	return s
}

// selector parses USER (every device of the user) or USER/DEVICE.
func selector(arg string) (user, device string, err error) {
	if !strings.Contains(arg, "/") {
		if err := peers.ValidateName("user", arg); err != nil {
			return "", "", usageError{err}
		}
		return arg, "", nil
	}
	user, device, err = peers.ParseID(arg)
	if err != nil {
		return "", "", usageError{err}
	}
	return user, device, nil
}

func describeSel(user, device string) string {
	if device == "" {
		return "user " + user
	}
	return user + "/" + device
}

// notFound turns a store's ErrNotFound into advice, keeping the sentinel.
func notFound(err error, user, device string) error {
	if errors.Is(err, peers.ErrNotFound) {
		return fmt.Errorf("no peer %s (see `sluice peer list`): %w", describeSel(user, device), peers.ErrNotFound)
	}
	return err
}

// openStore is g.store with the configured address quarantine.
func (g *globals) openStore() (*peers.Store, *gateway.Config, error) {
	st, cfg, err := g.store()
	if err != nil {
		return nil, nil, err
	}
	st.SetAddressQuarantine(cfg.Peers.AddressQuarantine)
	return st, cfg, nil
}

// parseExpiry reads "never", a duration from now (90d, 2w, 36h, 30m) or a
// date (2026-12-31 at 00:00 UTC, or RFC 3339). The zero time means never.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "never" || s == "none" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t.UTC(), nil
	}
	unit := time.Duration(0)
	switch {
	case strings.HasSuffix(s, "d"):
		unit = 24 * time.Hour
	case strings.HasSuffix(s, "w"):
		unit = 7 * 24 * time.Hour
	}
	var d time.Duration
	if unit != 0 {
		n, err := strconv.ParseUint(s[:len(s)-1], 10, 16)
		if err != nil {
			return time.Time{}, usageError{fmt.Errorf("expiry %q: write a duration like 90d, 2w or 12h, a date like 2026-12-31, or never", s)}
		}
		d = time.Duration(n) * unit
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return time.Time{}, usageError{fmt.Errorf("expiry %q: write a duration like 90d, 2w or 12h, a date like 2026-12-31, or never", s)}
		}
	}
	if d <= 0 {
		return time.Time{}, usageError{fmt.Errorf("expiry %q: must be in the future", s)}
	}
	return now.Add(d).UTC().Truncate(time.Second), nil
}

func expiryText(p peers.Peer, now time.Time) string {
	switch {
	case p.Expires.IsZero():
		return "never"
	case now.Before(p.Expires):
		return p.Expires.UTC().Format(time.RFC3339) + " (in " + roundDuration(p.Expires.Sub(now)) + ")"
	}
	return p.Expires.UTC().Format(time.RFC3339) + " (expired)"
}

func roundDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	case d >= time.Hour:
		return d.Truncate(time.Minute).String()
	}
	return d.Truncate(time.Second).String()
}

// liveStats asks a running daemon for its peers' handshakes and transfer
// counters; nil when no daemon answers (they are only extras).
func liveStats(cmd *cobra.Command, cfg *gateway.Config) map[string]gateway.PeerStatus {
	ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
	defer cancel()
	st, err := gateway.NewClient(cfg.ControlSocket()).Status(ctx)
	if err != nil {
		return nil
	}
	out := make(map[string]gateway.PeerStatus, len(st.Peers))
	for _, p := range st.Peers {
		out[p.PublicKey] = p
	}
	return out
}

func addLive(v *peerJSON, live map[string]gateway.PeerStatus, now time.Time) {
	ps, ok := live[v.PublicKey]
	if !ok {
		return
	}
	rx, tx := ps.RxBytes, ps.TxBytes
	v.RxBytes, v.TxBytes = &rx, &tx
	if !ps.LatestHandshake.IsZero() {
		age := int64(max(now.Sub(ps.LatestHandshake), 0) / time.Second)
		v.LatestHandshakeAgeSeconds = &age
	}
}

func newPeerListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List peers with their state (active, disabled, expired)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, cfg, err := g.openStore()
			if err != nil {
				return err
			}
			list, err := st.List()
			if err != nil {
				return err
			}
			now := time.Now()
			if asJSON {
				return printJSON(cmd.OutOrStdout(), peersJSON(cfg, list, now))
			}
			w := cmd.OutOrStdout()
			groups := cfg.Groups.Enabled() // a GROUP column only where groups exist
			group := func(p peers.Peer) string {
				if !groups {
					return ""
				}
				return fmt.Sprintf("%-16s ", cfg.GroupOf(p))
			}
			head := ""
			if groups {
				head = fmt.Sprintf("%-16s ", "GROUP")
			}
			fmt.Fprintf(w, "%-32s %-16s %-28s %-8s %s%-20s %s\n", "PEER", "IPV4", "IPV6", "STATE", head, "EXPIRES", "PUBLIC KEY")
			for _, p := range list {
				exp := "never"
				if !p.Expires.IsZero() {
					exp = p.Expires.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%-32s %-16s %-28s %-8s %s%-20s %s\n", p.ID(), addrString(p.IPv4), addrString(p.IPv6), p.State(now), group(p), exp, p.PublicKey)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array (no private keys)")
	return cmd
}

func newPeerShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show USER[/DEVICE]",
		Short: "Show a device, or every device of a user (without private keys)",
		Long: `Show a device (USER/DEVICE) or every device of a user (USER): state,
addresses, public key, expiry and, when the daemon runs, the latest handshake
and transfer counters. --json prints an array in both cases.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			user, device, err := selector(args[0])
			if err != nil {
				return err
			}
			st, cfg, err := g.openStore()
			if err != nil {
				return err
			}
			list, err := st.Find(user, device)
			if err != nil {
				return notFound(err, user, device)
			}
			now := time.Now()
			live := liveStats(cmd, cfg)
			out := peersJSON(cfg, list, now)
			for i := range out {
				addLive(&out[i], live, now)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			for i, p := range list {
				if i > 0 {
					fmt.Fprintln(w)
				}
				fmt.Fprintf(w, "peer: %s\n  state: %s\n  addresses: %s %s\n  public key: %s\n", p.ID(), p.State(now), addrString(p.IPv4), addrString(p.IPv6), p.PublicKey)
				if out[i].Group != "" {
					fmt.Fprintf(w, "  group: %s\n", out[i].Group)
				}
				if p.PrivateKey == nil {
					fmt.Fprintln(w, "  key pair: brought by the user (sluice has no private key)")
				}
				fmt.Fprintf(w, "  created: %s\n  expires: %s\n", p.Created.UTC().Format(time.RFC3339), expiryText(p, now))
				v := out[i]
				switch {
				case live == nil:
					fmt.Fprintln(w, "  live: no answer from the daemon (not running, or no access to its control socket)")
				case v.RxBytes == nil:
					fmt.Fprintln(w, "  live: not on the device")
				default:
					if v.LatestHandshakeAgeSeconds != nil {
						fmt.Fprintf(w, "  latest handshake: %d s ago\n", *v.LatestHandshakeAgeSeconds)
					} else {
						fmt.Fprintln(w, "  latest handshake: none yet")
					}
					fmt.Fprintf(w, "  transfer: %d B received, %d B sent\n", *v.RxBytes, *v.TxBytes)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array (no private keys)")
	return cmd
}

// isTerminal reports whether r is a terminal.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// confirm asks on the terminal; without one it refuses (usage error).
func confirm(cmd *cobra.Command, question string) error {
	if !isTerminal(cmd.InOrStdin()) {
		return usageError{fmt.Errorf("%s: refusing without --yes (standard input is not a terminal)", question)}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s [y/N] ", question)
	line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errors.New("cancelled: nothing was removed")
}

func newPeerRemoveCmd(g *globals) *cobra.Command {
	var asJSON, yes bool
	cmd := &cobra.Command{
		Use:   "remove USER[/DEVICE]",
		Short: "Remove a device, or every device of a user; tunnels stop within a second",
		Long: `Remove a device (USER/DEVICE) or every device of a user (USER). Removing a
whole user asks for confirmation on a terminal; without a terminal it needs
--yes. The removed addresses are not handed out again for
peers.address_quarantine (default 7 days).`,
		Example: "  sluice peer remove alice/laptop\n  sluice peer remove alice --yes",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			user, device, err := selector(args[0])
			if err != nil {
				return err
			}
			st, cfg, err := g.openStore()
			if err != nil {
				return err
			}
			if device == "" && !yes {
				list, err := st.Find(user, "")
				if err != nil {
					return notFound(err, user, device)
				}
				ids := make([]string, len(list))
				for i, p := range list {
					ids[i] = p.ID()
				}
				if err := confirm(cmd, fmt.Sprintf("remove every device of %s (%s)?", user, strings.Join(ids, ", "))); err != nil {
					return err
				}
			}
			removed, err := st.RemoveMatching(user, device)
			if err != nil {
				return notFound(err, user, device)
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), peersJSON(cfg, removed, time.Now())); err != nil {
					return err
				}
			} else {
				for _, p := range removed {
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s (%s, %s)\n", p.ID(), addrString(p.IPv4), addrString(p.IPv6))
				}
			}
			notifyDaemon(cmd, cfg)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "remove every device of a user without asking")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the removed peers as a JSON array")
	return cmd
}

// changePeers opens the store, applies change, prints the peers it changed
// (verb names what happened to them) and tells the running daemon. A
// missing USER[/DEVICE] is reported as not found (exit 3).
func (g *globals) changePeers(cmd *cobra.Command, asJSON bool, verb, user, device string, change storeChange) error {
	st, cfg, err := g.openStore()
	if err != nil {
		return err
	}
	list, err := change(st)
	if err != nil {
		return notFound(err, user, device)
	}
	if err := printPeers(cmd, cfg, asJSON, verb, list); err != nil {
		return err
	}
	notifyDaemon(cmd, cfg)
	return nil
}

// printPeers prints what a command changed.
func printPeers(cmd *cobra.Command, cfg *gateway.Config, asJSON bool, verb string, list []peers.Peer) error {
	now := time.Now()
	if asJSON {
		return printJSON(cmd.OutOrStdout(), peersJSON(cfg, list, now))
	}
	for _, p := range list {
		fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%s, expires %s)\n", verb, p.ID(), p.State(now), expiryText(p, now))
	}
	return nil
}

func newPeerDisableCmd(g *globals, disable bool) *cobra.Command {
	use, short, verb := "enable", "Enable a disabled device, or every device of a user", "enabled"
	if disable {
		use, short, verb = "disable", "Disable a device, or every device of a user, keeping it in the store", "disabled"
	}
	return peerChangeCmd(g, &cobra.Command{
		Use:   use + " USER[/DEVICE]",
		Short: short,
		Long: short + `.
A disabled peer keeps its keys and addresses but is taken off the WireGuard
device and out of the DNS proxy's identities within a second; 'peer enable'
brings it back with the same client config.`,
		Args: usageArgs(cobra.ExactArgs(1)),
	}, verb, func(args []string) (string, string, storeChange, error) {
		user, device, err := selector(args[0])
		return user, device, func(st *peers.Store) ([]peers.Peer, error) {
			return st.SetDisabled(user, device, disable)
		}, err
	})
}

// storeChange is one change of the peer store that returns the peers it
// changed.
type storeChange func(*peers.Store) ([]peers.Peer, error)

// peerChangeCmd completes cmd (use, help, args) as a command that makes
// the change changeFor derives from its arguments on the peers of
// USER[/DEVICE] and prints them, as text or (--json) a JSON array.
func peerChangeCmd(g *globals, cmd *cobra.Command, verb string, changeFor func(args []string) (user, device string, change storeChange, err error)) *cobra.Command {
	var asJSON bool
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		user, device, change, err := changeFor(args)
		if err != nil {
			return err
		}
		return g.changePeers(cmd, asJSON, verb, user, device, change)
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the changed peers as a JSON array")
	return cmd
}

func newPeerExpireCmd(g *globals) *cobra.Command {
	return peerChangeCmd(g, &cobra.Command{
		Use:   "expire USER[/DEVICE] DURATION|DATE|never",
		Short: "Set when a device (or every device of a user) expires",
		Long: `Set when a device, or every device of a user, expires: a duration from now
(90d, 2w, 12h), a date (2026-12-31, or RFC 3339), or never. An expired peer
is taken off the WireGuard device at that moment (the daemon notices without
a restart) and stays in the store, shown as expired; set a new expiry to
bring it back.`,
		Example: "  sluice peer expire alice/laptop 90d\n  sluice peer expire contractor 2026-12-31\n  sluice peer expire alice never",
		Args:    usageArgs(cobra.ExactArgs(2)),
	}, "updated", func(args []string) (string, string, storeChange, error) {
		user, device, err := selector(args[0])
		if err != nil {
			return "", "", nil, err
		}
		t, err := parseExpiry(args[1], time.Now())
		return user, device, func(st *peers.Store) ([]peers.Peer, error) {
			return st.SetExpires(user, device, t)
		}, err
	})
}

func newPeerRenameCmd(g *globals) *cobra.Command {
	return peerChangeCmd(g, &cobra.Command{
		Use:   "rename FROM TO",
		Short: "Rename a device (USER/DEVICE) or a user (USER, every device)",
		Long: `Rename a device (alice/laptop → alice/work-laptop, or to another user:
alice/laptop → bob/laptop) or a whole user (alice → alice.smith, every device
moves). Keys and addresses stay, so client configs keep working.`,
		Example: "  sluice peer rename alice/laptop alice/work-laptop\n  sluice peer rename alice alice.smith",
		Args:    usageArgs(cobra.ExactArgs(2)),
	}, "renamed to", func(args []string) (string, string, storeChange, error) {
		fu, fd, err := selector(args[0])
		if err != nil {
			return "", "", nil, err
		}
		tu, td, err := selector(args[1])
		if err != nil {
			return "", "", nil, err
		}
		if fd == "" && td != "" {
			return "", "", nil, usageError{fmt.Errorf("rename %s: a user is renamed to a user (TO without /DEVICE)", fu)}
		}
		return fu, fd, func(st *peers.Store) ([]peers.Peer, error) {
			return st.Rename(fu, fd, tu, td)
		}, nil
	})
}

// renderFor renders p's client config: the one renderer of `peer config`
// and `peer rotate`. When the daemon runs with another key, interface or
// mode than cfg, it refuses (see checkDaemon) rather than render a config
// that can never handshake.
func renderFor(cmd *cobra.Command, cfg *gateway.Config, p peers.Peer, format, endpoint, platform string) ([]byte, error) {
	if endpoint == "" {
		endpoint = cfg.Interface.Endpoint
	}
	if endpoint == "" {
		return nil, cfg.EndpointError()
	}
	key, err := gateway.LoadOrCreateKey(cfg.Interface.PrivateKeyFile)
	if err != nil {
		return nil, err
	}
	serverPub := key.PublicKey()
	if err := checkDaemon(cmd, cfg, &serverPub); err != nil {
		return nil, err
	}
	return renderWith(cfg, p, format, endpoint, platform, serverPub)
}

// renderWith renders p's config for the gateway with public key serverPub
// at endpoint (this one, or another gateway of the fleet).
func renderWith(cfg *gateway.Config, p peers.Peer, format, endpoint, platform string, serverPub wgtypes.Key) ([]byte, error) {
	encDNS, err := cfg.ClientEncryptedDNS()
	if err != nil {
		return nil, err
	}
	return peers.Render(format, peers.ClientParams{
		Encrypted:       encDNS,
		Peer:            p,
		ServerPublicKey: serverPub,
		Endpoint:        endpoint,
		MTU:             cfg.Interface.MTU,
		FullTunnel:      cfg.FullTunnel(),
		Routes:          cfg.PeerRoutes(p), // the group's routes (groups)
		Resolvers:       cfg.Resolvers(),
		GatewayAddrs:    cfg.GatewayAddrs(),
		SearchDomains:   cfg.SearchDomains,
		Zones:           cfg.ZoneNames(),
		Keepalive:       cfg.Peers.PersistentKeepalive,
		TunnelName:      cfg.Interface.Name,
		ApplePlatform:   platform,
	})
}

func newPeerRotateCmd(g *globals) *cobra.Command {
	var asJSON bool
	var pub, out, format, endpoint, platform string
	cmd := &cobra.Command{
		Use:   "rotate USER[/DEVICE]",
		Short: "Give a device a new key pair and preshared key; the old key stops at once",
		Long: `Generate a new key pair and preshared key for a device and print its new
client config (or write it with -o, mode 0600). The daemon replaces the old
key on the WireGuard device within a second: the old config stops working
at once. A device that brought its own key gives its new public key with
--public-key (the printed config then has a placeholder for the private key).`,
		Example: "  sluice peer rotate alice/laptop -o alice-laptop.conf\n  sluice peer rotate bob/phone --format qr",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			user, device, err := peers.ParseID(args[0])
			if err != nil {
				return usageError{err}
			}
			var newPub *wgtypes.Key
			if pub != "" {
				k, err := wgtypes.ParseKey(pub)
				if err != nil {
					return usageError{fmt.Errorf("--public-key: not a base64 WireGuard key (a device shows it with `wg pubkey`)")}
				}
				newPub = &k
			}
			st, cfg, err := g.openStore()
			if err != nil {
				return err
			}
			if err := peers.ValidateFormat(format); err != nil {
				return usageError{err}
			}
			p, err := st.Rotate(user, device, newPub)
			if errors.Is(err, peers.ErrOwnKey) {
				return usageError{err}
			}
			if err != nil {
				return notFound(err, user, device)
			}
			notifyDaemon(cmd, cfg)
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), []peerJSON{peerJSONOf(cfg, p, time.Now())}); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "rotated %s: new public key %s; the old key no longer connects\n", p.ID(), p.PublicKey)
			}
			if asJSON && out == "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "new client config: sluice peer config %s\n", p.ID())
				return nil
			}
			data, err := renderFor(cmd, cfg, p, format, endpoint, platform)
			if err != nil {
				return fmt.Errorf("the keys were rotated, but the config cannot be rendered (fix this, then run sluice peer config %s): %w", p.ID(), err)
			}
			if out != "" && out != "-" {
				if err := writePrivate(out, data); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (mode 0600)\n", out)
				return nil
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
	cmd.Flags().StringVar(&pub, "public-key", "", "the device's own new public key (its private key never leaves it)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the new config to FILE (mode 0600) instead of standard output")
	cmd.Flags().StringVarP(&format, "format", "f", "conf", "config format: "+strings.Join(peers.Formats(), ", "))
	cmd.Flags().StringVar(&endpoint, "endpoint", "", "endpoint host:port clients dial (default: interface.endpoint)")
	cmd.Flags().StringVar(&platform, "platform", peers.DefaultApplePlatform, "mobileconfig: the Apple platform, ios or macos")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the peer as a JSON array (the config only with -o)")
	return cmd
}

// importJSON is what `peer import --json` prints.
type importJSON struct {
	Added       []peerJSON `json:"added"`
	Unchanged   []peerJSON `json:"unchanged"`
	Readdressed []string   `json:"readdressed"`
}

func newPeerImportCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Import the [Peer] sections of an existing wg-quick server config",
		Long: `Migrate an existing WireGuard server: read the [Peer] sections of its
wg-quick config (PublicKey, PresharedKey, AllowedIPs) and add them, keeping
their keys and, when inside the tunnel prefixes, their addresses, so existing
clients keep working. Names come from comments ("# Name = alice" or
"# Name = alice/laptop") inside a section or right above it, else peer-N.

Nothing is written when anything conflicts (a name, key or address already
used otherwise, a routed subnet in AllowedIPs); every conflict is listed.
Importing the same file again changes nothing.

The [Interface] section is not imported. Clients keep working only if the
gateway keeps the old server's key: put that PrivateKey into
interface.private_key_file before 'sluice up'.`,
		Example: "  sluice peer import /etc/wireguard/wg0.conf",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := readLimited(args[0], peers.MaxImportSize)
			if err != nil {
				return err
			}
			in, err := peers.ParseServer(data)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			st, cfg, err := g.openStore()
			if err != nil {
				return err
			}
			res, err := st.Import(in, cfg.Pool())
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			now := time.Now()
			if asJSON {
				v := importJSON{Added: peersJSON(cfg, res.Added, now), Unchanged: peersJSON(cfg, res.Unchanged, now), Readdressed: res.Readdressed}
				if v.Readdressed == nil {
					v.Readdressed = []string{}
				}
				if err := printJSON(cmd.OutOrStdout(), v); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				for _, p := range res.Added {
					fmt.Fprintf(w, "added %s: %s, %s, public key %s\n", p.ID(), addrString(p.IPv4), addrString(p.IPv6), p.PublicKey)
				}
				for _, p := range res.Unchanged {
					fmt.Fprintf(w, "unchanged %s (already imported)\n", p.ID())
				}
				for _, id := range res.Readdressed {
					fmt.Fprintf(w, "note: %s got an address its old config does not have: give it a new config (sluice peer config %s, then paste its private key)\n", id, id)
				}
				fmt.Fprintf(w, "%d added, %d unchanged\n", len(res.Added), len(res.Unchanged))
			}
			if len(res.Added) > 0 {
				notifyDaemon(cmd, cfg)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print {added, unchanged, readdressed} as JSON")
	return cmd
}

// readLimited reads at most limit bytes of path, refusing larger files.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, limit)
	}
	return data, nil
}

func newPeerExportCmd(g *globals) *cobra.Command {
	var asJSON, all bool
	var format, out string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export peers as JSON or as wg-quick server [Peer] sections",
		Long: `Export the registry. --format json (or --json) prints every peer with its
state, as 'peer list --json' does. --format wg prints wg-quick server [Peer]
sections (PublicKey, PresharedKey, AllowedIPs, "# Name = user/device"), which
'peer import' reads back; only active peers unless --all. No private key is
ever exported (neither the gateway's nor a device's); the wg format holds the
preshared keys, so -o writes it with mode 0600.`,
		Example: "  sluice peer export --json > peers.json\n  sluice peer export --format wg -o peers.conf",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				format = "json"
			}
			if format != "json" && format != "wg" {
				return usageError{fmt.Errorf("--format %q: use json or wg", format)}
			}
			st, cfg, err := g.openStore()
			if err != nil {
				return err
			}
			list, err := st.List()
			if err != nil {
				return err
			}
			now := time.Now()
			var data []byte
			if format == "json" {
				var b strings.Builder
				if err := printJSON(&b, peersJSON(cfg, list, now)); err != nil {
					return err
				}
				data = []byte(b.String())
			} else {
				sel := list[:0:0]
				for _, p := range list {
					if all || p.Active(now) {
						sel = append(sel, p)
					}
				}
				data = peers.RenderServerPeers(sel)
			}
			if out != "" && out != "-" {
				if err := writePrivate(out, data); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (mode 0600)\n", out)
				return nil
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "json", "json or wg (wg-quick server [Peer] sections)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "same as --format json")
	cmd.Flags().BoolVar(&all, "all", false, "wg format: include disabled and expired peers")
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE (mode 0600) instead of standard output")
	return cmd
}
