package dnsproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// localGroup labels answers the proxy gives itself (policy, ACL, limits, errors).
	localGroup = "local"
	// policyTTL is the TTL of synthesized policy answers and their SOA.
	policyTTL = 60
	// rfc8482TTL is the TTL of the minimal HINFO answer to ANY.
	rfc8482TTL = 3600
	// maxSlowPerInflight scales the cap on concurrently handled cache misses.
	maxSlowPerInflight = 2
	defaultMaxSlow     = 16384
)

// Options are the proxy's injected dependencies.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // may be nil: metrics are then kept but not exported
	Identities Identities            // who a tunnel address belongs to; may be nil
	Observer   AnswerObserver        // told every answered A/AAAA before it leaves; may be nil
	Now        func() time.Time      // nil = time.Now
	UDPWait    UDPWait               // where the Linux UDP path waits for datagrams; zero = UDPWaitKernel
}

// UDPWait says where the Linux UDP path's goroutines (one per listening
// socket, and the carrier poller) wait for datagrams.
type UDPWait int

const (
	// UDPWaitKernel: each sleeps in a blocking system call on a thread of
	// its own, as a C resolver's receiver threads do, and GOMAXPROCS is
	// raised by those threads while they run (procs.go). The lowest
	// latency per query when the proxy has the process's cores to itself
	// (a standalone proxy, or a gateway on in-kernel WireGuard): at one
	// query at a time a miss costs two system calls and a trip through
	// Go's scheduler less than with UDPWaitPoller.
	UDPWaitKernel UDPWait = iota
	// UDPWaitPoller: they wait in Go's poller, and GOMAXPROCS is left
	// alone. For a process whose cores go mostly to other goroutines, such
	// as a gateway running the embedded WireGuard device: the extra Ps of
	// UDPWaitKernel let those goroutines spread over more threads than
	// there are cores, and the tunnel lost about a fifth of its throughput
	// on one core that way (README, Performance).
	UDPWaitPoller
)

// state is everything Reload swaps at once. It is immutable once published.
type state struct {
	cfg     Config
	gen     uint64
	acl     []netip.Prefix
	policy  *policy
	router  *router
	groups  []*group
	tlsConf *tls.Config
	grp     *groupState // peer groups; nil when none are configured
	cert    *serverCert // DoT and DoH; nil when they are off
}

