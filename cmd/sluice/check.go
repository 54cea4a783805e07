package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sluice-vpn/sluice/gateway"
)

const checkLong = `Validate the configuration as 'sluice up' would, without changing anything
on the host: strict keys and types, bad
addresses or CIDRs, resolver addresses outside the interface prefixes, pools
too small, public upstreams in full mode; then every file sluice up opens
(key file, blocklist, CA bundle, query log, DoH list, each entry with
FILE:LINE), and that the directories it creates (state, key, query log)
can be created. Finally the other configurations
on the host (/etc/sluice/*.yaml and every OTHER file given) must not share an
interface, a peer store, a key file or a control socket with this one.

Every problem is printed as FILE:LINE: KEY: what is wrong (what to do), and
warnings (no endpoint, redundant routes, a legacy shared state directory) as
FILE:LINE: KEY: warning: .... Exit status 1 when there is any error.`

func newCheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "check [OTHER.yaml...]",
		Short:   "Validate the configuration file and everything sluice up would open",
		Long:    checkLong + "\n\nKeys:\n" + referenceText(),
		Example: "  sluice check -c /etc/sluice/wg0.yaml\n  sluice check -c wg0.yaml wg1.yaml   # also: wg1.yaml may not share wg0's store",
		RunE: func(cmd *cobra.Command, others []string) error {
			stderr := cmd.ErrOrStderr()
			cfg, err := g.load()
			if err != nil {
				fmt.Fprintln(stderr, err)
				return exitError{1}
			}
			for _, w := range cfg.Warnings {
				fmt.Fprintln(stderr, warningText(w))
			}
			failed := false
			if err := gateway.CheckFiles(cfg); err != nil {
				fmt.Fprintln(stderr, err)
				failed = true
			}
			for _, e := range sharedWith(cfg, g.config, others) {
				fmt.Fprintln(stderr, e)
				failed = true
			}
			if failed {
				return exitError{1}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%s mode, interface %s, %d zones, resolvers %v, state %s)\n",
				cfg.Source, cfg.Mode, cfg.Interface.Name, len(cfg.DNS.Zones), cfg.Resolvers(), cfg.Peers.StateDir)
			return nil
		},
	}
}

func warningText(w *gateway.ConfigError) string {
	c := *w
	c.Msg = "warning: " + c.Msg
	return c.Error()
}

// sharedWith loads the other configurations on the host (the files beside
// the installed one, and those given) and reports every resource cfg would
// share with one of them: two gateways on one store corrupt each other's
// peers, on one interface or socket they cannot both run.
func sharedWith(cfg *gateway.Config, path string, others []string) []error {
	candidates := append([]string{}, others...)
	if matches, err := filepath.Glob(filepath.Join(filepath.Dir(installedConfig), "*.yaml")); err == nil {
		candidates = append(candidates, matches...)
	}
	seen := map[string]bool{}
	if path != "" {
		seen[absPath(path)] = true
	}
	var errs []error
	for _, o := range candidates {
		if seen[absPath(o)] {
			continue
		}
		seen[absPath(o)] = true
		oc, err := gateway.Load(o)
		if err != nil {
			if slicesContains(others, o) {
				errs = append(errs, fmt.Errorf("%s: cannot compare: %w", o, err))
			}
			continue // a broken file elsewhere has its own check
		}
		same := []struct{ key, mine, theirs string }{
			{"interface.name", cfg.Interface.Name, oc.Interface.Name},
			{"peers.state_dir", filepath.Clean(cfg.Peers.StateDir), filepath.Clean(oc.Peers.StateDir)},
			{"interface.private_key_file", filepath.Clean(cfg.Interface.PrivateKeyFile), filepath.Clean(oc.Interface.PrivateKeyFile)},
			{"admin.control_socket", cfg.ControlSocket(), oc.ControlSocket()},
		}
		for _, s := range same {
			if s.mine == s.theirs {
				errs = append(errs, cfg.ErrorAt(s.key, fmt.Sprintf("%s is also used by %s (interface %s)", s.mine, o, oc.Interface.Name),
					"give each configuration its own interface name; leave peers.state_dir, private_key_file and control_socket unset to get per-interface defaults"))
			}
		}
	}
	return errs
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		p = a
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p
}

func slicesContains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// referenceText renders gateway.KeyReference as an aligned table.
func referenceText() string {
	var b strings.Builder
	writeReference(&b)
	return b.String()
}

func writeReference(w io.Writer) {
	for _, k := range gateway.KeyReference() {
		indent := strings.Repeat("  ", strings.Count(k.Path, ".")+1)
		if k.Type == "section" || k.Type == "list of sections" {
			fmt.Fprintf(w, "%s%s: (%s) %s\n", indent, k.Path, k.Type, k.Doc)
			continue
		}
		fmt.Fprintf(w, "%s%s (%s)", indent, k.Path, k.Type)
		if k.Default != "" {
			fmt.Fprintf(w, "  default: %s", k.Default)
		}
		if k.Allowed != "" {
			fmt.Fprintf(w, "  allowed: %s", k.Allowed)
		}
		fmt.Fprintf(w, "\n%s    %s\n", indent, k.Doc)
	}
}

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:         "config",
		Short:       "Explain the configuration file",
		Annotations: map[string]string{noConfig: "1"},
	}
	var asJSON bool
	ref := &cobra.Command{
		Use:   "reference",
		Short: "Document every configuration key: type, default, allowed values",
		Long: `Print every key of the configuration file with its type, default and allowed
values, generated from the types the file is decoded into. Durations are
written with a unit (500ms, 2s, 1h); upstreams as IP, IP:port, [IPv6]:port,
tcp://IP[:port] or tls://IP[:port]#server.name (IPv6 with a port always in
brackets).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return printJSON(cmd.OutOrStdout(), gateway.KeyReference())
			}
			writeReference(cmd.OutOrStdout())
			return nil
		},
	}
	ref.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(ref)
	return cmd
}
