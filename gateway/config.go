package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
	"github.com/sluice-vpn/sluice/peers"
)

// Defaults used when a key is absent and for `sluice up` without a file.
const (
	DefaultInterface     = "sluice0"
	DefaultListenPort    = 51820
	DefaultStateDir      = "/var/lib/sluice"
	DefaultAdminListen   = "127.0.0.1:9153"
	DefaultControlDir    = "/run/sluice"
	DefaultMode          = ModeSplit
	defaultResolvConf    = "/etc/resolv.conf"
	embeddedConfigSource = "(embedded defaults)"
)

// DefaultAddresses and DefaultResolvers are the tunnel addressing of the
// embedded defaults (the same as DESIGN.md's test network).
var (
	DefaultAddresses        = []netip.Prefix{netip.MustParsePrefix("10.20.0.1/24"), netip.MustParsePrefix("fd20::1/64")}
	DefaultResolvers        = []netip.Addr{netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("fd20::53")}
	DefaultInternalPrefixes = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("fc00::/7"),
	}
)

// Mode is how clients route: split (only peers.routes and the resolvers) or
// full (everything; only internal resolvers allowed).
type Mode string

// The two modes.
const (
	ModeSplit Mode = "split"
	ModeFull  Mode = "full"
)

// InterfaceConfig is the `interface:` section.
type InterfaceConfig struct {
	Name           string
	Backend        wgdev.Backend
	ListenPort     int
	PrivateKeyFile string
	Addresses      []netip.Prefix
	MTU            int
	Endpoint       string
}

// AdminConfig is the `admin:` section.
type AdminConfig struct {
	Listen        string // HTTP: /metrics /healthz /readyz; "" disables
	ControlSocket string // the CLI's unix socket, mode 0600
}

// Config is the whole gateway configuration, composed of each package's own
// configuration type.
type Config struct {
	Source           string // file name, or "(embedded defaults)"
	Interface        InterfaceConfig
	Mode             Mode
	SearchDomains    []string
	InternalPrefixes []netip.Prefix
	DNS              dnsproxy.Config
	Enforce          firewall.Config
	FirewallTable    string
	Peers            peers.Config
	Admin            AdminConfig
	// OwnDNSCA is set when DoT/DoH use sluice's own CA and certificate in
	// the state directory (no dns.tls.cert_file).
	OwnDNSCA bool

	pos positions
}

// Resolvers are the in-tunnel resolver addresses.
func (c *Config) Resolvers() []netip.Addr { return c.DNS.Listen }

// ZoneNames are the names of the conditionally forwarded zones.
func (c *Config) ZoneNames() []string {
	out := make([]string, len(c.DNS.Zones))
	for i, z := range c.DNS.Zones {
		out[i] = z.Name
	}
	return out
}

// FullTunnel reports whether clients route everything through the tunnel.
func (c *Config) FullTunnel() bool { return c.Mode == ModeFull }

// Pool is the address pool peers are allocated from.
func (c *Config) Pool() peers.Pool {
	var p peers.Pool
	for _, a := range c.Interface.Addresses {
		if a.Addr().Is4() && !p.V4.IsValid() {
			p.V4 = a.Masked()
		}
		if a.Addr().Is6() && !p.V6.IsValid() {
			p.V6 = a.Masked()
		}
		p.Reserved = append(p.Reserved, a.Addr())
	}
	p.Reserved = append(p.Reserved, c.DNS.Listen...)
	return p
}

// TunnelPrefixes are the interface prefixes (peer sources).
func (c *Config) TunnelPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, len(c.Interface.Addresses))
	for i, a := range c.Interface.Addresses {
		out[i] = a.Masked()
	}
	return out
}

// ErrorAt builds a ConfigError for key, with the line it has in the file.
func (c *Config) ErrorAt(key, msg, fix string) *ConfigError {
	return &ConfigError{File: c.Source, Line: c.pos.line(key), Key: key, Msg: msg, Fix: fix}
}

