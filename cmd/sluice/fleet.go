package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore"
)

// importChunk is how many peers one import transaction writes: each peer
// is four etcd operations, under etcd's default --max-txn-ops of 128.
const importChunk = 25

// importReleasedChunk is how many quarantine entries (one operation each)
// one import transaction writes.
const importReleasedChunk = 100

func newFleetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Gateways sharing one peer registry in etcd",
		Long: `A fleet is several sluice gateways whose configs have the same fleet.etcd
section: they share one peer registry in etcd, so a peer added on any of them
exists on all of them, with addresses unique fleet-wide. Each gateway
registers itself (name, endpoint, public key) and keeps a local snapshot of
the registry to keep serving when etcd is unreachable.`,
	}
	cmd.AddCommand(newFleetStatusCmd(g), newFleetImportCmd(g), newFleetExportCmd(g))
	return cmd
}

func newFleetStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the fleet's gateways, which are alive, and their handshaking peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, be, err := g.openFleet()
			if err != nil {
				return err
			}
			defer be.Close()
			ms, err := be.Members(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				type row struct {
					etcdstore.Member
					Alive bool `json:"alive"`
				}
				out := make([]row, len(ms))
				for i, m := range ms {
					out[i] = row{m, m.Alive}
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			return printMembers(cmd.OutOrStdout(), be.Where(), ms, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printMembers(w io.Writer, where string, ms []etcdstore.Member, now time.Time) error {
	fmt.Fprintf(w, "registry: %s\n", where)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY\tSTATE\tENDPOINT\tPEERS\tHANDSHAKING\tLAST SEEN\tVERSION\tPUBLIC KEY")
	for _, m := range ms {
		state := "dead"
		if m.Alive {
			state = "alive"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s ago\t%s\t%s\n", m.Name, state, orDash(m.Endpoint), m.Peers, m.Handshaking,
			now.Sub(m.LastSeen).Round(time.Second), orDash(m.Version), m.PublicKey)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// openFleet loads the configuration and opens its fleet registry; the
// caller closes it.
func (g *globals) openFleet() (*gateway.Config, *etcdstore.Backend, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, nil, err
	}
	be, err := gateway.OpenFleet(cfg)
	if err != nil {
		return nil, nil, err
	}
	return cfg, be, nil
}

// renderForGateway renders p for gw (another gateway of the fleet: its
// registered endpoint and public key), or for this one when gw is "" or
// this gateway's own name.
func renderForGateway(cmd *cobra.Command, cfg *gateway.Config, p peers.Peer, format, endpoint, platform, gw string) ([]byte, error) {
	if gw == "" || gw == cfg.Fleet.Name {
		return renderFor(cmd, cfg, p, format, endpoint, platform)
	}
	be, err := gateway.OpenFleet(cfg)
	if err != nil {
		return nil, fmt.Errorf("--gateway %s: %w", gw, err)
	}
	defer be.Close()
	m, err := be.Member(cmd.Context(), gw)
	if err != nil {
		return nil, err
	}
	key, err := wgtypes.ParseKey(m.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("gateway %s registered no valid public key: %w", gw, err)
	}
	if endpoint == "" {
		endpoint = m.Endpoint
	}
	if endpoint == "" {
		return nil, fmt.Errorf("gateway %s registered no endpoint (its interface.endpoint is not set): give --endpoint", gw)
	}
	if !m.Alive {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: gateway %s is not alive now (last seen %s)\n", gw, m.LastSeen.Format(time.RFC3339))
	}
	return renderWith(cfg, p, format, endpoint, platform, key)
}

func newFleetImportCmd(g *globals) *cobra.Command {
	var from string
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Copy this host's local peer store into the fleet's registry",
		Long: `Copy the peers of a local store (peers.json in peers.state_dir, or --from FILE)
into the fleet's etcd registry, keeping their names, keys and addresses so
that existing client configs keep working. Peers already in the registry
unchanged are skipped, so import can be run again. A peer that conflicts
(same name with another key or address, a key or address held by another
peer) stops the import before anything is written, with the whole list.`,
		Example: "  sluice fleet import\n  sluice fleet import --from /var/lib/sluice/wg0/peers.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, be, err := g.openFleet()
			if err != nil {
				return err
			}
			defer be.Close()
			if from == "" {
				from = cfg.Peers.StateDir + "/" + peers.StoreFile
			}
			local, err := peers.ReadStateFile(from)
			if err != nil {
				return fmt.Errorf("read local store: %w", err)
			}
			added, same, err := fleetImport(be, local, cfg.Pool())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %d peers into %s (%d already there)\n", added, be.Where(), same)
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the local store to import (default: peers.json in peers.state_dir)")
	return cmd
}

// fleetImport copies local's peers into the registry: conflicts are all
// listed and nothing is written; otherwise the missing peers are written in
// transactions of importChunk (each re-checked against the registry as it
// is then), and the quarantine entries with the last one.
func fleetImport(be peers.Backend, local peers.State, pool peers.Pool) (added, same int, err error) {
	cur, err := be.Load()
	if err != nil {
		return 0, 0, err
	}
	todo, same, conflicts := importPlan(cur, local.Peers)
	for _, p := range local.Peers {
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if a.IsValid() && !pool.Contains(a) {
				conflicts = append(conflicts, fmt.Sprintf("%s: address %s is outside this fleet's tunnel prefixes (interface.addresses) or reserved", p.ID(), a))
			}
		}
	}
	if len(conflicts) > 0 {
		return 0, 0, fmt.Errorf("import refused, nothing written: %d conflicts with the registry:\n  %s", len(conflicts), strings.Join(conflicts, "\n  "))
	}
	for i := 0; i < len(todo); i += importChunk {
		chunk := todo[i:min(i+importChunk, len(todo))]
		err := be.Update(func(st *peers.State) error {
			add, _, conflicts := importPlan(*st, chunk)
			if len(conflicts) > 0 {
				return fmt.Errorf("import stopped: the registry changed meanwhile:\n  %s", strings.Join(conflicts, "\n  "))
			}
			st.Peers = append(st.Peers, add...)
			if reason := peers.CheckState(*st); reason != "" {
				return fmt.Errorf("import: %s", reason)
			}
			return nil
		})
		if err != nil {
			return added, same, err
		}
		added += len(chunk)
	}
	// The quarantine goes along (addresses of removed peers stay unused
	// fleet-wide), a transaction's worth at a time.
	for i := 0; i < len(local.Released); i += importReleasedChunk {
		chunk := local.Released[i:min(i+importReleasedChunk, len(local.Released))]
		err := be.Update(func(st *peers.State) error {
			held := map[netip.Addr]bool{}
			for _, p := range st.Peers {
				held[p.IPv4], held[p.IPv6] = true, true
			}
			for _, r := range st.Released {
				held[r.Addr] = true
			}
			for _, r := range chunk {
				if !held[r.Addr] {
					st.Released = append(st.Released, r)
				}
			}
			return nil
		})
		if err != nil {
			return added, same, fmt.Errorf("import the quarantine: %w", err)
		}
	}
	return added, same, nil
}

// importPlan splits in into the peers to add and those already present,
// and lists every conflict with cur.
func importPlan(cur peers.State, in []peers.Peer) (add []peers.Peer, same int, conflicts []string) {
	byID := map[string]peers.Peer{}
	byKey := map[wgtypes.Key]string{}
	byAddr := map[netip.Addr]string{}
	for _, p := range cur.Peers {
		byID[p.ID()] = p
		byKey[p.PublicKey] = p.ID()
		byAddr[p.IPv4], byAddr[p.IPv6] = p.ID(), p.ID()
	}
	delete(byAddr, netip.Addr{})
	for _, p := range in {
		if q, ok := byID[p.ID()]; ok {
			if q.PublicKey == p.PublicKey && q.IPv4 == p.IPv4 && q.IPv6 == p.IPv6 {
				same++
			} else {
				conflicts = append(conflicts, fmt.Sprintf("%s: in the registry with another key or address (%s %s there, %s %s here)", p.ID(), q.IPv4, q.IPv6, p.IPv4, p.IPv6))
			}
			continue
		}
		bad := false
		if other, ok := byKey[p.PublicKey]; ok {
			conflicts = append(conflicts, fmt.Sprintf("%s: its public key is %s's in the registry", p.ID(), other))
			bad = true
		}
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if other, ok := byAddr[a]; ok && a.IsValid() {
				conflicts = append(conflicts, fmt.Sprintf("%s: address %s is %s's in the registry", p.ID(), a, other))
				bad = true
			}
		}
		if !bad {
			add = append(add, p)
		}
	}
	slices.Sort(conflicts)
	return add, same, conflicts
}

func newFleetExportCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the fleet's registry as a local peer store (peers.json)",
		Long: `Write every peer of the fleet's registry in the local store format
(peers.json, with private keys: written 0600). Placed in a gateway's
peers.state_dir with the fleet section removed, it runs that gateway alone
again; it is also a backup of the registry.`,
		Example: "  sluice fleet export -o /var/backups/sluice-peers.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, be, err := g.openFleet()
			if err != nil {
				return err
			}
			defer be.Close()
			st, err := be.Load()
			if err != nil {
				return err
			}
			data, err := peers.EncodeState(st)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			if err := peers.WriteFileAtomic(out, data); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %d peers to %s (mode 0600: it holds private keys)\n", len(st.Peers), out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE (mode 0600) instead of standard output")
	return cmd
}

// printFleetStatus prints status's fleet block; nothing without a fleet.
func printFleetStatus(w io.Writer, f *gateway.FleetHealth) {
	if f == nil {
		return
	}
	state := fmt.Sprintf("online at revision %d", f.Revision)
	if !f.Online {
		state = "UNREACHABLE since " + f.Since.Format(time.RFC3339) + ": serving the last known peers, changes refused"
		if f.FromSnapshot {
			state += " (started from the local snapshot)"
		}
	}
	fmt.Fprintf(w, "  fleet: gateway %s, registry %s: %s, %d peers\n", f.Name, f.Store, state, f.Peers)
}
