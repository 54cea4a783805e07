package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-vpn/sluice/tlsca"
)

// dnsCertCheckInterval is how often a running gateway checks whether its
// own DoT/DoH certificate needs renewing (tlsca.RenewBefore ahead).
const dnsCertCheckInterval = 12 * time.Hour

// ensureDNSCert creates or renews sluice's own CA and server certificate
// when cfg uses them. It reports whether the server certificate changed.
func (g *Gateway) ensureDNSCert(cfg *Config) (bool, error) {
	if !cfg.OwnDNSCA {
		return false, nil
	}
	enc := cfg.DNS.Encrypted
	_, issued, err := tlsca.Ensure(cfg.Peers.StateDir, enc.ServerName, cfg.Resolvers(), time.Now())
	if err != nil {
		return false, fmt.Errorf("dns tls certificate: %w", err)
	}
	if issued.CA {
		g.log.Warn("created a new DNS CA: give it to devices that use DoT or DoH (sluice ca)",
			"server_name", enc.ServerName, "dir", cfg.Peers.StateDir)
	}
	if issued.Cert {
		g.log.Info("issued dns tls certificate", "server_name", enc.ServerName, "addresses", cfg.Resolvers())
	}
	return issued.Cert, nil
}

// renewDNSCert re-issues the own certificate before it expires and hands it
// to the proxy (new handshakes only; open connections stay).
func (g *Gateway) renewDNSCert(ctx context.Context) error {
	t := time.NewTicker(dnsCertCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			cfg := g.Config()
			changed, err := g.ensureDNSCert(cfg)
			if err != nil {
				g.log.Error("renew dns tls certificate", "err", err)
				continue
			}
			if changed {
				if err := g.proxy.Reload(cfg.DNS); err != nil {
					g.log.Error("load renewed dns tls certificate", "err", err)
				}
			}
		}
	}
}

// doctorEncrypted checks the DoT/DoH certificate's expiry (WARN within
// tlsca.RenewBefore, FAIL once expired) and that DoT answers on each
// resolver address with a certificate that verifies for the server name.
func (g *Gateway) doctorEncrypted(ctx context.Context, r *Report, cfg *Config) {
	enc := cfg.DNS.Encrypted
	if !enc.Enabled() {
		return
	}
	leaf := g.proxy.TLSCertificate()
	check := certCheck(leaf, enc.ServerName, cfg.OwnDNSCA, time.Now())
	r.add(check)
	if cfg.OwnDNSCA {
		if _, ca, err := tlsca.ReadCA(cfg.Peers.StateDir); err == nil && time.Until(ca.NotAfter) < tlsca.RenewBefore {
			r.add(Check{Name: "dns ca", OK: true, Detail: "expires " + ca.NotAfter.UTC().Format(time.DateOnly),
				Action: "a new CA is made at the next reload after expiry: hand it to devices (sluice ca)"})
		}
	}
	if !enc.DoT || leaf == nil {
		return
	}
	roots := x509.NewCertPool()
	if cfg.OwnDNSCA {
		if pemData, _, err := tlsca.ReadCA(cfg.Peers.StateDir); err == nil {
			roots.AppendCertsFromPEM(pemData)
		}
	} else {
		sys, err := x509.SystemCertPool()
		if err == nil {
			roots = sys
		}
	}
	for _, a := range cfg.Resolvers() {
		addr := netip.AddrPortFrom(a, enc.DoTPort).String()
		c := Check{Name: "dot " + addr}
		rtt, err := dotQuery(ctx, addr, enc.ServerName, roots)
		if err != nil {
			c.Detail = err.Error()
			c.Action = "DoT clients (Android Private DNS, Apple profiles) fail here: check the certificate and `sluice status`"
		} else {
			c.OK = true
			c.Detail = fmt.Sprintf("answered in %s, certificate verified for %s", rtt.Round(time.Microsecond), enc.ServerName)
		}
		r.add(c)
	}
}

// dotQuery asks the root NS over DoT at addr, verifying the certificate.
func dotQuery(ctx context.Context, addr, name string, roots *x509.CertPool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, doctorQueryTimeout)
	defer cancel()
	start := time.Now()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: &tls.Config{ServerName: name, RootCAs: roots, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl) //nolint:errcheck // a failing read reports it
	}
	q := new(dns.Msg)
	q.SetQuestion(".", dns.TypeNS)
	wire, err := q.Pack()
	if err != nil {
		return 0, err
	}
	if _, err := conn.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire...)); err != nil {
		return 0, err
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		return 0, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return 0, err
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf); err != nil {
		return 0, err
	}
	if r.Id != q.Id {
		return 0, fmt.Errorf("answer id %d, query id %d", r.Id, q.Id)
	}
	if r.Rcode == dns.RcodeRefused {
		return 0, fmt.Errorf("answered %s", strings.ToUpper(dns.RcodeToString[r.Rcode]))
	}
	return time.Since(start), nil
}

// certCheck judges the certificate the listeners present: FAIL when there
// is none or it expired, WARN (OK with an action) within tlsca.RenewBefore
// of expiry, PASS otherwise.
func certCheck(leaf *x509.Certificate, serverName string, own bool, now time.Time) Check {
	check := Check{Name: "dns tls certificate"}
	if leaf == nil {
		check.Detail = "no certificate loaded"
		check.Action = "check dns.tls and the logs"
		return check
	}
	left := leaf.NotAfter.Sub(now)
	if left <= 0 {
		check.Detail = fmt.Sprintf("%s expired %s", serverName, leaf.NotAfter.UTC().Format(time.DateOnly))
		check.Action = "clients refuse DoT/DoH: renew dns.tls.cert_file (or remove it to use sluice's own CA) and run sluice reload"
		return check
	}
	check.OK = true
	check.Detail = fmt.Sprintf("%s valid until %s (%d days)", serverName, leaf.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24))
	if own {
		check.Detail += ", sluice's own CA"
	}
	if left < tlsca.RenewBefore {
		check.Action = "renew the certificate within the month and run sluice reload"
		if own {
			check.Action = "sluice renews its own certificate at reload: run sluice reload"
		}
	}
	return check
}
