package gateway

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
)

// These fakes stand in for the device, proxy, firewall and host, so the
// lifecycle runs without root. Each records what a real component would
// refuse or corrupt: overlapping reconfigurations and use after Close.

// violations collects lifecycle violations seen by the fakes.
type violations struct {
	mu   sync.Mutex
	list []string
}

func (v *violations) add(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.list = append(v.list, fmt.Sprintf(format, args...))
}

func (v *violations) get() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.list...)
}

// exclusive detects two calls of a reconfiguration at once.
type exclusive struct {
	in atomic.Int32
}

func (e *exclusive) enter(v *violations, what string) func() {
	if e.in.Add(1) > 1 {
		v.add("%s while another reconfiguration runs", what)
	}
	// Give an overlapping caller the chance to show up.
	time.Sleep(200 * time.Microsecond)
	return func() { e.in.Add(-1) }
}

type fakeTable struct {
	v         *violations
	reconf    *exclusive // shared with the proxy: a reload touches both
	entered   chan struct{}
	gate      chan struct{} // when set, the first Apply waits for it to close
	mu        sync.Mutex
	applies   int
	closed    bool
	missing   error // what Present returns
	appliedAt time.Time
}

func (f *fakeTable) Apply(spec firewall.Spec) error {
	defer f.reconf.enter(f.v, "firewall Apply")()
	f.mu.Lock()
	first := f.applies == 0
	f.applies++
	if f.closed {
		f.v.add("firewall Apply after Close (the table comes back after stop)")
	}
	f.appliedAt = time.Now()
	f.mu.Unlock()
	if first && f.gate != nil {
		close(f.entered)
		<-f.gate
	}
	return nil
}

func (f *fakeTable) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (f *fakeTable) Present() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		f.v.add("firewall Present after Close")
		return firewall.ErrClosed
	}
	return f.missing
}

func (f *fakeTable) Counters() (map[firewall.Reason]firewall.Counter, error) {
	if err := f.Present(); err != nil {
		return nil, err
	}
	return map[firewall.Reason]firewall.Counter{firewall.ReasonDNSAccepted: {Packets: 3}}, nil
}

func (f *fakeTable) PeerCounters(...netip.Addr) (map[firewall.Reason]firewall.Counter, error) {
	return f.Counters()
}

func (f *fakeTable) Render() (string, error) {
	if err := f.Present(); err != nil {
		return "", err
	}
	return "table inet fake {\n}\n", nil
}

func (f *fakeTable) AppliedAt() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.appliedAt
}

func (f *fakeTable) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// The fake learns nothing: every answer is already covered.
func (f *fakeTable) Covered(_, _ netip.Addr, _ []netip.Addr, _ time.Duration) bool { return true }

func (f *fakeTable) Learn(context.Context, netip.Addr, netip.Addr, []netip.Addr, time.Duration) error {
	return nil
}

func (f *fakeTable) LearnedPairs() int { return 0 }

func (f *fakeTable) SetGroupPeers([]firewall.GroupRule) error { return nil }

func (f *fakeTable) EgressEvents(ctx context.Context, _ func(firewall.EgressEvent)) error {
	<-ctx.Done()
	return nil
}

func (f *fakeTable) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applies
}

type fakeProxy struct {
	v       *violations
	reconf  *exclusive
	mu      sync.Mutex
	started bool
	closed  bool
	reloads int
	ups     []dnsproxy.UpstreamStats
	dead    map[string]bool // upstream addresses whose checks fail
	probes  int
}

func (p *fakeProxy) TLSCertificate() *x509.Certificate { return nil }

func (p *fakeProxy) Start(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.started = true
	return nil
}

func (p *fakeProxy) Reload(dnsproxy.Config) error {
	defer p.reconf.enter(p.v, "proxy Reload")()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.v.add("proxy Reload after Close")
	}
	p.reloads++
	return nil
}

func (p *fakeProxy) Stats() dnsproxy.Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.v.add("proxy Stats after Close")
	}
	return dnsproxy.Stats{Upstreams: append([]dnsproxy.UpstreamStats(nil), p.ups...)}
}