func (st *state) allowed(a netip.Addr) bool {
	for _, p := range st.acl {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Proxy is the in-tunnel resolver. Create it with New, bind with Start, stop
// with Close; Reload may be called at any time in between.
type Proxy struct {
	log    *slog.Logger
	now    func() time.Time
	idents Identities     // may be nil
	obs    AnswerObserver // may be nil

	st       atomic.Pointer[state]
	reloadMu sync.Mutex // serializes Reload and Start/Close around listeners

	cache    *cache
	lim      *limiter
	inflight inflight
	slow     atomic.Int64 // cache misses being handled
	// slowJobs hands misses to idle slow-path workers (see dispatchSlow);
	// slowWorkers counts the workers alive.
	slowJobs    chan slowJob
	slowWorkers atomic.Int64
	met         *metrics
	enc         *encMetrics
	// localCounters are queries_total for answers given without a group.
	localCounters *groupCounters
	qlog          *queryLog
	tapsMu        sync.Mutex             // serializes writers of tapList
	tapList       atomic.Pointer[[]*tap] // nil when nobody taps: one load per query
	ids           idSource
	probesMu      sync.Mutex                              // serializes writers of probeSrcs
	probeSrcs     atomic.Pointer[map[netip.AddrPort]bool] // sources of Probe in flight; nil when none

	rateLimited atomic.Uint64
	blockedN    atomic.Uint64

	flightMu sync.Mutex // protects flights
	flights  map[string]*flight

	ctx    context.Context // ends at Close; parent of every upstream query
	cancel context.CancelFunc

	// Guarded by reloadMu.
	zoneIdx      map[string]uint32 // stable zone indexes (groups.go)
	listeners    []*listenerSet
	encListeners []*encListener // DoT and DoH
	started      bool
	closed       bool

	wg sync.WaitGroup // health loop, query log, slow-path goroutines
	// carrierWG counts the carrier poller (carrier_poll_linux.go),
	// which Close ends before the workers.
	carrierWG sync.WaitGroup
	cpoll     carrierPoller
	wait      UDPWait
}

// New validates cfg and builds a proxy; nothing is bound until Start.
func New(cfg Config, opts Options) (*Proxy, error) {
	p := &Proxy{
		log:      opts.Logger,
		now:      opts.Now,
		idents:   opts.Identities,
		obs:      opts.Observer,
		flights:  map[string]*flight{},
		slowJobs: make(chan slowJob),
		wait:     opts.UDPWait,
	}
	p.cpoll.init(p)
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.now == nil {
		p.now = time.Now
	}
	p.cache = newCache(cfg.Cache.Size)
	met, err := newMetrics(opts.Registerer, p.cache.len)
	if err != nil {
		return nil, err
	}
	p.met = met
	p.localCounters = met.group(localGroup)
	if p.enc, err = newEncMetrics(opts.Registerer, p.certNotAfter); err != nil {
		met.unregister()
		return nil, err
	}
	st, err := p.buildState(cfg, nil)
	if err != nil {
		met.unregister()
		p.enc.unregister()
		return nil, err
	}
	p.lim = newLimiter(st.cfg.Limits.PeerQPS, st.cfg.Limits.PeerBurst)
	p.inflight.max.Store(int64(st.cfg.Limits.MaxInflight))
	p.cache.resize(st.cfg.Cache.Size)
	if p.qlog, err = openQueryLog(st.cfg.QueryLog, p.peerName, met.querylogDropped); err != nil {
		met.unregister()
		p.enc.unregister()
		return nil, err
	}
	p.st.Store(st)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// buildState turns cfg into a state, reusing prev's upstreams (and so their
// health and pooled connections) where group and address are unchanged.
func (p *Proxy) buildState(cfg Config, prev *state) (*state, error) {
	cfg.Listen = slices.Clone(cfg.Listen)
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, fmt.Errorf("check dns proxy config: %w", err)
	}
	st := &state{cfg: cfg, acl: slices.Clone(cfg.AllowedSources)}
	for i, pfx := range st.acl {
		st.acl[i] = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-unmapBits(pfx)).Masked()
	}
	if prev != nil {
		st.gen = prev.gen + 1
	}
	if st.policy, err = newPolicy(cfg.Policy); err != nil {
		return nil, err
	}
	if cfg.Encrypted.Enabled() {
		if st.cert, err = loadServerCert(cfg.Encrypted); err != nil {
			return nil, err
		}
	}
	if prev != nil && prev.tlsConf != nil && prev.cfg.TLSCAFile == cfg.TLSCAFile {
		st.tlsConf = prev.tlsConf
	} else if hasTLSUpstream(cfg) || cfg.TLSCAFile != "" {
		if st.tlsConf, err = loadTLSConfig(cfg.TLSCAFile); err != nil {
			return nil, err
		}
	}
	old := map[string]*upstream{}
	if prev != nil && prev.tlsConf == st.tlsConf {
		for _, g := range prev.groups {
			for _, u := range g.ups {
				old[g.label+"|"+u.label] = u
			}
		}
	}
	st.router = &router{zones: map[string]*group{}}
	mk := func(zone string, ups []Upstream) (*group, error) {
		g := &group{zone: zone, label: groupLabel(zone)}
		g.counters = p.met.group(g.label)
		seen := map[string]bool{}
		for _, spec := range ups {
			if seen[spec.String()] {
				continue
			}
			seen[spec.String()] = true
			if u := old[g.label+"|"+spec.String()]; u != nil {
				g.ups = append(g.ups, u)
				continue
			}
			g.ups = append(g.ups, newUpstream(spec, g.label, p.met, st.tlsConf, p.log))
		}
		return g, nil
	}
	for _, z := range cfg.Zones {
		name, _ := canonicalZone(z.Name)
		g, err := mk(name, z.Upstreams)
		if err != nil {
			return nil, err
		}
		st.router.zones[name] = g
		st.groups = append(st.groups, g)
	}
	def, err := mk("", cfg.Default.Upstreams)
	if err != nil {
		return nil, err
	}
	st.router.def = def
	st.groups = append(st.groups, def)
	if st.grp, err = p.buildGroups(st, cfg); err != nil {
		return nil, err
	}
	return st, nil
}

func hasTLSUpstream(cfg Config) bool {
	for _, z := range append(slices.Clone(cfg.Zones), cfg.Default) {
		for _, u := range z.Upstreams {
			if u.Proto == ProtoTLS {
				return true
			}
		}
	}
	return false
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// retire closes upstreams of prev that st no longer uses.
func (p *Proxy) retire(prev, st *state) {
	keep := map[*upstream]bool{}
	for _, g := range st.groups {
		for _, u := range g.ups {
			keep[u] = true
		}
	}
	for _, g := range prev.groups {
		for _, u := range g.ups {
			if !keep[u] {
				u.close()
				p.met.upstreamHealthy.DeleteLabelValues(u.group, u.label)
			}
		}
	}
}

// Start binds every listener (UDP and TCP on each address) and starts health
// checks and the query log. It returns once bound; serving stops at Close.
func (p *Proxy) Start(ctx context.Context) error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	if p.closed {
		return errors.New("start dns proxy: closed")
	}
	if p.started {
		return errors.New("start dns proxy: already started")
	}
	st := p.st.Load()
	sets, err := p.bindAll(ctx, st.cfg.Listen, st.cfg.Port)
	if err != nil {
		return err
	}
	p.listeners = sets
	p.started = true
	if err := p.syncEncrypted(ctx, st.cfg); err != nil {
		p.closeEncrypted()
		for _, s := range sets {
			s.close()
		}
		p.listeners = nil
		p.started = false
		return err
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.healthLoop(p.ctx)
	}()
	if p.qlog != nil {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.qlog.run(p.ctx)
		}()
	}
	return nil
}