// EndpointError is the error for rendering a client config without an
// endpoint: it says which key to set.
func (c *Config) EndpointError() error {
	return c.ErrorAt("interface.endpoint", "no endpoint: client configs need the address clients dial",
		"set interface.endpoint to host:port, e.g. vpn.example.com:51820, or pass --endpoint")
}

// ControlSocket is the control socket path, derived from the interface name
// unless configured.
func (c *Config) ControlSocket() string {
	if c.Admin.ControlSocket != "" {
		return c.Admin.ControlSocket
	}
	return filepath.Join(DefaultControlDir, c.Interface.Name+".sock")
}

// ControlSocketPath finds the control socket of the daemon started with the
// configuration file at path ("" for the embedded defaults). It reads only
// the two keys it needs and skips validation, so that `sluice reload` and
// `sluice status` still reach the daemon when the file has just been broken.
func ControlSocketPath(path string) (string, error) {
	c := &Config{Interface: InterfaceConfig{Name: DefaultInterface}}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read config: %w", err)
		}
		var partial struct {
			Interface struct {
				Name string `yaml:"name"`
			} `yaml:"interface"`
			Admin struct {
				ControlSocket string `yaml:"control_socket"`
			} `yaml:"admin"`
		}
		if err := yaml.Unmarshal(data, &partial); err != nil {
			return "", yamlErrors(path, err)
		}
		c.Interface.Name = orString(partial.Interface.Name, DefaultInterface)
		c.Admin.ControlSocket = partial.Admin.ControlSocket
	}
	return c.ControlSocket(), nil
}

