package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Defaults. The gateway starts from DefaultConfig and overrides what the
// operator wrote.
const (
	DefaultPort            uint16 = 53
	DefaultEDNSBufferSize         = 1232
	DefaultCacheSize              = 100000
	DefaultCacheMaxTTL            = 24 * time.Hour
	DefaultServfailTTL            = 0 // SERVFAIL is not cached unless configured
	DefaultHealthName             = "."
	DefaultHealthInterval         = 5 * time.Second
	DefaultHealthTimeout          = time.Second
	DefaultHealthFailures         = 3
	DefaultUpstreamTimeout        = 600 * time.Millisecond
	DefaultDeadline               = 1500 * time.Millisecond
	DefaultPeerQPS                = 200
	DefaultPeerBurst              = 400
	DefaultMaxInflight            = 4096
	DefaultQueryLogBuffer         = 4096

	defaultDNSPort = 53
	defaultDoTPort = 853

	minEDNSBufferSize = 512
	maxEDNSBufferSize = 4096
)

// Zone is one conditional-forwarding zone and the resolver group that alone
// answers it.
type Zone struct {
	Name      string
	Upstreams []Upstream
}

// Protocol is how an upstream is reached.
type Protocol string

// The upstream protocols.
const (
	ProtoUDP Protocol = "udp" // falls back to tcp on TC
	ProtoTCP Protocol = "tcp"
	ProtoTLS Protocol = "tls" // DNS over TLS, the certificate checked against ServerName
)

// protocolSpec is what a scheme implies; protocols is the one table of them
// (parsing, rendering and defaults all read it).
type protocolSpec struct {
	port       uint16 // when the address has none
	serverName bool   // #servername required (and only allowed) here
}

var protocols = map[Protocol]protocolSpec{
	ProtoUDP: {port: defaultDNSPort},
	ProtoTCP: {port: defaultDNSPort},
	ProtoTLS: {port: defaultDoTPort, serverName: true},
}

// Upstream is one parsed resolver address of a group. It is parsed once,
// from the configuration, and passed around typed from then on.
type Upstream struct {
	Proto      Protocol
	Addr       netip.AddrPort
	ServerName string // tls only: the name the certificate is verified against
}

// String renders u in the syntax ParseUpstream accepts.
func (u Upstream) String() string {
	s := u.Addr.String()
	if u.Proto != ProtoUDP && u.Proto != "" {
		s = string(u.Proto) + "://" + s
	}
	if u.ServerName != "" {
		s += "#" + u.ServerName
	}
	return s
}