func (p *Proxy) bindAll(ctx context.Context, addrs []netip.Addr, port uint16) ([]*listenerSet, error) {
	var sets []*listenerSet
	for _, a := range addrs {
		ls, err := p.bind(ctx, a, port)
		if err != nil {
			for _, s := range sets {
				s.close()
			}
			return nil, err
		}
		sets = append(sets, ls)
	}
	return sets, nil
}

// Addrs returns the bound listener addresses: for each configured address
// one UDP and one TCP address.
func (p *Proxy) Addrs() []net.Addr {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	var out []net.Addr
	for _, ls := range p.listeners {
		out = append(out, ls.udp[0].LocalAddr(), ls.tcpLn.Addr())
	}
	return out
}

// Reload swaps zones, upstreams, policy, limits and ACL atomically and keeps
// the cache (entries are revalidated against the new policy and routing on
// their next hit). Listeners are rebound only if Listen or Port changed; on a
// bind error the old configuration stays in force.
func (p *Proxy) Reload(cfg Config) error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	if p.closed {
		return errors.New("reload dns proxy: closed")
	}
	prev := p.st.Load()
	st, err := p.buildState(cfg, prev)
	if err != nil {
		return err
	}
	if st.cfg.QueryLog != prev.cfg.QueryLog {
		p.log.Warn("dns query log settings change on restart only")
		st.cfg.QueryLog = prev.cfg.QueryLog
	}
	// A reload also reopens the query log: logrotate's postrotate runs
	// `systemctl reload sluice` and the log continues in a new file.
	if p.qlog != nil && p.started {
		if err := p.qlog.reopen(); err != nil {
			p.log.Warn("dns query log", "error", err)
		}
	}
	var stale []*listenerSet
	if p.started && (st.cfg.Port != prev.cfg.Port || !slices.Equal(st.cfg.Listen, prev.cfg.Listen)) {
		keep := map[netip.Addr]*listenerSet{}
		if st.cfg.Port == prev.cfg.Port {
			for _, ls := range p.listeners {
				keep[ls.addr] = ls
			}
		}
		var next []*listenerSet
		var fresh []*listenerSet
		for _, a := range st.cfg.Listen {
			if ls := keep[a]; ls != nil {
				next = append(next, ls)
				delete(keep, a)
				continue
			}
			ls, err := p.bind(context.Background(), a, st.cfg.Port)
			if err != nil {
				for _, s := range fresh {
					s.close()
				}
				return err
			}
			fresh = append(fresh, ls)
			next = append(next, ls)
		}
		for _, ls := range p.listeners {
			if !slices.Contains(next, ls) {
				stale = append(stale, ls)
			}
		}
		p.listeners = next
	}
	p.lim.set(st.cfg.Limits.PeerQPS, st.cfg.Limits.PeerBurst)
	p.inflight.max.Store(int64(st.cfg.Limits.MaxInflight))
	p.cache.resize(st.cfg.Cache.Size)
	p.st.Store(st)
	p.retire(prev, st)
	for _, ls := range stale {
		ls.close()
	}
	if p.started {
		// After the new state is in place: a kept listener hands out the
		// reloaded certificate from its next handshake on.
		return p.syncEncrypted(context.Background(), st.cfg)
	}
	return nil
}

