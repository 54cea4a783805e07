package etcdstore

import (
	"crypto/tls"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore/etcdtest"
)

// The fleet.etcd ca_file/cert_file/key_file path: against an etcd that
// demands client certificates, a store opened through LoadTLS with the
// client certificate adds and lists a peer; with the CA alone (no client
// certificate) its requests fail with an error instead of hanging.
func TestMutualTLSToEtcd(t *testing.T) {
	srv := etcdtest.StartTLS(t)
	f := srv.TLS

	cfg, err := LoadTLS(f.CA, f.ClientCert, f.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}, TLS: cfg, RequestTimeout: 3 * time.Second})
	alice, err := s.Add(peers.AddRequest{User: "alice"}, testPool())
	if err != nil {
		t.Fatalf("add over mTLS: %v", err)
	}
	list, err := s.List()
	if err != nil {
		t.Fatalf("list over mTLS: %v", err)
	}
	if len(list) != 1 || list[0].ID() != alice.ID() || list[0].IPv4 != alice.IPv4 || list[0].PublicKey != alice.PublicKey {
		t.Fatalf("list over mTLS = %+v, want only %+v", list, alice)
	}

	caOnly, err := LoadTLS(f.CA, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(caOnly.Certificates) != 0 || caOnly.RootCAs == nil {
		t.Fatalf("LoadTLS(ca only) = %+v, want the CA and no client certificate", caOnly)
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		be, err := Open(Config{Endpoints: []string{srv.Endpoint}, TLS: caOnly, RequestTimeout: 2 * time.Second})
		if err != nil {
			done <- result{err: err}
			return
		}
		defer be.Close()
		list, err := peers.NewStore(be).List()
		done <- result{len(list), err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			t.Fatalf("without a client certificate the registry answered (%d peers), want the connection refused", r.n)
		}
		t.Logf("without a client certificate: %v", r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("a client without a certificate hung instead of failing")
	}

	// The refusal is etcd's, for the missing client certificate: the same
	// CA-only configuration verifies the server, and etcd then rejects the
	// handshake (TLS 1.3 reports it on the first read).
	u, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", u.Host, caOnly.Clone())
	if err == nil {
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = conn.Read(make([]byte, 1))
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("TLS to etcd without a client certificate: %v, want a certificate alert from the server", err)
	}
	t.Logf("handshake without a client certificate: %v", err)
}
