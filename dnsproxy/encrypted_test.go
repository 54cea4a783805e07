package dnsproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const testServerName = "dns.test"

// writeServerCert writes a fresh CA and a server certificate for
// testServerName to files and returns their paths and the CA pool.
func writeServerCert(t *testing.T) (certFile, keyFile string, roots *x509.CertPool, serial string) {
	t.Helper()
	caFile, cert := testCA(t, testServerName)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	return certFile, keyFile, roots, leaf.SerialNumber.String()
}

// encryptedProxy starts a proxy with DoT and DoH on ephemeral ports.
func encryptedProxy(t *testing.T, upstream string, change func(*Config)) (*Proxy, *x509.CertPool) {
	t.Helper()
	certFile, keyFile, roots, _ := writeServerCert(t)
	cfg := testConfig(upstream)
	cfg.Encrypted = EncryptedConfig{DoT: true, DoH: true, ServerName: testServerName, CertFile: certFile, KeyFile: keyFile}
	if change != nil {
		change(&cfg)
	}
	p, _ := startProxy(t, cfg, Options{})
	return p, roots
}

func encAddr(t *testing.T, p *Proxy, tr string) string {
	t.Helper()
	addrs := p.EncryptedAddrs()[tr]
	if len(addrs) == 0 {
		t.Fatalf("no %s listener: %v", tr, p.EncryptedAddrs())
	}
	return addrs[0].String()
}

func dialDoT(t *testing.T, p *Proxy, roots *x509.CertPool) *tls.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 3 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", encAddr(t, p, "dot"), &tls.Config{RootCAs: roots, ServerName: testServerName})
	if err != nil {
		t.Fatalf("dial dot: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func writeDoT(t *testing.T, c net.Conn, m *dns.Msg) {
	t.Helper()
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire...)); err != nil {
		t.Fatalf("write dot query: %v", err)
	}
}

func readDoT(t *testing.T, c net.Conn) *dns.Msg {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		t.Fatalf("read dot answer: %v", err)
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read dot answer: %v", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf); err != nil {
		t.Fatalf("unpack dot answer: %v", err)
	}
	return r
}

func newQuery(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// TestDoTReusesConnection: several queries on one connection, the second
// from the cache, each logged with transport "dot".
func TestDoTReusesConnection(t *testing.T) {
	up := startFake(t, answerA("198.51.100.7", 300))
	p, roots := encryptedProxy(t, up.addr, nil)
	recs, stop := p.Tap([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, 16)
	defer stop()
	c := dialDoT(t, p, roots)
	if v := c.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Errorf("TLS version %x, want 1.2 or later", v)
	}
	for i := range 3 {
		q := newQuery("www.example.", dns.TypeA)
		q.Id = uint16(100 + i)
		writeDoT(t, c, q)
		r := readDoT(t, c)
		if r.Id != q.Id || firstA(t, r) != "198.51.100.7" {
			t.Errorf("query %d: answer %v", i, r)
		}
	}
	if n := up.total.Load(); n != 1 {
		t.Errorf("upstream saw %d queries, want 1 (then cache hits)", n)
	}
	for i := range 3 {
		select {
		case rec := <-recs:
			if rec.Transport != "dot" || rec.Name != "www.example." || rec.CacheHit != (i > 0) {
				t.Errorf("record %d: %+v", i, rec)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("record %d: none", i)
		}
	}
}

// TestDoTPipelining: a query whose upstream stalls does not hold up the
// cache hit sent after it on the same connection (answers out of order).
func TestDoTPipelining(t *testing.T) {
	release := make(chan struct{})
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		if strings.HasPrefix(r.Question[0].Name, "slow.") {
			<-release
		}
		answerA("198.51.100.8", 300)(w, r)
	})
	p, roots := encryptedProxy(t, up.addr, func(c *Config) {
		c.UpstreamTimeout = time.Second
		c.Deadline = 1900 * time.Millisecond
	})
	c := dialDoT(t, p, roots)
	warm := newQuery("fast.example.", dns.TypeA)
	writeDoT(t, c, warm)
	readDoT(t, c)

	slow, fast := newQuery("slow.example.", dns.TypeA), newQuery("fast.example.", dns.TypeA)
	slow.Id, fast.Id = 1, 2
	writeDoT(t, c, slow)
	writeDoT(t, c, fast)
	first := readDoT(t, c)
	close(release)
	second := readDoT(t, c)
	if first.Id != 2 || second.Id != 1 {
		t.Errorf("answer order %d, %d; want 2 (cache hit) before 1 (stalled upstream)", first.Id, second.Id)
	}
	if firstA(t, second) != "198.51.100.8" {
		t.Errorf("stalled answer %v", second)
	}
}

