package dnsproxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testCA makes a CA and a server certificate for serverName, and writes the
// CA to a PEM file.
func testCA(t *testing.T, serverName string) (caFile string, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sluice test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: serverName},
		DNSNames:     []string{serverName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func startDoT(t *testing.T, cert tls.Certificate, h dns.HandlerFunc) string {
	t.Helper()
	ln, err := tls.Listen("tcp4", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	s := &dns.Server{Listener: ln, Net: "tcp-tls", Handler: h}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		s.Shutdown()
		<-done
	})
	return ln.Addr().(*net.TCPAddr).AddrPort().String()
}

func TestDoTUpstream(t *testing.T) {
	caFile, cert := testCA(t, "dns.test")
	var queries atomic.Int64
	addr := startDoT(t, cert, func(w dns.ResponseWriter, r *dns.Msg) {
		queries.Add(1)
		answerA("203.0.113.11", 300)(w, r)
	})
	cfg := testConfig("tls://" + addr + "#dns.test")
	cfg.TLSCAFile = caFile
	cfg.Zones = []Zone{{Name: "wrong.example", Upstreams: MustParseUpstreams("tls://" + addr + "#wrong.test")}}
	p, _ := startProxy(t, cfg, Options{})
	for i := range 3 {
		r := ask(t, p, "udp", fmtName("dot%d.example.", i), dns.TypeA, 1232)
		if firstA(t, r) != "203.0.113.11" {
			t.Errorf("DoT answer %v", r)
		}
	}
	r := ask(t, p, "udp", "x.wrong.example.", dns.TypeA, 1232)
	if r.Rcode != dns.RcodeServerFailure || ede(r) == nil {
		t.Errorf("wrong servername: %v, want SERVFAIL with EDE", r)
	}
	if queries.Load() != 3 {
		t.Errorf("DoT server answered %d queries, want 3 (none with the wrong servername)", queries.Load())
	}
	// Without the CA file the self-signed chain is not trusted.
	cfg.TLSCAFile = ""
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if r := ask(t, p, "udp", "untrusted.example.", dns.TypeA, 1232); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("untrusted CA: %v", r)
	}
}