// Close stops the listeners, health checks and query log, cancels upstream
// queries in flight and waits for every goroutine. It is idempotent.
func (p *Proxy) Close() error {
	p.reloadMu.Lock()
	if p.closed {
		p.reloadMu.Unlock()
		return nil
	}
	p.closed = true
	sets := p.listeners
	p.listeners = nil
	encErr := p.closeEncrypted()
	p.reloadMu.Unlock()

	errs := []error{encErr}
	for _, ls := range sets {
		if err := ls.close(); err != nil {
			errs = append(errs, err)
		}
	}
	// The listeners are gone, so no miss starts: close the carriers and
	// let their readers hand what was in flight to the workers (which
	// p.wg waits for) before the workers are cancelled.
	for _, g := range p.st.Load().groups {
		for _, u := range g.ups {
			u.closeCarriers()
		}
	}
	p.cpoll.stop()
	p.carrierWG.Wait()
	p.cancel()
	p.wg.Wait()
	for _, g := range p.st.Load().groups {
		for _, u := range g.ups {
			u.close()
		}
	}
	if p.qlog != nil && !p.started && p.qlog.closer != nil {
		p.qlog.closer.Close()
	}
	p.met.unregister()
	p.enc.unregister()
	return errors.Join(errs...)
}

// Stats is a snapshot for `sluice status`.
type Stats struct {
	Queries      uint64            `json:"queries"`
	ByRcode      map[string]uint64 `json:"by_rcode"`
	CacheHits    uint64            `json:"cache_hits"`
	CacheMisses  uint64            `json:"cache_misses"`
	CacheEntries int               `json:"cache_entries"`
	Blocked      uint64            `json:"blocked"`
	RateLimited  uint64            `json:"rate_limited"`
	Upstreams    []UpstreamStats   `json:"upstreams"`
}

// UpstreamStats is the health of one upstream.
type UpstreamStats struct {
	Group    string        `json:"group"`
	Addr     string        `json:"addr"`
	Healthy  bool          `json:"healthy"`
	Latency  time.Duration `json:"latency_ns"` // EWMA
	Failures int           `json:"failures"`   // consecutive
}

// Stats returns totals since New.
func (p *Proxy) Stats() Stats {
	s := Stats{
		CacheHits:    p.met.cacheHits.load(),
		CacheMisses:  p.met.cacheMisses.load(),
		CacheEntries: p.cache.len(),
		Blocked:      p.blockedN.Load(),
		RateLimited:  p.rateLimited.Load(),
	}
	s.Queries, s.ByRcode = p.met.totals()
	for _, g := range p.st.Load().groups {
		for _, u := range g.ups {
			s.Upstreams = append(s.Upstreams, upstreamStats(g, u))
		}
	}
	sort.SliceStable(s.Upstreams, func(i, j int) bool { return s.Upstreams[i].Group < s.Upstreams[j].Group })
	return s
}

// Exchange answers q as if it came from src over TCP (no truncation): ACL,
// rate limit, policy, cache, router, upstream. It is the request path without
// sockets, for tests, fuzzing and `sluice doctor`.
func (p *Proxy) Exchange(ctx context.Context, q *dns.Msg, src netip.Addr) (*dns.Msg, error) {
	if q == nil {
		return nil, errors.New("exchange dns query: nil message")
	}
	start := p.now()
	st := p.st.Load()
	src = src.Unmap()
	shard := int(addrHash(src))
	if rc, ok := p.admit(st, src, start.UnixNano()); !ok {
		resp := new(dns.Msg)
		resp.SetRcode(q, rc)
		p.account(shard, start, q, resp, answerInfo{group: localGroup, transport: TransportTCP}, netip.AddrPortFrom(src, 0))
		return resp, nil
	}
	resp, info := p.serve(ctx, st, q, shard, src)
	info.transport = TransportTCP
	p.account(shard, start, q, resp, info, netip.AddrPortFrom(src, 0))
	return resp, nil
}