// TestDoTIdleAndSlowClients: an idle connection and one that stops in the
// middle of a message are closed by the server.
func TestDoTIdleAndSlowClients(t *testing.T) {
	up := startFake(t, answerA("198.51.100.9", 300))
	p, roots := encryptedProxy(t, up.addr, func(c *Config) { c.Encrypted.IdleTimeout = 200 * time.Millisecond })
	expectClosed := func(name string, c *tls.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("%s: connection still open (read: %v)", name, err)
		}
	}
	c := dialDoT(t, p, roots)
	writeDoT(t, c, newQuery("a.example.", dns.TypeA))
	readDoT(t, c)
	expectClosed("idle", c)

	c2 := dialDoT(t, p, roots)
	c2.Write([]byte{0}) // half a length prefix, then nothing
	expectClosed("slow", c2)

	// Plain TCP that never starts a handshake is closed as well, and counted.
	raw, err := net.Dial("tcp", encAddr(t, p, "dot"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, raw)
	if n := testutil.ToFloat64(p.enc.handshakeErrors[TransportDoT]); n < 1 {
		t.Errorf("handshake errors %v, want at least 1", n)
	}
}

// TestDoHSlowClient: a client that stops in the middle of its request
// headers is disconnected.
func TestDoHSlowClient(t *testing.T) {
	up := startFake(t, answerA("198.51.100.15", 300))
	p, roots := encryptedProxy(t, up.addr, func(c *Config) { c.Encrypted.IdleTimeout = 200 * time.Millisecond })
	d := &net.Dialer{Timeout: 3 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", encAddr(t, p, "doh"), &tls.Config{RootCAs: roots, ServerName: testServerName, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("POST /dns-query HTTP/1.1\r\nHost: dns.test\r\nContent-Type: application/dns-message\r\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 512))
	var ne net.Error
	if err == nil && n > 0 {
		// net/http may answer 408 before closing; the connection must end after it.
		_, err = io.Copy(io.Discard, c)
		if err == nil {
			return // EOF: closed
		}
	}
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("connection of a stalled client still open after 10s")
	}
}

// TestDoTTLSErrors: TLS 1.1 is refused; a client verifying another name
// fails; a length below a DNS header ends the connection.
func TestDoTTLSErrors(t *testing.T) {
	up := startFake(t, answerA("198.51.100.10", 300))
	p, roots := encryptedProxy(t, up.addr, nil)
	addr := encAddr(t, p, "dot")
	d := &net.Dialer{Timeout: 3 * time.Second}
	if c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: testServerName, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("TLS 1.1 handshake succeeded")
	}
	if c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: "other.test"}); err == nil {
		c.Close()
		t.Error("certificate verified for another name")
	}
	if c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: testServerName}); err == nil {
		c.Close()
		t.Error("certificate verified without the CA")
	}
	c := dialDoT(t, p, roots)
	c.Write([]byte{0, 3, 1, 2, 3})
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Errorf("answered a 3-byte message with %d bytes", n)
	}
}

func dohClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: testServerName},
		ForceAttemptHTTP2: true,
	}}
}

func dohURL(t *testing.T, p *Proxy) string {
	return "https://" + encAddr(t, p, "doh") + dohPath
}

func readDoH(t *testing.T, resp *http.Response) *dns.Msg {
	t.Helper()
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("doh status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != dohContentType {
		t.Errorf("content type %q", ct)
	}
	r := new(dns.Msg)
	if err := r.Unpack(body); err != nil {
		t.Fatalf("unpack doh answer: %v", err)
	}
	return r
}