// Load reads and validates a configuration file. With path "" it returns the
// embedded defaults.
func Load(path string) (*Config, error) {
	if path == "" {
		return Default()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Default is the configuration `sluice up` runs on without a file:
// userspace backend, split mode, a generated key, and the host's current
// resolvers as the default DNS group.
func Default() (*Config, error) {
	ups, err := hostResolvers(defaultResolvConf)
	if err != nil {
		return nil, err
	}
	fc := &fileConfig{}
	fc.Interface.Backend = string(wgdev.Backend("userspace"))
	fc.DNS.Default.Upstreams = ups
	return build(embeddedConfigSource, fc, positions{})
}

// hostResolvers reads the nameserver lines of a resolv.conf.
func hostResolvers(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read host resolvers: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				out = append(out, a.WithZone("").String())
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read host resolvers %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no nameserver in %s: write a config file with dns.default.upstreams", path)
	}
	return out, nil
}

// Parse validates a configuration document; name is used in errors.
func Parse(name string, data []byte) (*Config, error) {
	fc, pos, err := decodeFile(name, data)
	if err != nil {
		return nil, err
	}
	return build(name, fc, pos)
}

var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// build checks every value of fc and composes the package configurations.
func build(name string, fc *fileConfig, pos positions) (*Config, error) {
	c := &Config{Source: name, pos: pos}
	var errs ConfigErrors
	bad := func(key, msg, fix string) { errs = append(errs, c.ErrorAt(key, msg, fix)) }

	// interface
	in := fc.Interface
	c.Interface.Name = orString(in.Name, DefaultInterface)
	if !ifnameRE.MatchString(c.Interface.Name) {
		bad("interface.name", fmt.Sprintf("%q is not a valid interface name", c.Interface.Name), "use 1-15 letters, digits, '_', '.' or '-'")
	}
	c.Interface.Backend = wgdev.Backend(orString(in.Backend, "auto"))
	switch c.Interface.Backend {
	case "auto", "kernel", "userspace":
	default:
		bad("interface.backend", fmt.Sprintf("unknown backend %q", in.Backend), "use auto, kernel or userspace")
	}
	c.Interface.ListenPort = in.ListenPort
	if c.Interface.ListenPort == 0 {
		c.Interface.ListenPort = DefaultListenPort
	}
	if c.Interface.ListenPort < 1 || c.Interface.ListenPort > 65535 {
		bad("interface.listen_port", fmt.Sprintf("port %d out of range", in.ListenPort), "use 1-65535")
	}
	c.Interface.MTU = in.MTU
	if c.Interface.MTU == 0 {
		c.Interface.MTU = wgdev.DefaultMTU
	}
	if c.Interface.MTU < 1280 || c.Interface.MTU > 9000 {
		bad("interface.mtu", fmt.Sprintf("mtu %d out of range", in.MTU), "use 1280-9000 (1280 is the IPv6 minimum; 1420 suits most underlays)")
	}
	c.Interface.Endpoint = in.Endpoint
	if in.Endpoint != "" {
		if _, port, err := net.SplitHostPort(in.Endpoint); err != nil || port == "" {
			bad("interface.endpoint", fmt.Sprintf("%q is not host:port", in.Endpoint), "write it like vpn.example.com:51820 or [2001:db8::1]:51820")
		}
	}
	stateDir := orString(fc.Peers.StateDir, DefaultStateDir)
	c.Interface.PrivateKeyFile = orString(in.PrivateKeyFile, filepath.Join(stateDir, c.Interface.Name+".key"))
	addrs := in.Addresses
	if len(addrs) == 0 && !pos.has("interface.addresses") {
		for _, p := range DefaultAddresses {
			addrs = append(addrs, p.String())
		}
	}
	var have4, have6 bool
	for i, s := range addrs {
		key := fmt.Sprintf("interface.addresses[%d]", i)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			bad(key, fmt.Sprintf("%q is not an address with prefix length", s), "write it like 10.20.0.1/24 or fd20::1/64")
			continue
		}
		if p.Addr() == p.Masked().Addr() {
			bad(key, fmt.Sprintf("%s is the network address, not the gateway's own", s), "use the gateway's address in the prefix, e.g. "+p.Addr().Next().String()+"/"+strconv.Itoa(p.Bits()))
			continue
		}
		if p.Addr().Is4() {
			if have4 {
				bad(key, "more than one IPv4 prefix", "keep one IPv4 and one IPv6 prefix")
			}
			have4 = true
		} else {
			if have6 {
				bad(key, "more than one IPv6 prefix", "keep one IPv4 and one IPv6 prefix")
			}
			have6 = true
		}
		c.Interface.Addresses = append(c.Interface.Addresses, p)
	}
	if !have4 || !have6 {
		bad("interface.addresses", "needs one IPv4 and one IPv6 prefix", "add the missing family, e.g. 10.20.0.1/24 and fd20::1/64: a tunnel without IPv6 leaks AAAA queries and IPv6 traffic")
	}

	// dns
	d := fc.DNS
	c.Mode = Mode(orString(d.Mode, string(DefaultMode)))
	if c.Mode != ModeSplit && c.Mode != ModeFull {
		bad("dns.mode", fmt.Sprintf("unknown mode %q", d.Mode), "use split or full")
	}
	c.DNS = dnsproxy.DefaultConfig()
	listen := d.Listen
	if len(listen) == 0 && !pos.has("dns.listen") {
		for _, a := range DefaultResolvers {
			listen = append(listen, a.String())
		}
	}
	var res4, res6, listenBad bool
	for i, s := range listen {
		key := fmt.Sprintf("dns.listen[%d]", i)
		a, err := netip.ParseAddr(s)
		if err != nil {
			bad(key, fmt.Sprintf("%q is not an IP address", s), "write a plain address like 10.20.0.53 or fd20::53")
			listenBad = true
			continue
		}
		inside := false
		for _, p := range c.Interface.Addresses {
			if p.Masked().Contains(a) {
				inside = true
			}
		}
		if !inside {
			bad(key, fmt.Sprintf("resolver address %s is outside the interface prefixes %s", a, prefixList(c.TunnelPrefixes())),
				"pick an address inside interface.addresses so clients reach it through the tunnel")
			listenBad = true
			continue
		}
		for _, p := range c.Interface.Addresses {
			if p.Masked().Addr() == a {
				bad(key, fmt.Sprintf("%s is the network address of %s", a, p.Masked()), "pick a host address")
			}
		}
		res4 = res4 || a.Is4()
		res6 = res6 || a.Is6()
		c.DNS.Listen = append(c.DNS.Listen, a)
	}
	if (have4 && !res4 || have6 && !res6) && !listenBad { // else the entry's own error says it
		bad("dns.listen", "needs an IPv4 and an IPv6 resolver address", "add one inside each interface prefix, e.g. 10.20.0.53 and fd20::53")
	}
	c.DNS.AllowedSources = c.TunnelPrefixes()
	for i, s := range d.SearchDomains {
		key := fmt.Sprintf("dns.search_domains[%d]", i)
		if _, ok := dns.IsDomainName(s); !ok || s == "" || s == "." {
			bad(key, fmt.Sprintf("%q is not a domain name", s), "write it like corp.example")
			continue
		}
		c.SearchDomains = append(c.SearchDomains, strings.TrimSuffix(strings.ToLower(s), "."))
	}
	c.InternalPrefixes = DefaultInternalPrefixes
	if pos.has("dns.internal_prefixes") {
		c.InternalPrefixes = nil
		for i, s := range d.InternalPrefixes {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				bad(fmt.Sprintf("dns.internal_prefixes[%d]", i), fmt.Sprintf("%q is not a CIDR", s), "write it like 10.0.0.0/8")
				continue
			}
			c.InternalPrefixes = append(c.InternalPrefixes, p.Masked())
		}
	}
	checkUpstreams := func(key string, ups []string) []string {
		var out []string
		for i, s := range ups {
			k := fmt.Sprintf("%s[%d]", key, i)
			u, err := dnsproxy.ParseUpstream(s)
			if err != nil {
				bad(k, err.Error(), `write IP, IP:port, tcp://IP or tls://IP#server.name`)
				continue
			}
			if c.Mode == ModeFull && !containsAddr(c.InternalPrefixes, u.Addr.Addr()) {
				bad(k, fmt.Sprintf("upstream %s is not internal, and full mode allows internal resolvers only", s),
					"use an internal resolver, or add its prefix to dns.internal_prefixes if it really is yours")
			}
			out = append(out, s)
		}
		return out
	}
	seenZones := map[string]bool{}
	for i, z := range d.Zones {
		key := fmt.Sprintf("dns.zones[%d]", i)
		name := strings.TrimSuffix(strings.ToLower(z.Name), ".")
		if _, ok := dns.IsDomainName(z.Name); !ok || name == "" {
			bad(key+".name", fmt.Sprintf("%q is not a zone name", z.Name), "write it like corp.example or 30.10.in-addr.arpa")
			continue
		}
		if seenZones[name] {
			bad(key+".name", fmt.Sprintf("zone %s is listed twice", name), "merge the two entries")
		}
		seenZones[name] = true
		if len(z.Upstreams) == 0 {
			bad(key+".upstreams", fmt.Sprintf("zone %s has no upstreams", name), "list its resolvers, e.g. [10.30.0.53]")
		}
		c.DNS.Zones = append(c.DNS.Zones, dnsproxy.Zone{Name: name, Upstreams: checkUpstreams(key+".upstreams", z.Upstreams)})
	}
	c.DNS.Default.Upstreams = checkUpstreams("dns.default.upstreams", d.Default.Upstreams)
	if len(d.Default.Upstreams) == 0 {
		bad("dns.default.upstreams", "no default upstreams: names outside the zones would fail",
			"list resolvers for every other name (internal ones in full mode)")
	}
	if d.EDNSBufferSize != 0 {
		if d.EDNSBufferSize < 512 || d.EDNSBufferSize > 4096 {
			bad("dns.edns_buffer_size", fmt.Sprintf("%d out of range", d.EDNSBufferSize), "use 512-4096; 1232 avoids fragmentation on every path")
		}
		c.DNS.EDNSBufferSize = d.EDNSBufferSize
	}
	durations := []struct {
		key string
		val string
		dst *time.Duration
	}{
		{"dns.upstream_timeout", d.UpstreamTimeout, &c.DNS.UpstreamTimeout},
		{"dns.cache.max_ttl", d.Cache.MaxTTL, &c.DNS.Cache.MaxTTL},
		{"dns.cache.servfail_ttl", d.Cache.ServfailTTL, &c.DNS.Cache.ServfailTTL},
		{"dns.health.interval", d.Health.Interval, &c.DNS.Health.Interval},
		{"dns.health.timeout", d.Health.Timeout, &c.DNS.Health.Timeout},
		{"peers.persistent_keepalive", fc.Peers.PersistentKeepalive, &c.Peers.PersistentKeepalive},
	}
	for _, du := range durations {
		if du.val == "" {
			continue
		}
		v, err := time.ParseDuration(du.val)
		if err != nil || v < 0 {
			bad(du.key, fmt.Sprintf("%q is not a duration", du.val), "write it like 2s, 500ms or 1h")
			continue
		}
		*du.dst = v
	}
	if c.DNS.UpstreamTimeout >= 2*time.Second {
		bad("dns.upstream_timeout", "must stay under 2s", "clients move on to another resolver (a leak) after their own timeout; keep it at 1s or less")
	}
	c.DNS.TLSCAFile = d.TLSCAFile
	c.DNS.QueryLog.Path = d.QueryLog
	if d.Cache.Size != nil {
		c.DNS.Cache.Size = *d.Cache.Size
	}
	if d.Health.Name != "" {
		c.DNS.Health.Name = d.Health.Name
	}
	if d.Health.Failures != 0 {
		c.DNS.Health.Failures = d.Health.Failures
	}
	c.DNS.Health.Disabled = d.Health.Disabled
	if d.Policy.Canaries != nil {
		c.DNS.Policy.Canaries = *d.Policy.Canaries
	}
	if d.Policy.BlockDoHNames != nil {
		c.DNS.Policy.BlockDoHNames = *d.Policy.BlockDoHNames
	}
	c.DNS.Policy.BlocklistFile = d.Policy.BlocklistFile
	c.DNS.Policy.Allowlist = d.Policy.Allowlist
	if d.Limits.PeerQPS != nil {
		c.DNS.Limits.PeerQPS = *d.Limits.PeerQPS
	}
	if d.Limits.PeerBurst != nil {
		c.DNS.Limits.PeerBurst = *d.Limits.PeerBurst
	}
	if d.Limits.MaxInflight != nil {
		c.DNS.Limits.MaxInflight = *d.Limits.MaxInflight
	}

	buildEncrypted(c, fc, stateDir, bad)

	// enforce
	e := fc.Enforce
	defOff := firewall.Action("redirect")
	if c.Mode == ModeFull {
		defOff = "reject"
	}
	actions := []struct {
		key, val string
		def      firewall.Action
		allowed  []string
		dst      *firewall.Action
	}{
		{"enforce.off_policy_dns", e.OffPolicyDNS, defOff, []string{"redirect", "reject"}, &c.Enforce.OffPolicyDNS},
		{"enforce.dot", e.DoT, "reject", []string{"reject", "allow", "redirect"}, &c.Enforce.DoT},
		{"enforce.doh", e.DoH, "reject", []string{"reject", "allow"}, &c.Enforce.DoH},
	}
	for _, a := range actions {
		*a.dst = a.def
		if a.val == "" {
			continue
		}
		ok := false
		for _, v := range a.allowed {
			ok = ok || v == a.val
		}
		if !ok {
			bad(a.key, fmt.Sprintf("unknown action %q", a.val), "use "+strings.Join(a.allowed, " or "))
			continue
		}
		*a.dst = firewall.Action(a.val)
	}
	if c.Mode == ModeFull && (c.Enforce.DoT == "allow" || c.Enforce.DoH == "allow") {
		key := "enforce.dot"
		if c.Enforce.DoH == "allow" {
			key = "enforce.doh"
		}
		bad(key, "full mode must reject DoT, DoQ and DoH", "remove the key or set it to reject")
	}
	checkEncryptedEnforce(c, bad)
	c.Enforce.DoHIPsFile = e.DoHIPsFile
	if e.DoHIPsFile != "" {
		if _, err := firewall.LoadDoHFile(e.DoHIPsFile); err != nil {
			bad("enforce.doh_ips_file", err.Error(), "one IP or CIDR per line, # starts a comment")
		}
	}
	for i, s := range e.DoHAllow {
		p, err := parsePrefixOrAddr(s)
		if err != nil {
			bad(fmt.Sprintf("enforce.doh_allow[%d]", i), fmt.Sprintf("%q is not an IP or CIDR", s), "write it like 192.0.2.10 or 2001:db8::/48")
			continue
		}
		c.Enforce.DoHAllow = append(c.Enforce.DoHAllow, p)
	}
	c.Enforce.Egress = e.EgressInterface
	if e.EgressInterface != "" && !ifnameRE.MatchString(e.EgressInterface) {
		bad("enforce.egress_interface", fmt.Sprintf("%q is not a valid interface name", e.EgressInterface), "name the host's internet-facing interface, e.g. eth0")
	}
	c.Enforce.PeerToPeer = e.PeerToPeer
	c.Enforce.KeepOnStop = e.KeepOnStop
	c.FirewallTable = orString(e.Table, firewall.DefaultTable)
	if !ifnameRE.MatchString(c.FirewallTable) {
		bad("enforce.table", fmt.Sprintf("%q is not a valid table name", e.Table), "use letters, digits, '_', '.' or '-'")
	}

	// peers
	c.Peers.StateDir = stateDir
	if c.Peers.PersistentKeepalive == 0 {
		c.Peers.PersistentKeepalive = peers.DefaultKeepalive
	}
	for i, s := range fc.Peers.Routes {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			bad(fmt.Sprintf("peers.routes[%d]", i), fmt.Sprintf("%q is not a CIDR", s), "write it like 10.30.0.0/16 or fd30::/48")
			continue
		}
		if p != p.Masked() {
			bad(fmt.Sprintf("peers.routes[%d]", i), fmt.Sprintf("%s has host bits set", s), "write the network: "+p.Masked().String())
			continue
		}
		c.Peers.Routes = append(c.Peers.Routes, p)
	}
	var def4, def6 bool
	for _, r := range c.Peers.Routes {
		def4 = def4 || r.Bits() == 0 && r.Addr().Is4()
		def6 = def6 || r.Bits() == 0 && r.Addr().Is6()
	}
	if def4 != def6 {
		bad("peers.routes", "routes one family's default route but not the other's: the other family leaks around the tunnel",
			"add both 0.0.0.0/0 and ::/0, or use dns.mode: full")
	}
	if len(errs) == 0 {
		if err := c.Pool().Validate(); err != nil {
			bad("interface.addresses", err.Error(), "use larger prefixes, e.g. /24 for IPv4 and /64 for IPv6")
		}
	}

	// admin
	c.Admin.Listen = fc.Admin.Listen
	if !pos.has("admin.listen") {
		c.Admin.Listen = DefaultAdminListen
	}
	if c.Admin.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			bad("admin.listen", fmt.Sprintf("%q is not host:port", c.Admin.Listen), "write it like 127.0.0.1:9153, or \"\" to disable")
		}
	}
	c.Admin.ControlSocket = fc.Admin.ControlSocket

	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

func (p positions) has(key string) bool { _, ok := p[key]; return ok }

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// errNoDaemon is returned by control-socket calls when no daemon listens.
var errNoDaemon = errors.New("sluice is not running")