// admit applies the ACL and the per-peer rate limit.
func (p *Proxy) admit(st *state, src netip.Addr, now int64) (int, bool) {
	if !st.allowed(src) {
		return dns.RcodeRefused, false
	}
	return p.admitPeer(src, p.identify(src), now)
}

// admitPeer is the rate limit of admit for an allowed source whose peer
// (nil: none) is known.
func (p *Proxy) admitPeer(src netip.Addr, who *Peer, now int64) (int, bool) {
	if !p.lim.allow(limitKeyOf(src, who), now) {
		p.rateLimited.Add(1)
		p.met.ratelimited.Inc()
		return dns.RcodeRefused, false
	}
	return 0, true
}

// answerInfo says how a query was answered, for metrics and the query log.
type answerInfo struct {
	transport Transport
	group     string
	peerGroup string // the asking peer's group; "" when none are configured
	upstream  string
	blocked   string
	cacheHit  bool
	cacheMiss bool
	entry     *cacheEntry // serveEntry's answer; never set outside it
	// fresh is the upstream's answer (shared, read-only) behind a fresh
	// entry: the observer learns its addresses with the TTLs the upstream
	// gave, as it does for answers rendered from messages.
	fresh *dns.Msg
}

// account records one answered query (slow path) in metrics and the query
// log: the one place its counters move. The proxy's own probes (see Probe)
// are not client traffic and are not recorded.
func (p *Proxy) account(shard int, start time.Time, req, resp *dns.Msg, info answerInfo, src netip.AddrPort) {
	qtype, name := questionOf(req)
	p.accountRcode(shard, start, qtype, name, resp.Rcode, info, src)
}

// questionOf is req's question type and name (0 and "" without one).
func questionOf(req *dns.Msg) (uint16, string) {
	if len(req.Question) == 0 {
		return 0, ""
	}
	return req.Question[0].Qtype, req.Question[0].Name
}

// accountRcode is account for an answer known by its rcode, to a question
// known by its type and name.
func (p *Proxy) accountRcode(shard int, start time.Time, qtype uint16, name string, rcode int, info answerInfo, src netip.AddrPort) {
	if p.probing(src) {
		return
	}
	switch {
	case info.blocked != "":
		p.blockedN.Add(1)
		p.met.blocked.WithLabelValues(info.blocked).Inc()
	case info.cacheHit:
		p.met.cacheHits.inc(shard)
	case info.cacheMiss:
		p.met.cacheMisses.inc(shard)
	}
	lat := p.now().Sub(start)
	p.met.group(info.group).inc(shard, qtype, rcode)
	p.met.duration.observe(shard, lat)
	if p.wantRecord(src.Addr().Unmap()) {
		p.record(logRecord{time: start, src: src, name: name, qtype: qtype, rcode: rcode, transport: info.transport,
			group: info.group, upstream: info.upstream, cacheHit: info.cacheHit, latency: lat, blocked: info.blocked,
			peerGroup: info.peerGroup})
	}
}

// serve is the slow path for one admitted query from src: every transport
// (UDP slow path, TCP, Exchange) answers through it.
func (p *Proxy) serve(ctx context.Context, st *state, req *dns.Msg, shard int, src netip.Addr) (*dns.Msg, answerInfo) {
	resp, _, info := p.serveEntry(ctx, st, req, shard, src, false)
	return resp, info
}

// serveEntry is serve for a caller that can render a cache entry itself
// (wantEntry; the wire transports, with writeHit): when the answer is a
// cache entry as it stands, from the cache or fresh from the upstream, it
// returns that entry and no message, sparing the copy, finish and pack of
// a message. The entry is then answered exactly like the cache hit that
// follows it will be.
func (p *Proxy) serveEntry(ctx context.Context, st *state, req *dns.Msg, shard int, src netip.Addr, wantEntry bool) (*dns.Msg, *cacheEntry, answerInfo) {
	resp, info := p.serveMsg(ctx, st, req, shard, src, wantEntry)
	if info.entry != nil {
		e := info.entry
		info.entry = nil
		return nil, e, info
	}
	return resp, nil, info
}

