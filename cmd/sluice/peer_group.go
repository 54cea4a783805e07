package main

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/spf13/cobra"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/peers"
)

// checkGroup refuses a group the configuration does not define. "" is the
// default group and always valid.
func checkGroup(cfg *gateway.Config, group string) error {
	if group == "" {
		return nil
	}
	if !cfg.Groups.Enabled() {
		return fmt.Errorf("group %q: no groups are configured (add a groups: section to %s)", group, cfg.Source)
	}
	if _, ok := cfg.Groups.Find(group); !ok {
		names := make([]string, len(cfg.Groups.List))
		for i, g := range cfg.Groups.List {
			names[i] = g.Name
		}
		return fmt.Errorf("group %q is not configured (groups: %v)", group, names)
	}
	return nil
}

// setGroupResult is what `peer set-group --json` prints.
type setGroupResult struct {
	Peer          string   `json:"peer"`
	From          string   `json:"from"`
	To            string   `json:"to"`
	RoutesChanged bool     `json:"routes_changed"` // the client config must be rendered again
	Routes        []string `json:"routes"`
}

func newPeerSetGroupCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "set-group USER[/DEVICE] GROUP",
		Short: "Move a device to another group; applies live",
		Long: `Move a device to GROUP (one of the configuration's groups:). The running
gateway applies it within a second: the DNS zones the device may resolve and
the routes the firewall lets it reach change at once. When the group's routes
differ, the device's client config changed too: render it again with
'sluice peer config'.`,
		Example: "  sluice peer set-group bob/laptop contractors",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, cfg, err := g.store()
			if err != nil {
				return err
			}
			user, dev, err := peers.ParseID(args[0])
			if err != nil {
				return err
			}
			group := args[1]
			if err := checkGroup(cfg, group); err != nil {
				return err
			}
			if group == cfg.Groups.Default {
				group = "" // stored as the default: follows peers.default_group
			}
			before, err := st.SetGroup(user, dev, group)
			if errors.Is(err, peers.ErrNotFound) {
				return fmt.Errorf("peer %s/%s not found (see `sluice peer list`)", user, dev)
			}
			if err != nil {
				return err
			}
			after := before
			after.Group = group
			oldRoutes, newRoutes := cfg.PeerRoutes(before), cfg.PeerRoutes(after)
			res := setGroupResult{Peer: before.ID(), From: cfg.GroupOf(before), To: cfg.GroupOf(after),
				RoutesChanged: !cfg.FullTunnel() && !slices.Equal(oldRoutes, newRoutes), Routes: prefixStrings(newRoutes)}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: group %s -> %s\n", res.Peer, res.From, res.To)
				if res.RoutesChanged {
					fmt.Fprintf(cmd.OutOrStdout(), "the client config changed (routes %v): send it again: sluice peer config %s\n", res.Routes, res.Peer)
				}
			}
			notifyDaemon(cmd, cfg)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the change as JSON")
	return cmd
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
