package gateway

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

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
	DefaultStateRoot     = "/var/lib/sluice" // one subdirectory per interface
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

// stateRoot is DefaultStateRoot; tests point it at a temporary directory.
var stateRoot = DefaultStateRoot

// DefaultStateDir is the state directory of an interface when peers.state_dir
// is not set: <DefaultStateRoot>/<name>, so that two instances on one host
// never share a peer store.
func DefaultStateDir(ifname string) string { return filepath.Join(stateRoot, ifname) }

// legacyStateDir reports whether the interface still keeps its state in the
// shared root, as before per-interface directories, and must go on doing so
// (its peers and key would otherwise vanish): <root>/<name>/ holds neither
// key nor store, and either <root>/<name>.key exists, or <root>/peers.json
// exists with no <root>/*.key beside it (a store whose owner kept its key
// elsewhere). Such an installation keeps working where it is (moving a live
// store under a running daemon is not safe); `sluice check` warns and says
// how to move, and fails if two configurations now share it.
func legacyStateDir(ifname string) bool {
	for _, f := range []string{ifname + ".key", peers.StoreFile} {
		if _, err := os.Stat(filepath.Join(stateRoot, ifname, f)); err == nil {
			return false
		}
	}
	if _, err := os.Stat(filepath.Join(stateRoot, ifname+".key")); err == nil {
		return true
	}
	if _, err := os.Stat(filepath.Join(stateRoot, peers.StoreFile)); err != nil {
		return false
	}
	keys, _ := filepath.Glob(filepath.Join(stateRoot, "*.key"))
	return len(keys) == 0
}

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
	Source           string       // file name, or "(embedded defaults)"
	Warnings         ConfigErrors // what `sluice check` warns about; never fatal
	Interface        InterfaceConfig
	Mode             Mode
	SearchDomains    []string
	InternalPrefixes []netip.Prefix
	DNS              dnsproxy.Config
	Enforce          firewall.Config
	FirewallTable    string
	Peers            peers.Config
	Groups           GroupsConfig // groups.go
	Admin            AdminConfig
	Fleet            FleetConfig // fleet_config.go
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

// GatewayAddrs are the gateway's own tunnel addresses (the interface's).
func (c *Config) GatewayAddrs() []netip.Addr {
	out := make([]netip.Addr, len(c.Interface.Addresses))
	for i, a := range c.Interface.Addresses {
		out[i] = a.Addr()
	}
	return out
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
	fc, pos, early, err := decodeFile(name, data)
	if err != nil {
		return nil, err
	}
	return build(name, fc, pos, early...)
}

var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// builder collects the problems found while building a Config.
type builder struct {
	c    *Config
	errs ConfigErrors
	pos  positions
}

// bad records a problem, unless the key already has one (from decoding).
func (b *builder) bad(key, msg, fix string) {
	for _, e := range b.errs {
		if e.Key == key && e.value {
			return
		}
	}
	b.errs = append(b.errs, b.c.ErrorAt(key, msg, fix))
}

func (b *builder) warn(key, msg, fix string) {
	b.c.Warnings = append(b.c.Warnings, b.c.ErrorAt(key, msg, fix))
}

// in and warnIn give a package's section builder its reporters: the keys it
// reports are relative to the section.
func (b *builder) in(section string) func(key, msg, fix string) {
	return func(key, msg, fix string) { b.bad(joinKey(section, key), msg, fix) }
}

func (b *builder) warnIn(section string) func(key, msg, fix string) {
	return func(key, msg, fix string) { b.warn(joinKey(section, key), msg, fix) }
}

// build checks every value of fc and composes the package configurations:
// each section by its own function, the packages' sections by the packages.
func build(name string, fc *fileConfig, pos positions, early ...*ConfigError) (*Config, error) {
	c := &Config{Source: name, pos: pos}
	b := &builder{c: c, pos: pos, errs: early}
	b.buildInterface(&fc.Interface, fc.Peers.StateDir)
	b.buildDNS(&fc.DNS)
	buildEncrypted(c, fc, c.Peers.StateDir, b.bad)
	c.Enforce, c.FirewallTable = fc.Enforce.Build(c.FullTunnel(), b.in("enforce"))
	checkEncryptedEnforce(c, b.bad)
	b.buildPeers(&fc.Peers)
	buildGroups(c, fc, b.bad)
	b.buildAdmin(&fc.Admin)
	buildFleet(c, &fc.Fleet, b.bad)
	if len(b.errs) > 0 {
		// In file order; errors about absent keys (line 0) last.
		slices.SortStableFunc(b.errs, func(x, y *ConfigError) int { return cmp.Compare(lineOrder(x), lineOrder(y)) })
		return nil, b.errs
	}
	return c, nil
}