func (p *Proxy) serveMsg(ctx context.Context, st *state, req *dns.Msg, shard int, src netip.Addr, wantEntry bool) (*dns.Msg, answerInfo) {
	view := p.view(st, src)
	info := answerInfo{group: localGroup, peerGroup: view.label()}
	resp := new(dns.Msg)
	if req.Response || req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeNotImplemented)
		resp.Question = nil
		return resp, info
	}
	if len(req.Question) != 1 {
		resp.SetRcode(req, dns.RcodeFormatError)
		return resp, info
	}
	opt := req.IsEdns0()
	if opt != nil && opt.Version() != 0 {
		resp.SetRcode(req, dns.RcodeBadVers)
		resp.SetEdns0(uint16(st.cfg.EDNSBufferSize), false)
		return resp, info
	}
	q := req.Question[0]
	if reason := st.policy.check(q.Name); reason != "" {
		info.blocked = reason
		return p.finish(st, policyAnswer(req, reason), req, blockedEDE(reason)), info
	}
	g := st.router.route(q.Name)
	if reason := view.check(q.Name, g); reason != "" {
		// Before the cache and the upstream: never served, never forwarded.
		// (account counts it, like every blocked answer.)
		info.blocked = reason
		return p.finish(st, policyAnswer(req, reason), req, groupEDE(reason, view, g)), info
	}
	if r := st.serverNameAnswer(req); r != nil {
		return p.finish(st, r, req, nil), info
	}
	if q.Qtype == dns.TypeANY {
		resp.SetReply(req)
		resp.Answer = []dns.RR{&dns.HINFO{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeHINFO, Class: dns.ClassINET, Ttl: rfc8482TTL},
			Cpu: "RFC8482",
		}}
		return p.finish(st, resp, req, nil), info
	}
	info.group = g.label
	var key [keyMax]byte
	var name [maxNameWire]byte
	kn, nn, ok := msgKey(req, &key, &name)
	if !ok {
		resp.SetRcode(req, dns.RcodeFormatError)
		return resp, info
	}
	now := p.now().UnixNano()
	if e := p.cache.get(key[:kn], now); e != nil && e.group == g.label {
		if !view.seesAll(e.zidx, e.xz) { // a CNAME into a zone this group may not see
			return p.refuseCrossZone(st, req, view, g, &info), info
		}
		e.gen.Store(st.gen) // revalidated against current policy and routing
		if wantEntry {
			info.cacheHit = true
			info.entry = e
			return nil, info
		}
		qi := query{id: req.Id, flags: msgFlags(req), nameLen: nn}
		if opt != nil {
			qi.do = opt.Do()
		}
		wire := writeHit(make([]byte, 0, len(e.wire)), e, name[:nn], &qi, now, st.cfg.EDNSBufferSize, maxUDPAnswer)
		r := new(dns.Msg)
		if err := r.Unpack(wire); err == nil {
			info.cacheHit = true
			return p.finish(st, r, req, nil), info
		}
	}
	info.cacheMiss = true
	res := p.resolve(ctx, st, g, req, string(key[:kn]), name[:nn])
	info.upstream = res.upstream
	return p.answerResolved(st, req, view, g, res, &info, wantEntry), info
}

// answerResolved is the answer to req from g's result res (resolve): the
// entry itself when wantEntry and there is one (info.entry), else a message.
func (p *Proxy) answerResolved(st *state, req *dns.Msg, view *groupView, g *group, res groupResult, info *answerInfo, wantEntry bool) *dns.Msg {
	if res.msg == nil {
		resp := new(dns.Msg)
		resp.SetRcode(req, dns.RcodeServerFailure)
		return p.finish(st, resp, req, []dns.EDNS0{&dns.EDNS0_EDE{InfoCode: res.ede, ExtraText: res.text}})
	}
	xz := st.otherZones(res.msg.Answer, g.zidx)
	if res.entry != nil {
		xz = res.entry.xz
	}
	if !view.seesAll(g.zidx, xz) { // a CNAME into a zone this group may not see
		return p.refuseCrossZone(st, req, view, g, info)
	}
	if wantEntry && res.entry != nil {
		info.entry, info.fresh = res.entry, res.msg
		return nil
	}
	return p.finish(st, res.msg.Copy(), req, nil)
}

// msgFlags returns the header flags of req relevant to writeHit.
func msgFlags(req *dns.Msg) uint16 {
	var f uint16
	if req.RecursionDesired {
		f |= flagRD
	}
	if req.CheckingDisabled {
		f |= flagCD
	}
	if req.AuthenticatedData {
		f |= flagAD
	}
	return f
}

