package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
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
	Upstreams []string
}

// Upstream is one parsed resolver address of a group.
type Upstream struct {
	Proto      string // udp | tcp | tls (udp falls back to tcp on TC)
	Addr       netip.AddrPort
	ServerName string // tls only: the name the certificate is verified against
}

// String renders u in the syntax ParseUpstream accepts.
func (u Upstream) String() string {
	switch u.Proto {
	case "tcp":
		return "tcp://" + u.Addr.String()
	case "tls":
		return "tls://" + u.Addr.String() + "#" + u.ServerName
	}
	return u.Addr.String()
}

// ParseUpstream parses "IP", "IP:port", "[v6]:port", "tcp://IP[:port]" or
// "tls://IP[:port]#servername" (port 853 by default for tls, 53 otherwise).
func ParseUpstream(s string) (Upstream, error) {
	u := Upstream{Proto: "udp"}
	rest := strings.TrimSpace(s)
	if i := strings.Index(rest, "://"); i >= 0 {
		u.Proto = strings.ToLower(rest[:i])
		rest = rest[i+3:]
		switch u.Proto {
		case "udp", "tcp", "tls":
		default:
			return Upstream{}, fmt.Errorf("parse upstream %q: unknown scheme %q (want udp, tcp or tls)", s, u.Proto)
		}
	}
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		if u.Proto != "tls" {
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
	} else if u.Proto == "tls" {
		return Upstream{}, fmt.Errorf("parse upstream %q: tls upstream needs #servername to verify the certificate", s)
	}
	port := uint16(defaultDNSPort)
	if u.Proto == "tls" {
		port = defaultDoTPort
	}
	if rest == "" {
		return Upstream{}, fmt.Errorf("parse upstream %q: empty address", s)
	}
	if a, err := netip.ParseAddr(rest); err == nil {
		if a.Zone() != "" {
			return Upstream{}, fmt.Errorf("parse upstream %q: zoned addresses are not supported", s)
		}
		u.Addr = netip.AddrPortFrom(a.Unmap(), port)
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
			if _, err := ParseUpstream(u); err != nil {
				errs = append(errs, fmt.Errorf("check zone %q: %w", z.Name, err))
			}
		}
	}
	for _, u := range c.Default.Upstreams {
		if _, err := ParseUpstream(u); err != nil {
			errs = append(errs, fmt.Errorf("check default group: %w", err))
		}
	}
	return c, errors.Join(errs...)
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
