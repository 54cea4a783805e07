package tlsca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

var (
	testName = "dns.corp.example"
	testIPs  = []netip.Addr{netip.MustParseAddr("fd20::53"), netip.MustParseAddr("10.20.0.53")}
)

func TestEnsureCreatesAndKeeps(t *testing.T) {
	dir := t.TempDir() + "/state"
	now := time.Now()
	paths, issued, err := Ensure(dir, testName, testIPs, now)
	if err != nil {
		t.Fatal(err)
	}
	if !issued.CA || !issued.Cert {
		t.Errorf("first Ensure issued %+v", issued)
	}
	for _, f := range []string{paths.CAKey, paths.Key} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, fi.Mode().Perm(), err)
		}
	}
	pair, err := tls.LoadX509KeyPair(paths.Cert, paths.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if k, ok := pair.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("server key %T, want ECDSA P-256", pair.PrivateKey)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != testName || len(leaf.IPAddresses) != 2 {
		t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if leaf.NotAfter.Sub(leaf.NotBefore) > 398*24*time.Hour {
		t.Errorf("validity %v exceeds 398 days", leaf.NotAfter.Sub(leaf.NotBefore))
	}
	caPEM, ca, err := ReadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	for _, name := range []string{testName, "10.20.0.53", "fd20::53"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: now}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if !ca.PermittedDNSDomainsCritical || len(ca.PermittedDNSDomains) != 1 {
		t.Errorf("CA name constraints %v", ca.PermittedDNSDomains)
	}

	// Unchanged: nothing is issued again.
	_, issued, err = Ensure(dir, testName, []netip.Addr{testIPs[1], testIPs[0]}, now.Add(time.Hour))
	if err != nil || issued.CA || issued.Cert {
		t.Errorf("second Ensure issued %+v, %v", issued, err)
	}
	// Near expiry: the server certificate is renewed under the same CA.
	_, issued, err = Ensure(dir, testName, testIPs, now.Add(380*24*time.Hour))
	if err != nil || issued.CA || !issued.Cert {
		t.Errorf("Ensure near expiry issued %+v, %v", issued, err)
	}
	// A new name needs a new CA (the old one is constrained to the old name).
	_, issued, err = Ensure(dir, "dns2.corp.example", testIPs, now)
	if err != nil || !issued.CA || !issued.Cert {
		t.Errorf("Ensure for a new name issued %+v, %v", issued, err)
	}
}

// TestCAConstrained: a certificate the CA signs for any other name or
// address does not verify.
func TestCAConstrained(t *testing.T) {
	dir := t.TempDir()
	paths, _, err := Ensure(dir, testName, testIPs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca, caKey, err := loadPair(paths.CA, paths.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	der, _, err := newLeaf(ca, caKey, "www.bank.example", nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	evil, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := evil.Verify(x509.VerifyOptions{Roots: roots, DNSName: "www.bank.example"}); err == nil {
		t.Error("the CA signs for names other than the resolver's")
	}
	evil.IPAddresses = []net.IP{net.ParseIP("192.0.2.1")}
	der, _, err = newLeaf(ca, caKey, testName, []netip.Addr{netip.MustParseAddr("192.0.2.1")}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	evil, _ = x509.ParseCertificate(der)
	if _, err := evil.Verify(x509.VerifyOptions{Roots: roots, DNSName: testName}); err == nil {
		t.Error("the CA signs for addresses other than the resolver's")
	}
}

func TestEnsureRefusesGarbage(t *testing.T) {
	dir := t.TempDir()
	paths := PathsIn(dir)
	os.WriteFile(paths.CA, []byte("junk"), 0o644)
	os.WriteFile(paths.CAKey, []byte("junk"), 0o600)
	_, issued, err := Ensure(dir, testName, testIPs, time.Now())
	if err != nil || !issued.CA {
		t.Errorf("unreadable CA not replaced: %+v %v", issued, err)
	}
	if _, _, err := ReadCA(t.TempDir()); err == nil {
		t.Error("ReadCA of an empty directory")
	}
}
