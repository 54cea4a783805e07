// Command enclat measures DNS-over-TLS and DNS-over-HTTPS round-trip latency
// one query at a time, each target over one connection kept open for the
// whole run (the reused-connection case). It is dnslat's counterpart for the
// encrypted transports of sluice's benchmark and prints the same JSON lines.
//
// Targets are queried in turn (query i goes to every target before query
// i+1), so that all see the same machine state. Names cycle through a fixed
// set, so after the warm-up every answer is a cache hit.
//
// With -load D it is a DoH load generator instead (Debian's dnsperf 2.10
// loses DoH answers: it counts HTTP 200 responses as not completed): for D
// it keeps -conns HTTP/2 connections with -inflight queries in flight in
// total against the first target and prints sent, completed and QPS.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-vpn/sluice/bench/internal/latency"

	"github.com/miekg/dns"
)

const (
	defaultCount  = 5000
	defaultSet    = 1000
	warmupQueries = 200
	maxErrors     = 1000
)

type target struct {
	name, url string
	ask       func(wire []byte) ([]byte, error)
	rtts      []time.Duration
	errs      int
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "enclat:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		targetsFlag = flag.String("targets", "", "comma-separated name=dot://host:port or name=https://host:port/dns-query")
		count       = flag.Int("n", defaultCount, "measured queries per target")
		setSize     = flag.Int("set-size", defaultSet, "names cycled (qN.bench.)")
		caFile      = flag.String("ca", "", "CA certificate (PEM) the servers' certificates are verified against")
		serverName  = flag.String("server-name", "", "name the certificates are verified for")
		timeout     = flag.Duration("timeout", time.Second, "per-query timeout")
		load        = flag.Duration("load", 0, "DoH load mode: run this long against the first target")
		conns       = flag.Int("conns", 4, "load mode: HTTP/2 connections")
		inflight    = flag.Int("inflight", 200, "load mode: queries in flight over all connections")
	)
	flag.Parse()
	roots := x509.NewCertPool()
	if *caFile != "" {
		pemData, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		roots.AppendCertsFromPEM(pemData)
	}
	tlsConf := &tls.Config{RootCAs: roots, ServerName: *serverName, MinVersion: tls.VersionTLS12}
	var targets []*target
	for _, spec := range strings.Split(*targetsFlag, ",") {
		name, url, ok := strings.Cut(spec, "=")
		if !ok {
			return fmt.Errorf("target %q: want name=url", spec)
		}
		t := &target{name: name, url: url}
		switch {
		case strings.HasPrefix(url, "dot://"):
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: *timeout}, "tcp", strings.TrimPrefix(url, "dot://"), tlsConf)
			if err != nil {
				return fmt.Errorf("dial %s: %w", url, err)
			}
			defer conn.Close()
			t.ask = dotAsk(conn, *timeout)
		case strings.HasPrefix(url, "https://"):
			hc := &http.Client{Timeout: *timeout, Transport: &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true, MaxConnsPerHost: 1}}
			t.ask = dohAsk(hc, url)
		default:
			return fmt.Errorf("target %q: want dot:// or https://", spec)
		}
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return errors.New("no targets")
	}
	if *load > 0 {
		return runLoad(targets[0].url, tlsConf, *load, *conns, *inflight, *setSize, *timeout)
	}
	for i := range warmupQueries + *count {
		name := fmt.Sprintf("q%d.bench.", i%*setSize)
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = uint16(i)
		wire, _ := m.Pack()
		for k := range targets {
			t := targets[(i+k)%len(targets)]
			if t.errs > maxErrors {
				continue
			}
			start := time.Now()
			resp, err := t.ask(wire)
			rtt := time.Since(start)
			if err == nil {
				err = check(resp, m.Id)
			}
			if err != nil {
				t.errs++
				continue
			}
			if i >= warmupQueries {
				t.rtts = append(t.rtts, rtt)
			}
		}
	}
	enc := json.NewEncoder(os.Stdout)
	for _, t := range targets {
		if err := enc.Encode(summarize(t)); err != nil {
			return err
		}
	}
	return nil
}

func dotAsk(c *tls.Conn, timeout time.Duration) func([]byte) ([]byte, error) {
	buf := make([]byte, 65535)
	return func(wire []byte) ([]byte, error) {
		c.SetDeadline(time.Now().Add(timeout)) //nolint:errcheck // a failing read reports it
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire...)); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf[:2]); err != nil {
			return nil, err
		}
		n := int(binary.BigEndian.Uint16(buf))
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func dohAsk(hc *http.Client, url string) func([]byte) ([]byte, error) {
	return func(wire []byte) ([]byte, error) {
		resp, err := hc.Post(url, "application/dns-message", bytes.NewReader(wire))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("http status %d", resp.StatusCode)
		}
		return body, nil
	}
}

func check(wire []byte, id uint16) error {
	r := new(dns.Msg)
	if err := r.Unpack(wire); err != nil {
		return err
	}
	if r.Id != id || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		return fmt.Errorf("answer id %d rcode %d with %d records", r.Id, r.Rcode, len(r.Answer))
	}
	return nil
}

func summarize(t *target) latency.Summary {
	return latency.Summarize(t.name, t.url, t.rtts, t.errs)
}

// loadResult is the JSON line of load mode.
type loadResult struct {
	Sent      int64   `json:"sent"`
	Completed int64   `json:"completed"`
	QPS       float64 `json:"qps"`
	RunTime   float64 `json:"run_time_s"`
}

// runLoad sends DoH POSTs over conns HTTP/2 connections (one transport
// each) from inflight goroutines for d, each waiting for its answer before
// the next query.
func runLoad(url string, tlsConf *tls.Config, d time.Duration, conns, inflight, setSize int, timeout time.Duration) error {
	if !strings.HasPrefix(url, "https://") {
		return fmt.Errorf("load mode is for DoH targets, not %s", url)
	}
	conns = max(conns, 1)
	clients := make([]*http.Client, conns)
	for i := range clients {
		clients[i] = &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true, MaxConnsPerHost: 1}}
	}
	var sent, completed atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for g := range max(inflight, 1) {
		ask := dohAsk(clients[g%conns], url)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; time.Now().Before(deadline); i += inflight {
				m := new(dns.Msg)
				m.SetQuestion(fmt.Sprintf("q%d.bench.", i%setSize), dns.TypeA)
				m.Id = uint16(i)
				wire, _ := m.Pack()
				sent.Add(1)
				if resp, err := ask(wire); err == nil && check(resp, m.Id) == nil {
					completed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	rt := time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(loadResult{Sent: sent.Load(), Completed: completed.Load(),
		QPS: float64(completed.Load()) / rt, RunTime: rt})
}