// TestDoHGetAndPost: RFC 8484 GET and POST over HTTP/2, through policy and
// the cache, logged with transport "doh".
func TestDoHGetAndPost(t *testing.T) {
	up := startFake(t, answerA("198.51.100.11", 300))
	p, roots := encryptedProxy(t, up.addr, nil)
	recs, stop := p.Tap([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, 16)
	defer stop()
	hc := dohClient(roots)
	q := newQuery("www.example.", dns.TypeA)
	q.Id = 0 // RFC 8484 section 4.1
	wire, _ := q.Pack()

	resp, err := hc.Post(dohURL(t, p), dohContentType, bytes.NewReader(wire))
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("protocol %s, want HTTP/2", resp.Proto)
	}
	if cc := resp.Header.Get("Cache-Control"); !strings.HasPrefix(cc, "max-age=") {
		t.Errorf("Cache-Control %q", cc)
	}
	if r := readDoH(t, resp); firstA(t, r) != "198.51.100.11" || r.Id != 0 {
		t.Errorf("POST answer %v", r)
	}
	resp, err = hc.Get(dohURL(t, p) + "?dns=" + base64.RawURLEncoding.EncodeToString(wire))
	if err != nil {
		t.Fatal(err)
	}
	if r := readDoH(t, resp); firstA(t, r) != "198.51.100.11" {
		t.Errorf("GET answer %v", r)
	}
	// Policy applies as over UDP: the Firefox canary is answered NXDOMAIN.
	canary, _ := newQuery("use-application-dns.net.", dns.TypeA).Pack()
	resp, err = hc.Post(dohURL(t, p), dohContentType, bytes.NewReader(canary))
	if err != nil {
		t.Fatal(err)
	}
	if r := readDoH(t, resp); r.Rcode != dns.RcodeNameError {
		t.Errorf("canary over doh: %v", r)
	}
	for i := range 3 {
		select {
		case rec := <-recs:
			if rec.Transport != "doh" {
				t.Errorf("record %d transport %q", i, rec.Transport)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("record %d: none", i)
		}
	}
	if n := up.total.Load(); n != 1 {
		t.Errorf("upstream saw %d queries, want 1", n)
	}
}

// TestDoHBadRequests: every malformed request gets its status and never
// reaches the resolver.
func TestDoHBadRequests(t *testing.T) {
	up := startFake(t, answerA("198.51.100.12", 300))
	p, roots := encryptedProxy(t, up.addr, nil)
	hc := dohClient(roots)
	good, _ := newQuery("www.example.", dns.TypeA).Pack()
	resp := newQuery("www.example.", dns.TypeA)
	resp.Response = true
	respWire, _ := resp.Pack()
	cases := []struct {
		name, method, path, ctype string
		body                      []byte
		want                      int
	}{
		{"wrong content type", "POST", dohPath, "application/json", good, 415},
		{"no content type", "POST", dohPath, "", good, 415},
		{"oversized body", "POST", dohPath, dohContentType, make([]byte, 70000), 413},
		{"short body", "POST", dohPath, dohContentType, good[:5], 400},
		{"response not query", "POST", dohPath, dohContentType, respWire, 400},
		{"missing param", "GET", dohPath, "", nil, 400},
		{"bad base64", "GET", dohPath + "?dns=!!!", "", nil, 400},
		{"put", "PUT", dohPath, dohContentType, good, 405},
		{"wrong path", "POST", "/other", dohContentType, good, 404},
	}
	base := "https://" + encAddr(t, p, "doh")
	for _, c := range cases {
		req, err := http.NewRequest(c.method, base+c.path, bytes.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if c.ctype != "" {
			req.Header.Set("Content-Type", c.ctype)
		}
		r, err := hc.Do(req)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode != c.want {
			t.Errorf("%s: status %d, want %d", c.name, r.StatusCode, c.want)
		}
	}
	if n := up.total.Load(); n != 0 {
		t.Errorf("upstream saw %d queries from bad requests", n)
	}
	if n := testutil.ToFloat64(p.enc.badRequests); n < float64(len(cases)-1) {
		t.Errorf("bad requests counted %v", n)
	}
}

// TestEncryptedACL: a source outside AllowedSources is refused over DoT and
// DoH as over UDP — the encrypted listeners are no open resolver.
func TestEncryptedACL(t *testing.T) {
	up := startFake(t, answerA("198.51.100.13", 300))
	p, roots := encryptedProxy(t, up.addr, func(c *Config) {
		c.AllowedSources = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	})
	c := dialDoT(t, p, roots)
	writeDoT(t, c, newQuery("www.example.", dns.TypeA))
	if r := readDoT(t, c); r.Rcode != dns.RcodeRefused {
		t.Errorf("dot from a foreign source: %v", r)
	}
	wire, _ := newQuery("www.example.", dns.TypeA).Pack()
	resp, err := dohClient(roots).Post(dohURL(t, p), dohContentType, bytes.NewReader(wire))
	if err != nil {
		t.Fatal(err)
	}
	if r := readDoH(t, resp); r.Rcode != dns.RcodeRefused {
		t.Errorf("doh from a foreign source: %v", r)
	}
	if n := up.total.Load(); n != 0 {
		t.Errorf("upstream saw %d queries", n)
	}
}

// TestEncryptedServerNameAndReload: the server name resolves to the
// resolver addresses; a Reload with a new certificate is presented to new
// handshakes while an open connection keeps working.
func TestEncryptedServerNameAndReload(t *testing.T) {
	up := startFake(t, answerA("198.51.100.14", 300))
	certFile, keyFile, roots, serial := writeServerCert(t)
	cfg := testConfig(up.addr)
	cfg.Encrypted = EncryptedConfig{DoT: true, DoH: true, ServerName: testServerName, CertFile: certFile, KeyFile: keyFile}
	p, reg := startProxy(t, cfg, Options{})
	r := ask(t, p, "udp", "DNS.test.", dns.TypeA, 1232)
	if firstA(t, r) != "127.0.0.1" || !r.Authoritative {
		t.Errorf("server name answer %v", r)
	}
	old := dialDoT(t, p, roots)
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber.String(); got != serial {
		t.Fatalf("serial %s, want %s", got, serial)
	}
	dohBefore := encAddr(t, p, "doh")

	certFile2, keyFile2, roots2, serial2 := writeServerCert(t)
	cfg.Encrypted.CertFile, cfg.Encrypted.KeyFile = certFile2, keyFile2
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if encAddr(t, p, "doh") != dohBefore {
		t.Error("reload rebound the doh listener")
	}
	fresh := dialDoT(t, p, roots2)
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber.String(); got != serial2 {
		t.Errorf("after reload: serial %s, want %s", got, serial2)
	}
	writeDoT(t, old, newQuery("still.example.", dns.TypeA))
	if r := readDoT(t, old); firstA(t, r) != "198.51.100.14" {
		t.Errorf("old connection after reload: %v", r)
	}
	if n, err := testutil.GatherAndCount(reg, "sluice_dns_tls_cert_expiry_timestamp_seconds"); err != nil || n != 1 {
		t.Errorf("expiry metric: %d, %v", n, err)
	}
	if v := testutil.ToFloat64(p.enc.conns[TransportDoT]); v < 1 {
		t.Errorf("dot connections gauge %v", v)
	}

	// A certificate for another name is refused and the old one stays.
	cfg.Encrypted.ServerName = "other.test"
	if err := p.Reload(cfg); err == nil {
		t.Error("reload accepted a certificate that does not name the server")
	}
	// Turning DoH off closes its listener.
	cfg.Encrypted.ServerName = testServerName
	cfg.Encrypted.DoH = false
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if a := p.EncryptedAddrs()["doh"]; len(a) != 0 {
		t.Errorf("doh still listening on %v", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", dohBefore); err == nil {
		c.Close()
		t.Error("doh port still accepts connections")
	}
}

func TestEncryptedConfigChecks(t *testing.T) {
	for _, c := range []EncryptedConfig{
		{DoT: true, CertFile: "a", KeyFile: "b"},
		{DoH: true, ServerName: "nodot", CertFile: "a", KeyFile: "b"},
		{DoT: true, ServerName: "dns.test"},
	} {
		if _, err := c.normalize(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if _, err := (EncryptedConfig{}).normalize(); err != nil {
		t.Errorf("off: %v", err)
	}
}

func TestMinTTL(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	m.Answer = []dns.RR{mustRR("a.example. 300 IN CNAME b.example."), mustRR("b.example. 60 IN A 192.0.2.1")}
	m.Compress = true
	wire, _ := m.Pack()
	if ttl, ok := minTTL(wire); !ok || ttl != 60 {
		t.Errorf("minTTL %d %v, want 60", ttl, ok)
	}
	m.Answer = nil
	wire, _ = m.Pack()
	if _, ok := minTTL(wire); ok {
		t.Error("minTTL of an empty answer")
	}
	if _, ok := minTTL(wire[:14]); ok {
		t.Error("minTTL of a truncated message")
	}
}