// MarshalText renders u like String (for JSON and YAML output).
func (u Upstream) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText parses like ParseUpstream.
func (u *Upstream) UnmarshalText(b []byte) error {
	v, err := ParseUpstream(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

// ErrAmbiguousUpstream is returned for a bare IPv6 address whose last group
// could be read as a port, like fd30::53:5353.
var ErrAmbiguousUpstream = errors.New("ambiguous upstream")

// ParseUpstream parses "IP", "IP:port", "[v6]", "[v6]:port",
// "tcp://IP[:port]" or "tls://IP[:port]#servername" (port 853 by default for
// tls, 53 otherwise). A bare IPv6 address whose last group reads as a port
// (fd30::53:5353) is refused as ambiguous: write [fd30::53]:5353 for the
// port, or [fd30::53:5353] for the address.
func ParseUpstream(s string) (Upstream, error) {
	u := Upstream{Proto: ProtoUDP}
	rest := strings.TrimSpace(s)
	if i := strings.Index(rest, "://"); i >= 0 {
		u.Proto = Protocol(strings.ToLower(rest[:i]))
		rest = rest[i+3:]
		if _, ok := protocols[u.Proto]; !ok {
			return Upstream{}, fmt.Errorf("parse upstream %q: unknown scheme %q (want udp, tcp or tls)", s, u.Proto)
		}
	}
	spec := protocols[u.Proto]
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		if !spec.serverName {
			return Upstream{}, fmt.Errorf("parse upstream %q: #servername is only valid for tls://", s)
		}
		u.ServerName = strings.TrimSuffix(rest[i+1:], ".")
		rest = rest[:i]
		if u.ServerName == "" {
			return Upstream{}, fmt.Errorf("parse upstream %q: empty servername after #", s)
		}
		if _, ok := dns.IsDomainName(u.ServerName); !ok {
			return Upstream{}, fmt.Errorf("parse upstream %q: invalid servername %q", s, u.ServerName)
		}
	} else if spec.serverName {
		return Upstream{}, fmt.Errorf("parse upstream %q: %s upstream needs #servername to verify the certificate", s, u.Proto)
	}
	if rest == "" {
		return Upstream{}, fmt.Errorf("parse upstream %q: empty address", s)
	}
	if strings.HasPrefix(rest, "[") && strings.HasSuffix(rest, "]") {
		rest = rest[1 : len(rest)-1] // [v6] without a port
	} else if a, err := netip.ParseAddr(rest); err == nil && a.Is6() && ambiguousV6(rest) {
		i := strings.LastIndexByte(rest, ':')
		return Upstream{}, fmt.Errorf("parse upstream %q: %w: write [%s]:%s for port %s, or [%s] for the address",
			s, ErrAmbiguousUpstream, rest[:i], rest[i+1:], rest[i+1:], rest)
	}
	if a, err := netip.ParseAddr(rest); err == nil {
		if a.Zone() != "" {
			return Upstream{}, fmt.Errorf("parse upstream %q: zoned addresses are not supported", s)
		}
		u.Addr = netip.AddrPortFrom(a.Unmap(), spec.port)
		return u, nil
	}
	ap, err := netip.ParseAddrPort(rest)
	if err != nil {
		return Upstream{}, fmt.Errorf("parse upstream %q: want IP, IP:port or [IPv6]:port: %w", s, err)
	}
	if ap.Port() == 0 {
		return Upstream{}, fmt.Errorf("parse upstream %q: port 0", s)
	}
	if ap.Addr().Zone() != "" {
		return Upstream{}, fmt.Errorf("parse upstream %q: zoned addresses are not supported", s)
	}
	u.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return u, nil
}

// ambiguousV6 reports whether a bare IPv6 address could also be read as a
// shorter address and a port: "::" written, the last group all decimal
// digits, and the text before it a valid address.
func ambiguousV6(s string) bool {
	i := strings.LastIndexByte(s, ':')
	if !strings.Contains(s, "::") || i < 0 || i == len(s)-1 {
		return false
	}
	last := s[i+1:]
	for _, r := range last {
		if r < '0' || r > '9' {
			return false
		}
	}
	if n, err := strconv.Atoi(last); err != nil || n == 0 || n > 65535 {
		return false
	}
	head, err := netip.ParseAddr(s[:i])
	return err == nil && head.Is6()
}

// ParseUpstreams parses every string of a group; the error names the first
// bad one.
func ParseUpstreams(ss []string) ([]Upstream, error) {
	out := make([]Upstream, 0, len(ss))
	for _, s := range ss {
		u, err := ParseUpstream(s)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// MustParseUpstreams is ParseUpstreams for literals in tests and tools; it
// panics on a bad string.
func MustParseUpstreams(ss ...string) []Upstream {
	out, err := ParseUpstreams(ss)
	if err != nil {
		panic(err)
	}
	return out
}

// CacheConfig bounds the answer cache.
type CacheConfig struct {
	Size        int           // entries; 0 disables the cache
	MaxTTL      time.Duration // TTLs above are capped
	ServfailTTL time.Duration // 0: SERVFAIL is never cached
}

// HealthConfig controls active and passive upstream health checking.
type HealthConfig struct {
	Name     string        // queried (type NS) against every upstream
	Interval time.Duration // between active checks
	Timeout  time.Duration // per active check
	Failures int           // consecutive failures before an upstream is ejected
	Disabled bool          // no active checks (passive counting still orders upstreams)
}

// PolicyConfig selects the DNS-level leak closers.
type PolicyConfig struct {
	Canaries      bool     // use-application-dns.net, mask.icloud.com, mask-h2.icloud.com, _dns.resolver.arpa
	BlockDoHNames bool     // the built-in list of public DoH/DoT hostnames
	BlocklistFile string   // extra names, one per line, # comments
	Allowlist     []string // names (and their subdomains) never blocked
}

// LimitsConfig bounds what one peer and all peers together may cost.
type LimitsConfig struct {
	PeerQPS     int // per source address; 0 disables the limit
	PeerBurst   int
	MaxInflight int // upstream queries in flight; 0 disables the cap
}

// QueryLogConfig enables the asynchronous query log.
type QueryLogConfig struct {
	Path   string // "" off, "-" stderr, else a file opened for append (0640)
	Buffer int    // records queued before drops
	// Gateway, when set, names this gateway in every record (a fleet's
	// fleet.name: "which node answered").
	Gateway string
}

// Config is the whole proxy configuration. Start from DefaultConfig.
type Config struct {
	Listen          []netip.Addr
	Port            uint16
	AllowedSources  []netip.Prefix
	Zones           []Zone
	Default         Zone
	EDNSBufferSize  int
	TLSCAFile       string
	Cache           CacheConfig
	Health          HealthConfig
	UpstreamTimeout time.Duration // per try
	Deadline        time.Duration // whole query; all-down groups answer SERVFAIL by then
	Policy          PolicyConfig
	Limits          LimitsConfig
	QueryLog        QueryLogConfig
	Groups          []PeerGroup     // none: every peer sees every zone
	DefaultGroup    string          // group of peers without one; must be in Groups when Groups is set
	Encrypted       EncryptedConfig // DoT and DoH on the Listen addresses
}

// DefaultConfig returns a Config with every default filled.
func DefaultConfig() Config {
	return Config{
		Port:           DefaultPort,
		EDNSBufferSize: DefaultEDNSBufferSize,
		Cache: CacheConfig{
			Size:        DefaultCacheSize,
			MaxTTL:      DefaultCacheMaxTTL,
			ServfailTTL: DefaultServfailTTL,
		},
		Health: HealthConfig{
			Name:     DefaultHealthName,
			Interval: DefaultHealthInterval,
			Timeout:  DefaultHealthTimeout,
			Failures: DefaultHealthFailures,
		},
		UpstreamTimeout: DefaultUpstreamTimeout,
		Deadline:        DefaultDeadline,
		Policy:          PolicyConfig{Canaries: true, BlockDoHNames: true},
		Limits: LimitsConfig{
			PeerQPS:     DefaultPeerQPS,
			PeerBurst:   DefaultPeerBurst,
			MaxInflight: DefaultMaxInflight,
		},
		QueryLog:  QueryLogConfig{Buffer: DefaultQueryLogBuffer},
		Encrypted: EncryptedConfig{DoTPort: DefaultDoTPort, DoHPort: DefaultDoHPort},
	}
}

// normalize fills zero values with defaults and checks the configuration.
func (c Config) normalize() (Config, error) {
	var errs []error
	if c.EDNSBufferSize == 0 {
		c.EDNSBufferSize = DefaultEDNSBufferSize
	}
	c.EDNSBufferSize = min(max(c.EDNSBufferSize, minEDNSBufferSize), maxEDNSBufferSize)
	if c.UpstreamTimeout <= 0 {
		c.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if c.Deadline <= 0 {
		c.Deadline = DefaultDeadline
	}
	if c.Cache.Size < 0 {
		errs = append(errs, fmt.Errorf("check cache size %d: negative", c.Cache.Size))
	}
	if c.Cache.MaxTTL <= 0 {
		c.Cache.MaxTTL = DefaultCacheMaxTTL
	}
	if c.Health.Name == "" {
		c.Health.Name = DefaultHealthName
	}
	c.Health.Name = dns.Fqdn(c.Health.Name)
	if c.Health.Interval <= 0 {
		c.Health.Interval = DefaultHealthInterval
	}
	if c.Health.Timeout <= 0 {
		c.Health.Timeout = DefaultHealthTimeout
	}
	if c.Health.Failures <= 0 {
		c.Health.Failures = DefaultHealthFailures
	}
	if c.Limits.PeerQPS < 0 || c.Limits.PeerBurst < 0 || c.Limits.MaxInflight < 0 {
		errs = append(errs, errors.New("check limits: negative value"))
	}
	if c.Limits.PeerQPS > 0 && c.Limits.PeerBurst < c.Limits.PeerQPS {
		c.Limits.PeerBurst = c.Limits.PeerQPS
	}
	if c.QueryLog.Buffer <= 0 {
		c.QueryLog.Buffer = DefaultQueryLogBuffer
	}
	var err error
	if c.Encrypted, err = c.Encrypted.normalize(); err != nil {
		errs = append(errs, err)
	}
	for i, a := range c.Listen {
		if !a.IsValid() {
			errs = append(errs, fmt.Errorf("check listen address %d: invalid", i))
		}
		c.Listen[i] = a.Unmap()
	}
	seen := map[string]bool{}
	for _, z := range c.Zones {
		name, err := canonicalZone(z.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("check zone %q: duplicate", z.Name))
		}
		seen[name] = true
		if len(z.Upstreams) == 0 {
			errs = append(errs, fmt.Errorf("check zone %q: no upstreams", z.Name))
		}
		for _, u := range z.Upstreams {
			if err := u.check(); err != nil {
				errs = append(errs, fmt.Errorf("check zone %q: %w", z.Name, err))
			}
		}
	}
	for _, u := range c.Default.Upstreams {
		if err := u.check(); err != nil {
			errs = append(errs, fmt.Errorf("check default group: %w", err))
		}
	}
	if err := c.normalizeGroups(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// check validates an Upstream built in code rather than parsed.
func (u Upstream) check() error {
	spec, ok := protocols[u.Proto]
	switch {
	case !ok:
		return fmt.Errorf("check upstream %s: unknown protocol %q", u, u.Proto)
	case !u.Addr.IsValid() || u.Addr.Port() == 0:
		return fmt.Errorf("check upstream %s: no address and port", u)
	case spec.serverName != (u.ServerName != ""):
		return fmt.Errorf("check upstream %s: a server name is required for tls and only there", u)
	}
	return nil
}

// canonicalZone lowercases name and makes it fully qualified.
func canonicalZone(name string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" {
		return "", errors.New("check zone \"\": empty name")
	}
	n = dns.Fqdn(n)
	if _, ok := dns.IsDomainName(n); !ok {
		return "", fmt.Errorf("check zone %q: invalid name", name)
	}
	return n, nil
}

// groupLabel names a group in metrics, logs and EDE texts.
func groupLabel(zone string) string {
	switch zone {
	case "":
		return "default"
	case ".":
		return "."
	}
	return strings.TrimSuffix(zone, ".")
}

// The bounds the operator may set.
const (
	// MaxUpstreamTimeout: clients give up on a resolver after about 2s and
	// move on to another one (a leak), so a try must end well before.
	MaxUpstreamTimeout = 2 * time.Second
)

// FileConfig is the part of the `dns:` section the proxy owns, as the
// operator writes it (gateway inlines it into its dns section, which adds
// mode, listen, zones and the default group). The yaml tags are the keys;
// doc, default, allowed and kind feed `sluice config reference`. Durations
// reach Apply already checked for syntax (no bare numbers, no negatives).
// To add a key: a field here, its rule in Apply.
type FileConfig struct {
	EDNSBufferSize  int    `yaml:"edns_buffer_size" doc:"EDNS UDP buffer size advertised and clamped to" default:"1232" allowed:"512-4096"`
	UpstreamTimeout string `yaml:"upstream_timeout" doc:"per try to one upstream" kind:"duration" default:"600ms" allowed:"under 2s"`
	TLSCAFile       string `yaml:"tls_ca_file" doc:"PEM CA bundle for tls:// upstreams" kind:"file" default:"the system roots"`
	QueryLog        string `yaml:"query_log" doc:"query log: a file (its directory is created), - for stderr" kind:"file" default:"off"`
	Cache           struct {
		Size        *int   `yaml:"size" doc:"answer cache entries; 0 disables the cache" default:"100000"`
		MaxTTL      string `yaml:"max_ttl" doc:"TTLs above are capped" kind:"duration" default:"24h"`
		ServfailTTL string `yaml:"servfail_ttl" doc:"how long a SERVFAIL is cached" kind:"duration" default:"0s (not cached)"`
	} `yaml:"cache" doc:"the answer cache"`
	Health struct {
		Name     string `yaml:"name" doc:"name queried (type NS) against every upstream" default:"."`
		Interval string `yaml:"interval" doc:"between active health checks" kind:"duration" default:"5s"`
		Timeout  string `yaml:"timeout" doc:"per active health check" kind:"duration" default:"1s"`
		Failures int    `yaml:"failures" doc:"consecutive failures before an upstream is ejected" default:"3"`
		Disabled bool   `yaml:"disabled" doc:"no active checks (passive counting still orders upstreams)" default:"false"`
	} `yaml:"health" doc:"active and passive upstream health checks"`
	Policy struct {
		Canaries      *bool    `yaml:"canaries" doc:"answer the canary names (use-application-dns.net, mask.icloud.com, _dns.resolver.arpa) so apps keep DNS in the tunnel" default:"true"`
		BlockDoHNames *bool    `yaml:"block_doh_names" doc:"refuse the built-in list of public DoH/DoT hostnames" default:"true"`
		BlocklistFile string   `yaml:"blocklist_file" doc:"extra names to refuse, one per line, # comments" kind:"file" default:"none"`
		Allowlist     []string `yaml:"allowlist" doc:"names (and their subdomains) never refused" kind:"domain name"`
	} `yaml:"policy" doc:"DNS-level leak closers"`
	Limits struct {
		PeerQPS     *int `yaml:"peer_qps" doc:"queries per second per peer address; 0 disables the limit" default:"200"`
		PeerBurst   *int `yaml:"peer_burst" doc:"burst above peer_qps" default:"400"`
		MaxInflight *int `yaml:"max_inflight" doc:"upstream queries in flight at once; 0 disables the cap" default:"4096"`
	} `yaml:"limits" doc:"what one peer and all peers together may cost"`
}

// Apply validates f and writes what it sets into c (start c from
// DefaultConfig). Each problem is reported with its key inside the dns
// section (e.g. "cache.max_ttl") and the fix.
func (f FileConfig) Apply(c *Config, report func(key, msg, fix string)) {
	if f.EDNSBufferSize != 0 {
		if f.EDNSBufferSize < minEDNSBufferSize || f.EDNSBufferSize > maxEDNSBufferSize {
			report("edns_buffer_size", fmt.Sprintf("%d out of range", f.EDNSBufferSize),
				fmt.Sprintf("use %d-%d; %d avoids fragmentation on every path", minEDNSBufferSize, maxEDNSBufferSize, DefaultEDNSBufferSize))
		}
		c.EDNSBufferSize = f.EDNSBufferSize
	}
	durations := []struct {
		key string
		val string
		dst *time.Duration
	}{
		{"upstream_timeout", f.UpstreamTimeout, &c.UpstreamTimeout},
		{"cache.max_ttl", f.Cache.MaxTTL, &c.Cache.MaxTTL},
		{"cache.servfail_ttl", f.Cache.ServfailTTL, &c.Cache.ServfailTTL},
		{"health.interval", f.Health.Interval, &c.Health.Interval},
		{"health.timeout", f.Health.Timeout, &c.Health.Timeout},
	}
	for _, d := range durations {
		if d.val == "" {
			continue
		}
		v, err := time.ParseDuration(d.val)
		if err != nil || v < 0 {
			report(d.key, fmt.Sprintf("%q is not a duration", d.val), "write it like 2s, 500ms or 1h")
			continue
		}
		*d.dst = v
	}
	if c.UpstreamTimeout >= MaxUpstreamTimeout {
		report("upstream_timeout", "must stay under "+MaxUpstreamTimeout.String(), "clients move on to another resolver (a leak) after their own timeout; keep it at 1s or less")
	}
	c.TLSCAFile = f.TLSCAFile
	c.QueryLog.Path = f.QueryLog
	if f.Cache.Size != nil {
		if *f.Cache.Size < 0 {
			report("cache.size", fmt.Sprintf("%d is negative", *f.Cache.Size), "use 0 to disable the cache, or a number of entries")
		}
		c.Cache.Size = *f.Cache.Size
	}
	if f.Health.Name != "" {
		if _, ok := dns.IsDomainName(f.Health.Name); !ok {
			report("health.name", fmt.Sprintf("%q is not a domain name", f.Health.Name), "use . (the root) or a name every upstream answers")
		}
		c.Health.Name = f.Health.Name
	}
	if f.Health.Failures < 0 {
		report("health.failures", fmt.Sprintf("%d is negative", f.Health.Failures), "use a count like 3")
	}
	if f.Health.Failures > 0 {
		c.Health.Failures = f.Health.Failures
	}
	c.Health.Disabled = f.Health.Disabled
	if f.Policy.Canaries != nil {
		c.Policy.Canaries = *f.Policy.Canaries
	}
	if f.Policy.BlockDoHNames != nil {
		c.Policy.BlockDoHNames = *f.Policy.BlockDoHNames
	}
	c.Policy.BlocklistFile = f.Policy.BlocklistFile
	for i, n := range f.Policy.Allowlist {
		if _, err := canonicalName(n); err != nil {
			report(fmt.Sprintf("policy.allowlist[%d]", i), fmt.Sprintf("%q is not a domain name", n), "write it like example.com")
			continue
		}
		c.Policy.Allowlist = append(c.Policy.Allowlist, n)
	}
	limits := []struct {
		key string
		val *int
		dst *int
	}{
		{"limits.peer_qps", f.Limits.PeerQPS, &c.Limits.PeerQPS},
		{"limits.peer_burst", f.Limits.PeerBurst, &c.Limits.PeerBurst},
		{"limits.max_inflight", f.Limits.MaxInflight, &c.Limits.MaxInflight},
	}
	for _, l := range limits {
		if l.val == nil {
			continue
		}
		if *l.val < 0 {
			report(l.key, fmt.Sprintf("%d is negative", *l.val), "use 0 to disable the limit, or a positive number")
			continue
		}
		*l.dst = *l.val
	}
}

// Preflight opens every file c names the way the proxy will (blocklist, CA
// bundle, query log), so that a bad file is found before anything is
// changed. With create, a missing query log and its directory are created
// (as `sluice up` needs them); without, Preflight changes nothing and only
// checks that they could be. Problems are reported with their key inside
// the dns section; the message names file:line where there is one.
func (c Config) Preflight(create bool, report func(key, msg, fix string)) {
	if c.Policy.BlocklistFile != "" {
		if _, err := newPolicy(PolicyConfig{BlocklistFile: c.Policy.BlocklistFile}); err != nil {
			report("policy.blocklist_file", err.Error(), "one domain name per line, # starts a comment")
		}
	}
	if c.TLSCAFile != "" {
		if _, err := loadTLSConfig(c.TLSCAFile); err != nil {
			report("tls_ca_file", err.Error(), "name a readable PEM file of CA certificates")
		}
	}
	p := c.QueryLog.Path
	if p == "" || p == "-" {
		return
	}
	fix := "create the directory or pick a path sluice may write, e.g. /var/log/sluice/queries.jsonl"
	if _, err := os.Stat(p); err != nil && os.IsNotExist(err) && !create {
		if err := CheckCreatable(filepath.Dir(p)); err != nil {
			report("query_log", fmt.Sprintf("query log directory: %v", err), fix)
		}
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		report("query_log", fmt.Sprintf("create query log directory: %v", err), fix)
	} else if f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640); err != nil {
		report("query_log", fmt.Sprintf("open query log: %v", err), "make the file writable by sluice, or pick another path")
	} else {
		f.Close()
	}
}

// CheckCreatable reports whether dir exists as a writable directory or
// could be created: its nearest existing ancestor is a writable directory.
// It changes nothing.
func CheckCreatable(dir string) error {
	d := filepath.Clean(dir)
	for {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", d)
			}
			if err := syscall.Access(d, 2 /* W_OK */); err != nil {
				return fmt.Errorf("%s is not writable: %w", d, err)
			}
			return nil
		}
		if !os.IsNotExist(err) {
			return err
		}
		parent := filepath.Dir(d)
		if parent == d {
			return err
		}
		d = parent
	}
}
