package main

import (
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/peers"
)

// installCompletions teaches cobra's generated shell completion (`sluice
// completion bash|zsh|fish`) what sluice's arguments are: peer names for
// every peer command whose argument is USER or USER[/DEVICE] and for
// --peer, the formats for --format, and the log flags' values. It walks the
// tree so that peer commands added later get peer names without a hook of
// their own; a command that sets its own completion keeps it.
func installCompletions(root *cobra.Command, g *globals) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasParent() && c.Parent().Name() == "peer" && c.ValidArgsFunction == nil {
			switch arg := firstArg(c.Use); {
			case strings.HasPrefix(arg, "USER") && strings.Contains(arg, "DEVICE"):
				c.ValidArgsFunction = completePeers(g, true)
			case arg == "USER":
				c.ValidArgsFunction = completePeers(g, false)
			}
		}
		flagCompletion(c, "peer", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return peerNames(g, true), cobra.ShellCompDirectiveNoFileComp
		})
		flagCompletion(c, "format", cobra.FixedCompletions(peers.Formats(), cobra.ShellCompDirectiveNoFileComp))
		flagCompletion(c, "log-level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))
		flagCompletion(c, "log-format", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// firstArg is the first positional argument of a cobra Use line.
func firstArg(use string) string {
	f := strings.Fields(use)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

// flagCompletion registers fn for c's own flag name, unless c has no such
// flag or already completes it.
func flagCompletion(c *cobra.Command, name string, fn cobra.CompletionFunc) {
	if c.LocalNonPersistentFlags().Lookup(name) == nil && c.PersistentFlags().Lookup(name) == nil {
		return
	}
	if _, ok := c.GetFlagCompletionFunc(name); ok {
		return
	}
	if err := c.RegisterFlagCompletionFunc(name, fn); err != nil {
		panic(err) // unreachable: the flag exists and has no completion yet
	}
}

// completePeers completes the first argument with the store's users, and
// with their USER/DEVICE names when devices is set.
func completePeers(g *globals, devices bool) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return peerNames(g, devices), cobra.ShellCompDirectiveNoFileComp
	}
}

// peerNames lists users (and USER/DEVICE names) from the peer store of the
// configuration g names. It never creates anything: without a readable
// store (not set up yet, not root) there is nothing to complete.
func peerNames(g *globals, devices bool) []string {
	cfg, err := g.load()
	if err != nil {
		return nil
	}
	if _, err := os.Stat(cfg.Peers.StateDir); err != nil {
		return nil
	}
	var list []peers.Peer
	if cfg.Fleet.Enabled {
		// A fleet gateway's last applied registry: no etcd round trip on
		// every tab.
		snap, err := peers.ReadStateFile(filepath.Join(cfg.Peers.StateDir, gateway.SnapshotFile))
		if err != nil {
			return nil
		}
		list = snap.Peers
	} else {
		st, err := peers.Open(cfg.Peers.StateDir)
		if err != nil {
			return nil
		}
		if list, err = st.List(); err != nil {
			return nil
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range list {
		if !seen[p.User] {
			seen[p.User] = true
			out = append(out, p.User)
		}
		if devices {
			out = append(out, p.ID())
		}
	}
	sort.Strings(out)
	return out
}
