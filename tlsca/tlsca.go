// Package tlsca owns the certificate authority sluice creates for its
// in-tunnel resolver when the operator brings no certificate: an ECDSA
// P-256 CA, name-constrained to the resolver's server name and addresses,
// and the server certificate it signs for the DoT and DoH listeners. Both
// live in the state directory (keys 0600) and are re-issued when they near
// expiry or no longer name the server.
package tlsca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sluice-vpn/sluice/internal/atomicfile"
)

// File names inside the state directory.
const (
	CAFile     = "dns-ca.pem"
	CAKeyFile  = "dns-ca.key"
	CertFile   = "dns-server.pem"
	KeyFile    = "dns-server.key"
	caValidity = 10 * 365 * 24 * time.Hour
	// certValidity stays under the 398 days Apple platforms accept.
	certValidity = 397 * 24 * time.Hour
	// RenewBefore is how long before expiry a certificate is re-issued
	// (and when `sluice doctor` starts to warn).
	RenewBefore = 30 * 24 * time.Hour
	// backdate covers clients whose clocks run a little behind.
	backdate = time.Hour
)

// Paths are the four files of one state directory.
type Paths struct {
	CA, CAKey, Cert, Key string
}

// PathsIn returns the file paths in dir.
func PathsIn(dir string) Paths {
	return Paths{
		CA:    filepath.Join(dir, CAFile),
		CAKey: filepath.Join(dir, CAKeyFile),
		Cert:  filepath.Join(dir, CertFile),
		Key:   filepath.Join(dir, KeyFile),
	}
}

// Issued says what Ensure had to create.
type Issued struct {
	CA   bool // a new CA: devices must be given it again (`sluice ca`)
	Cert bool
}

// Ensure makes dir hold a CA and a server certificate for name and ips,
// each valid for at least RenewBefore after now, issuing what is missing,
// stale or for another name. The CA is constrained to name and ips, so a
// new name or address set needs a new CA too.
func Ensure(dir, name string, ips []netip.Addr, now time.Time) (Paths, Issued, error) {
	paths := PathsIn(dir)
	var issued Issued
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return paths, issued, fmt.Errorf("create state directory %s: %w", dir, err)
	}
	ips = normalizeIPs(ips)
	ca, caKey, err := loadPair(paths.CA, paths.CAKey)
	if err != nil || !caFits(ca, name, ips, now) {
		if ca, caKey, err = newCA(name, ips, now); err != nil {
			return paths, issued, err
		}
		if err := writePair(paths.CA, paths.CAKey, ca.Raw, caKey); err != nil {
			return paths, issued, err
		}
		issued.CA = true
	}
	leaf, _, err := loadPair(paths.Cert, paths.Key)
	if issued.CA || err != nil || !leafFits(leaf, ca, name, ips, now) {
		der, key, err := newLeaf(ca, caKey, name, ips, now)
		if err != nil {
			return paths, issued, err
		}
		if err := writePair(paths.Cert, paths.Key, der, key); err != nil {
			return paths, issued, err
		}
		issued.Cert = true
	}
	return paths, issued, nil
}

// ReadCA returns the CA certificate of dir in PEM and parsed.
func ReadCA(dir string) ([]byte, *x509.Certificate, error) {
	path := PathsIn(dir).CA
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read dns ca %s: %w", path, err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("read dns ca %s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse dns ca %s: %w", path, err)
	}
	return pem.EncodeToMemory(block), cert, nil
}

func normalizeIPs(ips []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(ips))
	for _, a := range ips {
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

func certIPs(c *x509.Certificate) []netip.Addr {
	var out []netip.Addr
	for _, ip := range c.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a)
		}
	}
	return normalizeIPs(out)
}

func caFits(ca *x509.Certificate, name string, ips []netip.Addr, now time.Time) bool {
	if !ca.IsCA || ca.NotAfter.Sub(now) < RenewBefore || ca.NotBefore.After(now) {
		return false
	}
	if !slices.Equal(ca.PermittedDNSDomains, []string{name}) {
		return false
	}
	var permitted []netip.Addr
	for _, n := range ca.PermittedIPRanges {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			return false
		}
		permitted = append(permitted, a)
	}
	return slices.Equal(normalizeIPs(permitted), ips)
}

func leafFits(leaf, ca *x509.Certificate, name string, ips []netip.Addr, now time.Time) bool {
	if leaf.CheckSignatureFrom(ca) != nil || leaf.NotAfter.Sub(now) < RenewBefore || leaf.NotBefore.After(now) {
		return false
	}
	return slices.Equal(leaf.DNSNames, []string{name}) && slices.Equal(certIPs(leaf), ips)
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate certificate serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func newCA(name string, ips []netip.Addr, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate dns ca key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:                sn,
		Subject:                     pkix.Name{CommonName: "sluice DNS CA " + name, Organization: []string{"sluice " + host}},
		NotBefore:                   now.Add(-backdate),
		NotAfter:                    now.Add(caValidity),
		IsCA:                        true,
		BasicConstraintsValid:       true,
		MaxPathLenZero:              true,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{name},
	}
	for _, a := range ips {
		bits := 32
		if a.Is6() {
			bits = 128
		}
		tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)})
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create dns ca certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse dns ca certificate: %w", err)
	}
	return ca, key, nil
}

func newLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, ips []netip.Addr, now time.Time) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate dns server key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name},
	}
	for _, a := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create dns server certificate: %w", err)
	}
	return der, key, nil
}

// loadPair reads a certificate and its ECDSA key and checks they match.
func loadPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("not an ECDSA key")
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// writePair writes the key (0600) before the certificate (0644), each via
// a temporary file and rename, so a crash leaves no certificate whose key
// is missing.
func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key %s: %w", keyFile, err)
	}
	if err := atomicfile.Write(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("write key %s: %w", keyFile, err)
	}
	if err := atomicfile.Write(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("write certificate %s: %w", certFile, err)
	}
	return nil
}
