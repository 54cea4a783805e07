package dnsproxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Encrypted DNS defaults.
const (
	DefaultDoTPort uint16 = 853
	DefaultDoHPort uint16 = 443
	// DefaultEncryptedIdle closes a DoT or DoH connection with no query for this long.
	DefaultEncryptedIdle = 30 * time.Second
	// DefaultEncryptedMaxConns bounds the open DoT plus DoH connections of one address.
	DefaultEncryptedMaxConns = 4096

	// dohPath is the DoH URI template's path (RFC 8484 section 3's example).
	dohPath = "/dns-query"
	// tlsHandshakeTimeout bounds a client's TLS handshake.
	tlsHandshakeTimeout = 5 * time.Second
	// encryptedWriteTimeout bounds writing one answer.
	encryptedWriteTimeout = 5 * time.Second
	// dotMaxPipeline is how many queries of one DoT connection are answered
	// at once; reading stops (backpressure) until one is done.
	dotMaxPipeline = 128
	// serverNameTTL is the TTL of the synthesized server-name answer.
	serverNameTTL = 300
)

// EncryptedConfig enables DNS over TLS and DNS over HTTPS on every Listen
// address. The certificate is read from CertFile and KeyFile at New and at
// every Reload; existing connections keep theirs, new handshakes get the
// new one.
type EncryptedConfig struct {
	DoT     bool
	DoH     bool
	DoTPort uint16 // 0 = ephemeral (tests); DefaultConfig sets DefaultDoTPort
	DoHPort uint16 // 0 = ephemeral (tests); DefaultConfig sets DefaultDoHPort
	// ServerName is the name clients verify. The proxy answers A and AAAA
	// for it with the Listen addresses, so Android's Private DNS (which
	// resolves the name first) finds the resolver inside the tunnel.
	ServerName  string
	CertFile    string // PEM certificate chain, leaf first
	KeyFile     string // PEM private key
	IdleTimeout time.Duration
	MaxConns    int
}

// Enabled reports whether any encrypted transport is on.
func (c EncryptedConfig) Enabled() bool { return c.DoT || c.DoH }

func (c EncryptedConfig) normalize() (EncryptedConfig, error) {
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultEncryptedIdle
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultEncryptedMaxConns
	}
	c.ServerName = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(c.ServerName), "."))
	if !c.Enabled() {
		return c, nil
	}
	var errs []error
	if c.ServerName == "" {
		errs = append(errs, errors.New("check encrypted dns: no server name"))
	} else if _, ok := dns.IsDomainName(c.ServerName); !ok || !strings.Contains(c.ServerName, ".") {
		errs = append(errs, fmt.Errorf("check encrypted dns: invalid server name %q", c.ServerName))
	}
	if c.CertFile == "" || c.KeyFile == "" {
		errs = append(errs, errors.New("check encrypted dns: certificate and key files are required"))
	}
	return c, errors.Join(errs...)
}

// serverCert is the loaded certificate of the encrypted listeners.
type serverCert struct {
	cert *tls.Certificate // Leaf is set
}

// loadServerCert reads and checks the certificate pair of c.
func loadServerCert(c EncryptedConfig) (*serverCert, error) {
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load dns tls certificate %s: %w", c.CertFile, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse dns tls certificate %s: %w", c.CertFile, err)
		}
	}
	if err := pair.Leaf.VerifyHostname(c.ServerName); err != nil {
		return nil, fmt.Errorf("check dns tls certificate %s: not valid for server name %q: %w", c.CertFile, c.ServerName, err)
	}
	return &serverCert{cert: &pair}, nil
}

// getCertificate is the listeners' tls.Config.GetCertificate: the
// certificate of the state in force, so a Reload changes it for every new
// handshake without touching open connections.
func (p *Proxy) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if sc := p.st.Load().cert; sc != nil {
		return sc.cert, nil
	}
	return nil, errors.New("no dns tls certificate")
}

// TLSCertificate returns the leaf certificate the encrypted listeners
// present, or nil when they are off.
func (p *Proxy) TLSCertificate() *x509.Certificate {
	if sc := p.st.Load().cert; sc != nil {
		return sc.cert.Leaf
	}
	return nil
}

// serverTLSConfig is the TLS configuration of DoT and DoH: TLS 1.2 or later,
// the certificate of the current state, and the ALPN protocols offered.
func (p *Proxy) serverTLSConfig(alpn ...string) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: p.getCertificate,
		NextProtos:     alpn,
	}
}

// serverNameAnswer answers A and AAAA (and NODATA for other types) for the
// encrypted server name with the Listen addresses, or returns nil.
func (st *state) serverNameAnswer(req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	if !st.servesName(q.Name, q.Qclass) {
		return nil
	}
	r := new(dns.Msg)
	r.SetReply(req)
	r.Authoritative = true
	for _, a := range st.cfg.Listen {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: serverNameTTL}
		switch {
		case q.Qtype == dns.TypeA && a.Is4():
			hdr.Rrtype = dns.TypeA
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case q.Qtype == dns.TypeAAAA && a.Is6():
			hdr.Rrtype = dns.TypeAAAA
			r.Answer = append(r.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	return r
}

// certNotAfter is the certificate's expiry for the metrics.
func (p *Proxy) certNotAfter() (float64, bool) {
	if leaf := p.TLSCertificate(); leaf != nil {
		return float64(leaf.NotAfter.Unix()), true
	}
	return 0, false
}

// servesName reports whether serverNameAnswer answers a question for name
// in qclass: the proxy's own DoT/DoH server name.
func (st *state) servesName(name string, qclass uint16) bool {
	enc := st.cfg.Encrypted
	return enc.Enabled() && enc.ServerName != "" && qclass == dns.ClassINET &&
		strings.EqualFold(strings.TrimSuffix(name, "."), enc.ServerName)
}
