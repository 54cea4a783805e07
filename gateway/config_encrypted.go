package gateway

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/tlsca"
)

// DefaultDNSServerName is the name DoT and DoH clients verify when
// dns.tls.server_name is not set. The proxy answers it with the resolver
// addresses (Android's Private DNS resolves the name first).
const DefaultDNSServerName = "dns.sluice.internal"

// fileDNSTLS is `dns.tls:` as written.
type fileDNSTLS struct {
	ServerName string `yaml:"server_name" doc:"the name DoT/DoH clients verify (answered by the proxy with the resolver addresses)" kind:"domain name" default:"dns.sluice.internal"`
	CertFile   string `yaml:"cert_file" doc:"PEM certificate chain for server_name; without it sluice keeps its own CA and certificate in the state directory" kind:"file" default:"sluice's own CA"`
	KeyFile    string `yaml:"key_file" doc:"PEM private key of cert_file" kind:"file"`
}

// buildEncrypted checks `dns.encrypted` and `dns.tls` and fills
// c.DNS.Encrypted; without a certificate file the certificate is sluice's
// own (package tlsca) in the state directory.
func buildEncrypted(c *Config, fc *fileConfig, stateDir string, bad func(key, msg, fix string)) {
	d := fc.DNS
	enc := &c.DNS.Encrypted
	for i, s := range d.Encrypted {
		switch strings.ToLower(s) {
		case "dot":
			enc.DoT = true
		case "doh":
			enc.DoH = true
		default:
			bad(fmt.Sprintf("dns.encrypted[%d]", i), fmt.Sprintf("unknown transport %q", s), "use dot, doh or both: [dot, doh]")
		}
	}
	t := d.TLS
	enc.ServerName = strings.TrimSuffix(strings.ToLower(orString(t.ServerName, DefaultDNSServerName)), ".")
	if _, ok := dns.IsDomainName(enc.ServerName); !ok || !strings.Contains(enc.ServerName, ".") {
		bad("dns.tls.server_name", fmt.Sprintf("%q is not a host name", t.ServerName), "use the name clients verify, e.g. dns.corp.example")
	}
	switch {
	case t.CertFile == "" && t.KeyFile == "":
		paths := tlsca.PathsIn(stateDir)
		enc.CertFile, enc.KeyFile = paths.Cert, paths.Key
		c.OwnDNSCA = enc.Enabled()
	case t.CertFile == "" || t.KeyFile == "":
		bad("dns.tls", "cert_file and key_file go together", "set both, or neither to let sluice keep its own CA in "+stateDir)
	default:
		enc.CertFile, enc.KeyFile = t.CertFile, t.KeyFile
		if enc.Enabled() {
			for _, f := range []struct{ key, path string }{{"dns.tls.cert_file", t.CertFile}, {"dns.tls.key_file", t.KeyFile}} {
				if _, err := os.Stat(f.path); err != nil {
					bad(f.key, err.Error(), "point it at a PEM file readable by sluice")
				}
			}
		}
	}
	if !enc.Enabled() && (t != fileDNSTLS{}) {
		bad("dns.tls", "set, but no encrypted transport is on", "add dns.encrypted: [dot, doh], or remove dns.tls")
	}
}

// checkEncryptedEnforce runs after `enforce:` is read: DoT can only be
// redirected to sluice's own DoT listener.
func checkEncryptedEnforce(c *Config, bad func(key, msg, fix string)) {
	if c.Enforce.DoT == firewall.ActionRedirect && !c.DNS.Encrypted.DoT {
		bad("enforce.dot", "redirect needs sluice's DoT listener", "add dot to dns.encrypted, or use reject")
	}
}

// firewallEncrypted is the firewall's view of the encrypted listeners.
func firewallEncrypted(cfg *Config) firewall.EncryptedListeners {
	return firewall.EncryptedListeners{DoT: cfg.DNS.Encrypted.DoT, DoH: cfg.DNS.Encrypted.DoH}
}

// DNSCA returns sluice's own DNS CA certificate (PEM and parsed), creating
// the CA and server certificate in the state directory if they do not exist
// yet. It fails when encrypted DNS is off or uses the operator's
// certificate.
func (c *Config) DNSCA() ([]byte, *x509.Certificate, error) {
	if !c.DNS.Encrypted.Enabled() {
		return nil, nil, errors.New("encrypted dns is off: set dns.encrypted: [dot, doh]")
	}
	if !c.OwnDNSCA {
		return nil, nil, fmt.Errorf("dns.tls.cert_file is set (%s): sluice's own CA is not in use; hand out the CA that issued it", c.DNS.Encrypted.CertFile)
	}
	if _, _, err := tlsca.Ensure(c.Peers.StateDir, c.DNS.Encrypted.ServerName, c.Resolvers(), time.Now()); err != nil {
		return nil, nil, err
	}
	return tlsca.ReadCA(c.Peers.StateDir)
}

// ClientEncryptedDNS describes the encrypted listeners for client configs,
// nil when encrypted DNS is off.
func (c *Config) ClientEncryptedDNS() (*peers.EncryptedDNS, error) {
	enc := c.DNS.Encrypted
	if !enc.Enabled() {
		return nil, nil
	}
	e := &peers.EncryptedDNS{ServerName: enc.ServerName, DoT: enc.DoT, DoH: enc.DoH, DoTPort: enc.DoTPort, DoHPort: enc.DoHPort}
	if c.OwnDNSCA {
		_, ca, err := c.DNSCA()
		if err != nil {
			return nil, err
		}
		e.CACert = ca.Raw
	}
	return e, nil
}