// msgKey builds the cache key of req (the same bytes parseQuery produces)
// and the question name in wire form as the client wrote it.
func msgKey(req *dns.Msg, key *[keyMax]byte, name *[maxNameWire]byte) (int, int, bool) {
	q := req.Question[0]
	n, err := dns.PackDomainName(dns.Fqdn(q.Name), name[:], 0, nil, false)
	if err != nil {
		return 0, 0, false
	}
	for i := 0; i < n; i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		key[i] = c
	}
	// Length bytes are < 64 and never in A-Z, so folding them is a no-op.
	key[n] = byte(q.Qtype >> 8)
	key[n+1] = byte(q.Qtype)
	key[n+2] = byte(q.Qclass >> 8)
	key[n+3] = byte(q.Qclass)
	var f byte
	if opt := req.IsEdns0(); opt != nil && opt.Do() {
		f |= keyFlagDO
	}
	if req.CheckingDisabled {
		f |= keyFlagCD
	}
	key[n+4] = f
	return n + 5, n, true
}

// finish makes r the answer to req: ID, question (the client's case), flags,
// and our own OPT record (with ede options) if and only if req had EDNS.
func (p *Proxy) finish(st *state, r, req *dns.Msg, ede []dns.EDNS0) *dns.Msg {
	r.Id = req.Id
	r.Response = true
	r.Opcode = req.Opcode
	r.RecursionDesired = req.RecursionDesired
	r.RecursionAvailable = true
	r.CheckingDisabled = req.CheckingDisabled
	r.Truncated = false
	r.Question = []dns.Question{req.Question[0]}
	r.Compress = true
	extra := r.Extra[:0]
	for _, rr := range r.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	r.Extra = extra
	reqOpt := req.IsEdns0()
	do := reqOpt != nil && reqOpt.Do()
	if !do && !req.AuthenticatedData {
		r.AuthenticatedData = false
	}
	if reqOpt != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(uint16(st.cfg.EDNSBufferSize))
		o.SetDo(do)
		o.Option = ede
		r.Extra = append(r.Extra, o)
	} else if r.Rcode > 0xF {
		r.Rcode = dns.RcodeServerFailure
	}
	return r
}

// policyAnswer synthesizes the local answer for a blocked name: NODATA with
// an SOA for DDR, NXDOMAIN with an SOA otherwise.
func policyAnswer(req *dns.Msg, reason string) *dns.Msg {
	r := new(dns.Msg)
	r.SetReply(req)
	r.Authoritative = true
	owner := "resolver.arpa."
	if reason == reasonDDR {
		r.Rcode = dns.RcodeSuccess
	} else {
		r.Rcode = dns.RcodeNameError
		owner = dns.Fqdn(lowerASCII(req.Question[0].Name))
	}
	r.Ns = []dns.RR{&dns.SOA{
		Hdr:     dns.RR_Header{Name: owner, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: policyTTL},
		Ns:      "sluice.invalid.",
		Mbox:    "hostmaster.sluice.invalid.",
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  policyTTL,
	}}
	return r
}

func blockedEDE(reason string) []dns.EDNS0 {
	code := dns.ExtendedErrorCodeBlocked
	if reason == reasonDDR {
		code = dns.ExtendedErrorCodeFiltered
	}
	return []dns.EDNS0{&dns.EDNS0_EDE{InfoCode: code, ExtraText: "sluice policy: " + reason}}
}

// flight is one upstream resolution shared by identical concurrent queries.
type flight struct {
	// done is closed when res is set (wake); made by the first query
	// that joins (nearly every flight has none), guarded by
	// Proxy.flightMu until the flight is unlisted.
	done   chan struct{}
	res    groupResult
	joined int // queries waiting on it; guarded by Proxy.flightMu
}

// wake tells the queries that joined f that f.res is set; after unlist,
// which leaves no query able to join.
func (f *flight) wake() {
	if f.done != nil {
		close(f.done)
	}
}

// resolve asks g for req's question once per key at a time (coalescing
// identical concurrent misses), caches the answer and returns it. The result
// is shared: callers must copy res.msg before changing it.
func (p *Proxy) resolve(ctx context.Context, st *state, g *group, req *dns.Msg, key string, qname []byte) groupResult {
	q := req.Question[0]
	do := false
	if opt := req.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	uq := newUpQuery(make([]byte, 0, headerLen+len(qname)+4+11), qname, q.Name, q.Qtype, q.Qclass,
		req.CheckingDisabled, do, st.cfg.EDNSBufferSize)
	return p.resolveQuery(ctx, st, g, &uq, key)
}