func lineOrder(e *ConfigError) int {
	if e.Line == 0 {
		return math.MaxInt
	}
	return e.Line
}

func (b *builder) buildInterface(in *interfaceFile, stateDir string) {
	c, bad := b.c, b.bad
	c.Interface.Name = orString(in.Name, DefaultInterface)
	if !ifnameRE.MatchString(c.Interface.Name) {
		bad("interface.name", fmt.Sprintf("%q is not a valid interface name", c.Interface.Name), "use 1-15 letters, digits, '_', '.' or '-'")
	}
	c.Interface.Backend = wgdev.Backend(orString(in.Backend, string(wgdev.BackendAuto)))
	switch c.Interface.Backend {
	case wgdev.BackendAuto, wgdev.BackendKernel, wgdev.BackendUserspace:
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
	if c.Interface.MTU < wgdev.MinMTU || c.Interface.MTU > wgdev.MaxMTU {
		bad("interface.mtu", fmt.Sprintf("mtu %d out of range", in.MTU),
			fmt.Sprintf("use %d-%d (%d is the IPv6 minimum; %d suits most underlays)", wgdev.MinMTU, wgdev.MaxMTU, wgdev.MinMTU, wgdev.DefaultMTU))
	}
	c.Interface.Endpoint = in.Endpoint
	if in.Endpoint != "" {
		if _, port, err := net.SplitHostPort(in.Endpoint); err != nil || port == "" {
			bad("interface.endpoint", fmt.Sprintf("%q is not host:port", in.Endpoint), "write it like vpn.example.com:51820 or [2001:db8::1]:51820")
		}
	} else if c.Source != embeddedConfigSource {
		b.warn("interface.endpoint", "no endpoint: `sluice peer config` cannot write where clients dial without --endpoint",
			"set interface.endpoint to host:port, e.g. vpn.example.com:51820, or pass --endpoint to sluice peer config")
	}
	if stateDir == "" {
		stateDir = DefaultStateDir(c.Interface.Name)
		if legacyStateDir(c.Interface.Name) {
			stateDir = stateRoot
			b.warn("peers.state_dir", fmt.Sprintf("state of %s is in the shared directory %s (the old default)", c.Interface.Name, stateRoot),
				fmt.Sprintf("with sluice stopped, move %s (and %s, if there) into %s, or set peers.state_dir: %s to keep them",
					filepath.Join(stateRoot, peers.StoreFile), filepath.Join(stateRoot, c.Interface.Name+".key"), DefaultStateDir(c.Interface.Name), stateRoot))
		}
	}
	c.Peers.StateDir = stateDir
	c.Interface.PrivateKeyFile = orString(in.PrivateKeyFile, filepath.Join(stateDir, c.Interface.Name+".key"))
	addrs := in.Addresses
	if len(addrs) == 0 && !b.pos.has("interface.addresses") {
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
}

func (b *builder) buildDNS(d *dnsFile) {
	c, bad := b.c, b.bad
	c.Mode = Mode(orString(d.Mode, string(DefaultMode)))
	if c.Mode != ModeSplit && c.Mode != ModeFull {
		bad("dns.mode", fmt.Sprintf("unknown mode %q", d.Mode), "use split or full")
	}
	c.DNS = dnsproxy.DefaultConfig()
	listen := d.Listen
	if len(listen) == 0 && !b.pos.has("dns.listen") {
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
	have4, have6 := false, false
	for _, p := range c.Interface.Addresses {
		have4, have6 = have4 || p.Addr().Is4(), have6 || p.Addr().Is6()
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
	if b.pos.has("dns.internal_prefixes") {
		c.InternalPrefixes = nil
		for i, s := range d.InternalPrefixes {
			key := fmt.Sprintf("dns.internal_prefixes[%d]", i)
			p, err := netip.ParsePrefix(s)
			if err != nil {
				bad(key, fmt.Sprintf("%q is not a CIDR", s), "write it like 10.0.0.0/8")
				continue
			}
			if p.Bits() == 0 {
				bad(key, fmt.Sprintf("%s is a default route: every resolver on the internet would count as internal", s),
					"list only your own networks, e.g. 10.0.0.0/8 and fc00::/7")
				continue
			}
			c.InternalPrefixes = append(c.InternalPrefixes, p.Masked())
		}
	}
	upstreams := func(key string, ss []string) []dnsproxy.Upstream {
		var out []dnsproxy.Upstream
		for i, s := range ss {
			k := fmt.Sprintf("%s[%d]", key, i)
			u, err := dnsproxy.ParseUpstream(s)
			if err != nil {
				bad(k, err.Error(), `write IP, IP:port, [IPv6]:port, tcp://IP or tls://IP#server.name`)
				continue
			}
			if c.Mode == ModeFull && !containsAddr(c.InternalPrefixes, u.Addr.Addr()) {
				bad(k, fmt.Sprintf("upstream %s is not internal, and full mode allows internal resolvers only", s),
					"use an internal resolver, or add its prefix to dns.internal_prefixes if it really is yours")
			}
			out = append(out, u)
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
		c.DNS.Zones = append(c.DNS.Zones, dnsproxy.Zone{Name: name, Upstreams: upstreams(key+".upstreams", z.Upstreams)})
	}
	c.DNS.Default.Upstreams = upstreams("dns.default.upstreams", d.Default.Upstreams)
	if len(d.Default.Upstreams) == 0 {
		bad("dns.default.upstreams", "no default upstreams: names outside the zones would fail",
			"list resolvers for every other name (internal ones in full mode)")
	}
	d.FileConfig.Apply(&c.DNS, b.in("dns"))
}

func (b *builder) buildPeers(f *peers.FileConfig) {
	c := b.c
	stateDir := c.Peers.StateDir // chosen with the key file in buildInterface
	c.Peers = f.Build(b.in("peers"), b.warnIn("peers"))
	c.Peers.StateDir = stateDir
	if len(b.errs) == 0 {
		if err := c.Pool().Validate(); err != nil {
			b.bad("interface.addresses", err.Error(), "use larger prefixes, e.g. /24 for IPv4 and /64 for IPv6")
		}
	}
}

func (b *builder) buildAdmin(a *adminFile) {
	c := b.c
	c.Admin.Listen = a.Listen
	if !b.pos.has("admin.listen") {
		c.Admin.Listen = DefaultAdminListen
	}
	if c.Admin.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			b.bad("admin.listen", fmt.Sprintf("%q is not host:port", c.Admin.Listen), "write it like 127.0.0.1:9153, or \"\" to disable")
		}
	}
	c.Admin.ControlSocket = a.ControlSocket
}

// Preflight opens or creates everything `sluice up` needs from the file
// system (key file and its directory, state directory, blocklist, CA bundle,
// query log and its directory, DoH list), before anything on the host is
// changed: gateway.Run calls it first.
func Preflight(c *Config) error { return preflight(c, true) }

// CheckFiles is Preflight without creating anything: what `sluice check`
// runs. A missing directory passes when it could be created.
func CheckFiles(c *Config) error { return preflight(c, false) }

func preflight(c *Config, create bool) error {
	b := &builder{c: c, pos: c.pos}
	dir := func(key, path, what string) bool {
		var err error
		if create {
			err = os.MkdirAll(path, 0o700)
		} else {
			err = dnsproxy.CheckCreatable(path)
		}
		if err != nil {
			b.bad(key, fmt.Sprintf("%s: %v", what, err), "create the directory, or point "+key+" somewhere sluice may write")
		}
		return err == nil
	}
	if dir("interface.private_key_file", filepath.Dir(c.Interface.PrivateKeyFile), "key directory") {
		if _, err := ReadKey(c.Interface.PrivateKeyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.bad("interface.private_key_file", err.Error(), "")
		}
	}
	dir("peers.state_dir", c.Peers.StateDir, "state directory")
	c.DNS.Preflight(create, b.in("dns"))
	c.Enforce.Preflight(b.in("enforce"))
	if len(b.errs) > 0 {
		return b.errs
	}
	return nil
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

// errNoDaemon is returned by control-socket calls when no daemon listens.
var errNoDaemon = errors.New("sluice is not running")
