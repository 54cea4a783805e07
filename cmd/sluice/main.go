// Command sluice is the CLI of the sluice WireGuard gateway: it runs the
// daemon (`sluice up`), validates configuration, manages peers and their
// client configs, and asks the running daemon for status, doctor and reload.
// It stays thin: flags and output here, behaviour in the packages.
package main

import (
	"errors"
	"fmt"
	"os"

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
		os.Exit(1)
	}
}

// globals are the flags every command shares.
type globals struct {
	config    string
	logLevel  string
	logFormat string
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

Without -c, sluice runs on embedded defaults: interface sluice0 (userspace
WireGuard), tunnel 10.20.0.1/24 + fd20::1/64, resolvers 10.20.0.53 + fd20::53,
split mode, the host's current resolvers as the default DNS group, state in
/var/lib/sluice. See examples/ for complete configuration files.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().StringVarP(&g.config, "config", "c", os.Getenv("SLUICE_CONFIG"), "configuration file (default: embedded defaults; env SLUICE_CONFIG)")
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
		newCACmd(g),
		&cobra.Command{
			Use:   "version",
			Short: "Print the version",
			Args:  cobra.NoArgs,
			Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "sluice", version) },
		},
	)
	return root
}