// resolveQuery is resolve for a packed upstream query.
func (p *Proxy) resolveQuery(ctx context.Context, st *state, g *group, uq *upQuery, key string) groupResult {
	f, lead := p.lead(key, true, nil)
	if !lead {
		return p.join(ctx, f, g)
	}
	defer p.land(key, f)
	if !p.inflight.acquire() {
		p.met.overload.Inc()
		f.res = groupResult{ede: dns.ExtendedErrorCodeNotReady,
			text: "too many upstream queries in flight"}
		return f.res
	}
	defer p.inflight.release()
	// The upstream query belongs to the proxy, not to the first client: a
	// client going away must not fail the others waiting on this flight.
	f.res = g.exchange(p.ctx, time.Now().Add(st.cfg.Deadline), uq, &p.ids, st.cfg.UpstreamTimeout,
		st.cfg.Health.Failures, nil)
	p.cacheResult(st, g, uq, key, &f.res)
	return f.res
}

// lead returns the flight for key: a new one that the caller leads (and
// must land), or the one in the air, which the caller joins (counted, so
// that the leader leaves it a message) when join is set. The new one is
// mine when the caller has one to use (zero), else a new allocation.
func (p *Proxy) lead(key string, join bool, mine *flight) (*flight, bool) {
	p.flightMu.Lock()
	defer p.flightMu.Unlock()
	if f := p.flights[key]; f != nil {
		if join {
			f.joined++
			if f.done == nil {
				f.done = make(chan struct{})
			}
		}
		return f, false
	}
	f := mine
	if f == nil {
		f = &flight{}
	}
	p.flights[key] = f
	return f, true
}

// join waits for a flight led by another query.
func (p *Proxy) join(ctx context.Context, f *flight, g *group) groupResult {
	select {
	case <-f.done:
		return f.res
	case <-ctx.Done():
		return groupResult{ede: dns.ExtendedErrorCodeNoReachableAuthority,
			text: fmt.Sprintf("query for group %q cancelled", g.label)}
	}
}

// land ends a flight: later queries for key start their own, the joined
// ones read f.res.
func (p *Proxy) land(key string, f *flight) {
	p.unlist(key, f)
	f.wake()
}

// unlist is land without the wake-up: no query joins f any more, and the
// caller, which must wake f, learns how many did.
func (p *Proxy) unlist(key string, f *flight) (joined int) {
	p.flightMu.Lock()
	defer p.flightMu.Unlock()
	delete(p.flights, key)
	return f.joined
}

// cacheResult caches what res holds for uq (a SERVFAIL when it holds no
// answer and servfail caching is on) and sets res.entry when the answer
// itself was cached.
func (p *Proxy) cacheResult(st *state, g *group, uq *upQuery, key string, res *groupResult) {
	now := p.now().UnixNano()
	msg := res.msg
	if msg != nil {
		clampNegativeSOA(msg)
	}
	if msg == nil && st.cfg.Cache.ServfailTTL > 0 {
		msg = new(dns.Msg)
		msg.Response = true
		msg.RecursionDesired = true
		msg.CheckingDisabled = uq.cd
		msg.Rcode = dns.RcodeServerFailure
		msg.Question = []dns.Question{{Name: uq.name, Qtype: uq.qtype, Qclass: uq.qclass}}
	}
	if msg == nil {
		return
	}
	ttl := cacheTTL(msg, st.cfg.Cache.MaxTTL, st.cfg.Cache.ServfailTTL)
	if ttl < time.Second {
		return
	}
	e, ok := (*cacheEntry)(nil), false
	if msg == res.msg && res.raw != nil {
		e, ok = newCacheEntryWire(key, res.raw, msg, ttl, now, g)
	}
	if !ok {
		e, ok = newCacheEntry(key, msg, ttl, now, g)
	}
	if !ok {
		return
	}
	e.xz = st.otherZones(msg.Answer, g.zidx)
	e.gen.Store(st.gen)
	p.cache.put(e)
	if msg == res.msg {
		res.entry = e
	}
}
