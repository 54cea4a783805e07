// Command sluice is the CLI of the sluice WireGuard gateway: it runs the
// daemon (`sluice up`), validates configuration, manages peers and their
// client configs, and asks the running daemon for status, doctor and reload.
// It stays thin: flags and output here, behaviour in the packages.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries an exit code without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "sluice:", err)
		os.Exit(exitCodeOf(err))
	}
}

// installedConfig is the configuration file of an installed gateway, used
// when neither -c nor SLUICE_CONFIG names one. Tests point it elsewhere.
var installedConfig = "/etc/sluice/sluice.yaml"

// noConfig marks commands that read no configuration (no "config:" line).
const noConfig = "sluice/no-config"

// globals are the flags every command shares.
type globals struct {
	config    string
	logLevel  string
	logFormat string
}

// resolveConfig picks the configuration file: -c, else SLUICE_CONFIG, else
// the installed file when it exists, else the embedded defaults (""). When
// the choice was not made with -c it says on stderr, in one line, which
// file is used; standard output (and so --json) stays clean.
func (g *globals) resolveConfig(cmd *cobra.Command) {
	if cmd.Flags().Changed("config") {
		return
	}
	from := "SLUICE_CONFIG"
	g.config = os.Getenv("SLUICE_CONFIG")
	if g.config == "" {
		from = "installed"
		if _, err := os.Stat(installedConfig); err == nil {
			g.config = installedConfig
		}
	}
	for c := cmd; c != nil; c = c.Parent() {
		switch {
		case c.Annotations[noConfig] != "", c.Name() == "help", c.Name() == "completion", strings.HasPrefix(c.Name(), "__complete"):
			return
		}
	}
	switch {
	case g.config == "":
		fmt.Fprintf(cmd.ErrOrStderr(), "config: embedded defaults (%s does not exist; -c FILE to use another)\n", installedConfig)
	default:
		fmt.Fprintf(cmd.ErrOrStderr(), "config: %s (%s)\n", g.config, from)
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "sluice",
		Short: "WireGuard gateway that keeps DNS inside the tunnel",
		Long: `sluice runs a WireGuard interface, an in-tunnel DNS proxy with split-horizon
forwarding, and an nftables table that stops peers from resolving around it
(plain DNS, DoT, DoQ and known DoH). Every client config it writes routes the
in-tunnel resolver addresses, IPv4 and IPv6.

The configuration file is -c FILE, else $SLUICE_CONFIG, else
/etc/sluice/sluice.yaml when it exists; a command that reads it says which
on stderr (unless -c named it). Without any file, sluice runs on embedded
defaults: interface sluice0 (userspace WireGuard), tunnel 10.20.0.1/24 +
fd20::1/64, resolvers 10.20.0.53 + fd20::53, split mode, the host's current
resolvers as the default DNS group, state in /var/lib/sluice/sluice0.
'sluice config reference' documents every key; examples/ has complete files.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			g.resolveConfig(cmd)
		},
	}
	root.PersistentFlags().StringVarP(&g.config, "config", "c", "", "configuration file (default: $SLUICE_CONFIG, else "+installedConfig+" if it exists, else embedded defaults)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(
		newUpCmd(g),
		newCheckCmd(g),
		newPeerCmd(g),
		newStatusCmd(g),
		newDoctorCmd(g),
		newReloadCmd(g),
		newFirewallCmd(g),
		newConfigCmd(),
		newCACmd(g),
		newFleetCmd(g),
		&cobra.Command{
			Use:         "version",
			Short:       "Print the version",
			Args:        cobra.NoArgs,
			Annotations: map[string]string{noConfig: "1"},
			Run:         func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "sluice", version) },
		},
	)
	root.AddCommand(newManCmd())
	installCompletions(root, g)
	return root
}