func (p *fakeProxy) Tap([]netip.Addr, int) (<-chan dnsproxy.QueryRecord, func()) {
	return make(chan dnsproxy.QueryRecord), func() {}
}

// CheckUpstreams fails the dead upstreams once, ejecting them at the
// first failure, and re-admits the others.
func (p *fakeProxy) CheckUpstreams(context.Context) []dnsproxy.UpstreamCheck {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []dnsproxy.UpstreamCheck
	for i, u := range p.ups {
		c := dnsproxy.UpstreamCheck{Query: "NS .", RTT: time.Millisecond}
		if p.dead[u.Addr] {
			u.Failures++
			u.Healthy = false
			c.Error = "timeout"
		} else {
			u.Failures = 0
			u.Healthy = true
			c.Rcode = "NOERROR"
		}
		p.ups[i] = u
		c.UpstreamStats = u
		out = append(out, c)
	}
	return out
}

func (p *fakeProxy) Probe(_ context.Context, _ netip.AddrPort, q *dns.Msg) (*dns.Msg, time.Duration, error) {
	p.mu.Lock()
	p.probes++
	p.mu.Unlock()
	r := new(dns.Msg)
	r.SetRcode(q, dns.RcodeNameError)
	return r, time.Millisecond, nil
}

func (p *fakeProxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}

func (p *fakeProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reloads
}

type fakeDevice struct {
	v       *violations
	name    string
	key     wgtypes.Key
	backend wgdev.Backend // "" = userspace
	mu      sync.Mutex
	closed  bool
	peers   []wgdev.PeerConfig
}

func (d *fakeDevice) Name() string { return d.name }
func (d *fakeDevice) Backend() wgdev.Backend {
	if d.backend == "" {
		return wgdev.BackendUserspace
	}
	return d.backend
}
func (d *fakeDevice) PublicKey() wgtypes.Key { return d.key.PublicKey() }

func (d *fakeDevice) SyncPeers(peers []wgdev.PeerConfig) (int, int, int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		d.v.add("device SyncPeers after Close")
		return 0, 0, 0, errors.New("closed")
	}
	added := max(len(peers)-len(d.peers), 0)
	d.peers = peers
	return added, 0, 0, nil
}

func (d *fakeDevice) Stats() ([]wgtypes.Peer, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		d.v.add("device Stats after Close")
	}
	return nil, nil
}

func (d *fakeDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

type fakeHost struct{}

func (fakeHost) enableForwarding() ([]string, error) { return nil, nil }
func (fakeHost) forwardingOff() []string             { return nil }
func (fakeHost) link(string) (linkState, error)      { return linkState{Up: true, MTU: 1420}, nil }
func (fakeHost) route(netip.Addr) (routeInfo, error) {
	return routeInfo{Interface: "corp0"}, nil
}

// fakes is one set of fake components.
type fakes struct {
	v     *violations
	fw    *fakeTable
	proxy *fakeProxy
	dev   *fakeDevice

	proxyOpts dnsproxy.Options // what the resolver was made with
}

func newFakes() *fakes {
	v := &violations{}
	reconf := &exclusive{}
	return &fakes{
		v:  v,
		fw: &fakeTable{v: v, reconf: reconf, entered: make(chan struct{})},
		proxy: &fakeProxy{v: v, reconf: reconf, ups: []dnsproxy.UpstreamStats{
			{Group: "corp.example", Addr: "10.30.0.53:53", Healthy: true},
			{Group: "corp.example", Addr: "10.30.0.54:53", Healthy: true},
			{Group: "default", Addr: "198.51.100.53:53", Healthy: true},
		}},
		dev: &fakeDevice{v: v},
	}
}

func (f *fakes) components() components {
	return components{
		firewall: func(firewall.Options) (table, error) { return f.fw, nil },
		device: func(_ context.Context, c wgdev.Config, _ wgdev.Options) (device, error) {
			f.dev.name, f.dev.key = c.Name, c.PrivateKey
			return f.dev, nil
		},
		resolver: func(_ dnsproxy.Config, o dnsproxy.Options) (resolver, error) {
			f.proxyOpts = o
			return f.proxy, nil
		},
		host: fakeHost{},
	}
}
