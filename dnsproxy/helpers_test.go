package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeServer is a real UDP+TCP DNS server on 127.0.0.1 with a per-test
// handler. It counts the queries it receives, by lower-case name.
type fakeServer struct {
	addr    string // host:port, same port for UDP and TCP
	mu      sync.Mutex
	counts  map[string]int
	ids     []uint16
	total   atomic.Int64
	handler func(w dns.ResponseWriter, r *dns.Msg)
}

// answerA is a handler answering every A query with ip (TTL ttl).
func answerA(ip string, ttl uint32) func(w dns.ResponseWriter, r *dns.Msg) {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		switch q.Qtype {
		case dns.TypeA:
			m.Answer = append(m.Answer, mustRR("%s %d IN A %s", q.Name, ttl, ip))
		case dns.TypePTR:
			m.Answer = append(m.Answer, mustRR("%s %d IN PTR host-%s.", q.Name, ttl, strings.ReplaceAll(ip, ".", "-")))
		}
		w.WriteMsg(m)
	}
}

func mustRR(format string, args ...any) dns.RR {
	rr, err := dns.NewRR(fmt.Sprintf(format, args...))
	if err != nil {
		panic(err)
	}
	return rr
}

func startFake(t *testing.T, h func(w dns.ResponseWriter, r *dns.Msg)) *fakeServer {
	t.Helper()
	f := &fakeServer{counts: map[string]int{}, handler: h}
	mux := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		f.total.Add(1)
		f.mu.Lock()
		if len(r.Question) > 0 {
			f.counts[strings.ToLower(r.Question[0].Name)]++
		}
		f.ids = append(f.ids, r.Id)
		f.mu.Unlock()
		f.handler(w, r)
	})
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for range 10 {
		if pc, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp4", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	f.addr = pc.LocalAddr().String()
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: mux}, {Listener: ln, Handler: mux}} {
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
	}
	return f
}

func (f *fakeServer) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[strings.ToLower(dns.Fqdn(name))]
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// testConfig allows loopback sources, disables health checks and rate limits.
func testConfig(defaultUps ...string) Config {
	cfg := DefaultConfig()
	cfg.Listen = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	cfg.Port = 0
	cfg.AllowedSources = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	cfg.Default = Zone{Upstreams: MustParseUpstreams(defaultUps...)}
	cfg.Health.Disabled = true
	cfg.Limits.PeerQPS = 0
	return cfg
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func startProxy(t *testing.T, cfg Config, opts Options) (*Proxy, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if opts.Registerer == nil {
		opts.Registerer = reg
	}
	p, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p, reg
}

// addr returns the proxy's bound address for network ("udp" or "tcp").
func proxyAddr(t *testing.T, p *Proxy, network string) string {
	t.Helper()
	for _, a := range p.Addrs() {
		if a.Network() == network {
			return a.String()
		}
	}
	t.Fatalf("no %s listener in %v", network, p.Addrs())
	return ""
}

// ask sends one query over network and fails the test on transport errors.
func ask(t *testing.T, p *Proxy, network, name string, qtype uint16, edns int) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(uint16(edns), false)
	}
	return askMsg(t, p, network, m)
}

func askMsg(t *testing.T, p *Proxy, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 3 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, proxyAddr(t, p, network))
	if err != nil {
		t.Fatalf("exchange %s %s: %v", network, m.Question[0].Name, err)
	}
	if r.Id != m.Id {
		t.Fatalf("answer id %d, query id %d", r.Id, m.Id)
	}
	return r
}

func firstA(t *testing.T, r *dns.Msg) string {
	t.Helper()
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	t.Fatalf("no A record in answer:\n%v", r)
	return ""
}

func ede(r *dns.Msg) *dns.EDNS0_EDE {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				return e
			}
		}
	}
	return nil
}

func fmtName(format string, args ...any) string { return fmt.Sprintf(format, args...) }
