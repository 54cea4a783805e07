package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// Answers of the internet's application servers, so that a test can tell
// which server answered.
const (
	dotAnswer  = "203.0.113.99" // every DoT answer
	dohBody    = "doh-server\n"
	httpBody   = "hello from the internet\n"
	echoPrefix = "echo:"
)

// startInternetServers runs, inside the internet namespace: a DoT server
// on dotIP:853 (TCP, TLS, miekg/dns), UDP echo listeners on dotIP:853 (DoQ
// stand-in) and dohIP:443 (HTTP/3 stand-in), an HTTPS server on dohIP:443
// and a plain HTTP server on httpIP:80, each on IPv4 and IPv6. Listeners
// are opened in the namespace; the goroutines serving them stop in cleanup.
// Ports other than 443 served on the DoH addresses.
const (
	altPortTCP = "8443"
	altPortUDP = "8853"
)

func startInternetServers(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	cert, err := selfSigned()
	if err != nil {
		t.Fatalf("create test certificate: %v", err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}

	var (
		tcp = map[string]net.Listener{}
		udp = map[string]net.PacketConn{}
	)
	err = ns.Do(func() error {
		for _, a := range []string{dotIP4, dotIP6} {
			addr := net.JoinHostPort(a, "853")
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			tcp["dot "+addr] = ln
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return err
			}
			udp[addr] = pc
		}
		for _, a := range []string{dohIP4, dohIP6} {
			addr := net.JoinHostPort(a, "443")
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			tcp["https "+addr] = ln
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return err
			}
			udp[addr] = pc
			// Other ports of a known resolver (DoH on 8443, DoQ's draft port
			// 8853): full mode blocks every port of these addresses.
			alt := net.JoinHostPort(a, altPortTCP)
			if ln, err = net.Listen("tcp", alt); err != nil {
				return err
			}
			tcp["http "+alt] = ln
			altU := net.JoinHostPort(a, altPortUDP)
			if pc, err = net.ListenPacket("udp", altU); err != nil {
				return err
			}
			udp[altU] = pc
		}
		for _, a := range []string{httpIP4, httpIP6} {
			addr := net.JoinHostPort(a, "80")
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			tcp["http "+addr] = ln
		}
		return nil
	})
	closeAll := func() {
		for _, ln := range tcp {
			ln.Close()
		}
		for _, pc := range udp {
			pc.Close()
		}
	}
	if err != nil {
		closeAll()
		t.Fatalf("listen in %s: %v", ns.Name, err)
	}

	var wg sync.WaitGroup
	var stops []func()
	for key, ln := range tcp {
		switch key[:3] {
		case "dot":
			// Each server gets its own tls.Config: net/http adds its ALPN
			// protocols to the one it is given, which a DoT client (ALPN
			// "dot") would then fail to negotiate.
			srv := &dns.Server{Listener: tls.NewListener(ln, tlsConf.Clone()), Net: "tcp-tls", Handler: dns.HandlerFunc(dotHandler)}
			wg.Add(1)
			go func() { defer wg.Done(); _ = srv.ActivateAndServe() }() // returns when shut down
			stops = append(stops, func() { _ = srv.Shutdown() })
		case "htt":
			mux := http.NewServeMux()
			body := httpBody
			if key[:5] == "https" {
				body = dohBody
			}
			mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) })
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, TLSConfig: tlsConf.Clone()}
			tlsOn := key[:5] == "https"
			wg.Add(1)
			go func() {
				defer wg.Done()
				if tlsOn {
					_ = srv.ServeTLS(ln, "", "") // returns when closed
				} else {
					_ = srv.Serve(ln) // returns when closed
				}
			}()
			stops = append(stops, func() { _ = srv.Close() })
		}
	}
	for _, pc := range udp {
		wg.Add(1)
		go func() { defer wg.Done(); udpEcho(pc) }()
		stops = append(stops, func() { _ = pc.Close() })
	}
	t.Cleanup(func() {
		for _, s := range stops {
			s()
		}
		closeAll()
		wg.Wait()
	})
}

// dotHandler answers every A question with dotAnswer.
func dotHandler(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A:   net.ParseIP(dotAnswer),
		})
	}
	_ = w.WriteMsg(m) // the client may be gone
}

// udpEcho answers every datagram with echoPrefix + datagram until pc is closed.
func udpEcho(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = pc.WriteTo(append([]byte(echoPrefix), buf[:n]...), from) // best effort, like UDP
	}
}

// selfSigned makes a throwaway ECDSA certificate for the test servers.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "sluice e2e"},
		DNSNames:     []string{"dns.example.net"},
		IPAddresses:  []net.IP{net.ParseIP(dohIP4), net.ParseIP(dohIP6), net.ParseIP(dotIP4), net.ParseIP(dotIP6)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
