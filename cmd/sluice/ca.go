package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/skip2/go-qrcode"
	"github.com/spf13/cobra"
)

func newCACmd(g *globals) *cobra.Command {
	var format, out string
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Print the CA certificate of the in-tunnel resolver's DoT/DoH listeners",
		Long: `Print sluice's own DNS CA certificate, the one devices must trust to use
DoT and DoH on the in-tunnel resolver addresses (dns.encrypted). The CA and
the server certificate are created in peers.state_dir if they do not exist
yet. The CA can only vouch for dns.tls.server_name and the resolver
addresses (X.509 name constraints), so trusting it lets no one impersonate
other sites. With dns.tls.cert_file set, sluice's own CA is not used: hand
out the CA that issued that certificate instead.

Formats:
  pem   the certificate in PEM (default)
  der   the certificate in DER (.cer files; use -o FILE)
  qr    the PEM as a QR code in the terminal`,
		Example: "  sluice ca > sluice-dns-ca.pem\n  sluice ca --format der -o sluice-dns-ca.cer\n  sluice ca --format qr",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			pemData, ca, err := cfg.DNSCA()
			if err != nil {
				return err
			}
			var data []byte
			switch format {
			case "pem":
				data = pemData
			case "der":
				data = ca.Raw
			case "qr":
				q, err := qrcode.New(string(pemData), qrcode.Low)
				if err != nil {
					return fmt.Errorf("render ca as qr: %w", err)
				}
				data = []byte(q.ToSmallString(false))
			default:
				return fmt.Errorf("unknown format %q (use pem, der or qr)", format)
			}
			sum := sha256.Sum256(ca.Raw)
			fmt.Fprintf(cmd.ErrOrStderr(), "# %s, valid until %s\n# SHA-256 fingerprint %s\n",
				ca.Subject.CommonName, ca.NotAfter.UTC().Format(time.DateOnly), fingerprint(sum[:]))
			if out != "" && out != "-" {
				if err := os.WriteFile(out, data, 0o644); err != nil {
					return fmt.Errorf("write %s: %w", out, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", out)
				return nil
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", "pem", "pem, der or qr")
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE instead of standard output")
	return cmd
}

func fingerprint(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}
