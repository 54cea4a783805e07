package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-vpn/sluice/gateway"
)

func newPeerTraceCmd(g *globals) *cobra.Command {
	var asJSON bool
	var dur time.Duration
	cmd := &cobra.Command{
		Use:   "trace USER[/DEVICE]",
		Short: "Show a peer's DNS queries live: name, answer, group and the upstream that answered",
		Long: `Stream every DNS query the running gateway answers for a peer — all devices
of USER, or one device — as it happens: the name and type, the rcode, the
zone group, the upstream that answered (or "cache", or the policy that
blocked it) and the time the gateway took. Rate-limited queries show too.

Nothing appears while the device resolves elsewhere: that is the leak to
look for (see also 'sluice doctor --peer'). Ends after --for, or on Ctrl-C.`,
		Example: "  sluice peer trace alice/laptop\n  sluice peer trace alice --for 30s --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if dur > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, dur)
				defer cancel()
			}
			out := cmd.OutOrStdout()
			if !asJSON {
				fmt.Fprintf(cmd.ErrOrStderr(), "tracing the DNS queries of %s (Ctrl-C to stop)\n", args[0])
			}
			enc := json.NewEncoder(out)
			return c.Trace(ctx, args[0], func(r gateway.TraceRecord) error {
				if asJSON {
					return enc.Encode(r)
				}
				return printTraceLine(out, r)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per query")
	cmd.Flags().DurationVar(&dur, "for", 0, "stop after this long (default: until interrupted)")
	return cmd
}

// printTraceLine prints one traced query on one line.
func printTraceLine(w io.Writer, r gateway.TraceRecord) error {
	if r.Egress != nil {
		return printEgressLine(w, r)
	}
	via := r.Group
	switch {
	case r.Blocked != "":
		via = "blocked: " + r.Blocked
	case r.CacheHit:
		via += " (cache)"
	case r.Upstream != "":
		via += " <- " + r.Upstream
	}
	if r.Transport == "dot" || r.Transport == "doh" {
		via += " [" + r.Transport + "]" // encrypted: say so
	}
	peer := r.Peer
	if peer == "" {
		peer = r.Client.Addr().String()
	}
	if r.Gateway != "" {
		peer += "@" + r.Gateway // the fleet gateway that answered
	}
	_, err := fmt.Fprintf(w, "%s  %-16s %-40s %-6s %-9s %-36s %s\n", r.Time.Local().Format("15:04:05.000"), peer, r.Name, r.Type, r.Rcode, via,
		r.Latency.Round(time.Microsecond))
	return err
}

// printEgressLine prints one refused (or audited) flow of a traced peer.
func printEgressLine(w io.Writer, r gateway.TraceRecord) error {
	e := r.Egress
	peer := r.Peer
	if peer == "" {
		peer = r.Client.Addr().String()
	}
	if r.Gateway != "" {
		peer += "@" + r.Gateway // the fleet gateway that answered
	}
	verdict := "refused: not resolved by the gateway"
	if !e.Refused {
		verdict = "allowed (audit): not resolved by the gateway"
	}
	dst := e.Dst
	if e.Port != 0 {
		dst = net.JoinHostPort(e.Dst, strconv.Itoa(int(e.Port)))
	}
	_, err := fmt.Fprintf(w, "%s  %-16s %s %s %s\n", r.Time.Local().Format("15:04:05.000"), peer, verdict, e.Proto, dst)
	return err
}
