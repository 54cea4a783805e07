// Package etcdtest runs a real etcd server (Debian's etcd-server package,
// /usr/bin/etcd, 3.4 or newer) for tests: one member on loopback with a
// data directory in the test's temporary directory, stopped in Cleanup.
package etcdtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/syncbuf"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Binary is the etcd server the tests run.
const Binary = "/usr/bin/etcd"

// Server is one running etcd member.
type Server struct {
	Endpoint string
	// TLS is set by StartTLS: the files a client needs for mTLS.
	TLS      *TLSFiles
	args     []string
	log      *syncbuf.Buffer
	probeTLS *tls.Config

	mu     sync.Mutex // protects cmd and exited
	cmd    *exec.Cmd
	exited chan struct{}
}

// freePort asks the kernel for a free loopback port.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs a single-member etcd on 127.0.0.1 and waits until it answers.
// A missing binary fails the test: `make deps` installs etcd-server.
func Start(t testing.TB) *Server {
	t.Helper()
	return startServer(t, nil)
}

// startServer runs the member; with files, the client URL is https and
// etcd demands a client certificate signed by files.CA.
func startServer(t testing.TB, files *TLSFiles) *Server {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Fatalf("etcd server not installed (%v): run `make deps` (Debian package etcd-server)", err)
	}
	dir := t.TempDir()
	cport, pport := freePort(t), freePort(t)
	scheme := "http"
	if files != nil {
		scheme = "https"
	}
	client := fmt.Sprintf("%s://127.0.0.1:%d", scheme, cport)
	peer := fmt.Sprintf("http://127.0.0.1:%d", pport)
	s := &Server{Endpoint: client, TLS: files, log: &syncbuf.Buffer{}}
	s.args = []string{
		"--name", "t0",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "t0=" + peer, "--initial-cluster-state", "new",
		"--logger", "zap", "--log-level", "warn",
	}
	if files != nil {
		s.args = append(s.args, "--client-cert-auth", "--trusted-ca-file", files.CA,
			"--cert-file", files.ServerCert, "--key-file", files.ServerKey)
		probe, err := files.clientConfig()
		if err != nil {
			t.Fatal(err)
		}
		s.probeTLS = probe
	}
	t.Cleanup(s.Stop)
	s.start(t)
	return s
}

// Stop kills the server (its data stays for Restart); stopping a stopped
// server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts a stopped server again on the same data and ports.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.start(t)
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	cmd := exec.Command(Binary, s.args...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		t.Fatalf("start etcd: %v", err)
	}
	// etcd may use every CPU even when the test process is pinned to one
	// (the bench pins it): the figures are sluice's side, not etcd's.
	// (runtime.NumCPU counts only the CPUs this process may use; the
	// kernel keeps the online ones of a wider mask.)
	var all unix.CPUSet
	for i := range 256 {
		all.Set(i)
	}
	if err := unix.SchedSetaffinity(cmd.Process.Pid, &all); err != nil {
		t.Logf("let etcd use every CPU: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 2 * time.Second, TLS: s.probeTLS, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "probe")
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("etcd exited: %s", s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not answer within 30s: %v\n%s", err, s.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
