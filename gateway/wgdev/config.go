package wgdev

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Backend selects the WireGuard implementation.
type Backend string

// Backends.
const (
	// BackendAuto uses the kernel module when the kernel supports the
	// "wireguard" link type and falls back to the userspace implementation.
	BackendAuto Backend = "auto"
	// BackendKernel requires the kernel module.
	BackendKernel Backend = "kernel"
	// BackendUserspace runs the embedded wireguard-go on a TUN device.
	BackendUserspace Backend = "userspace"
)

// Defaults and limits.
const (
	// DefaultMTU leaves room for the WireGuard overhead over IPv6 on a 1500
	// byte underlay (1500 - 40 IPv6 - 8 UDP - 32 WireGuard).
	DefaultMTU = 1420
	// MinMTU is the smallest MTU that still carries IPv6.
	MinMTU = 1280
	// MaxMTU is the largest MTU sluice accepts: jumbo frames. An underlay
	// that carries more does not exist in practice, and a larger value is
	// a typo. The configuration checks against these same constants.
	MaxMTU = 9000
	// maxNameLen is IFNAMSIZ minus the terminating NUL.
	maxNameLen = 15
)

// Sentinel errors.
var (
	// ErrExists reports that an interface, or a live userspace UAPI socket,
	// with the requested name already exists. Open leaves it untouched.
	ErrExists = errors.New("wireguard interface already exists")
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("wireguard device closed")
)

// Config describes the interface to bring up.
type Config struct {
	// Name is the interface name (at most 15 bytes).
	Name string
	// Backend is auto, kernel or userspace; empty means auto.
	Backend Backend
	// PrivateKey is the interface's private key. It is never logged.
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port; 0 picks a free one.
	ListenPort int
	// MTU of the interface; 0 means DefaultMTU.
	MTU int
	// Addresses are the interface addresses with their prefix length, v4
	// and v6 (10.20.0.1/24, fd20::1/64). The kernel adds the connected routes.
	Addresses []netip.Prefix
	// ExtraAddrs are single addresses (the in-tunnel resolvers) added as /32
	// and /128; IPv6 ones skip duplicate address detection so a listener can
	// bind them at once.
	ExtraAddrs []netip.Addr
	// FirewallMark marks the tunnel's UDP packets; 0 means none.
	FirewallMark int
}

// Options carries the collaborators of a Device.
type Options struct {
	// Logger receives the device's logs; nil discards them.
	Logger *slog.Logger
}

// PeerConfig is the desired state of one peer.
type PeerConfig struct {
	PublicKey wgtypes.Key
	// PresharedKey is optional; nil means none.
	PresharedKey *wgtypes.Key
	// AllowedIPs routed to the peer: on the gateway the peer's /32 and /128.
	AllowedIPs []netip.Prefix
	// Endpoint is where to reach the peer (client role); nil leaves the
	// endpoint the peer roams to untouched.
	Endpoint *net.UDPAddr
	// PersistentKeepalive is the keepalive interval; 0 disables it.
	PersistentKeepalive time.Duration
}

// normalize validates cfg and fills defaults. It returns a copy with
// canonical (unmapped, deduplicated) addresses.
func (cfg Config) normalize() (Config, error) {
	out := cfg
	if cfg.Name == "" || len(cfg.Name) > maxNameLen {
		return out, fmt.Errorf("check interface name %q: must be 1 to %d bytes", cfg.Name, maxNameLen)
	}
	for _, r := range cfg.Name {
		if r <= ' ' || r >= 0x7f || r == '/' || r == ':' {
			return out, fmt.Errorf("check interface name %q: invalid character %q", cfg.Name, r)
		}
	}
	switch cfg.Backend {
	case "":
		out.Backend = BackendAuto
	case BackendAuto, BackendKernel, BackendUserspace:
	default:
		return out, fmt.Errorf("check backend %q: want auto, kernel or userspace", cfg.Backend)
	}
	if cfg.PrivateKey == (wgtypes.Key{}) {
		return out, fmt.Errorf("check interface %q: private key is required", cfg.Name)
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		return out, fmt.Errorf("check listen port %d: out of range", cfg.ListenPort)
	}
	if out.MTU == 0 {
		out.MTU = DefaultMTU
	}
	if out.MTU < MinMTU || out.MTU > MaxMTU {
		return out, fmt.Errorf("check mtu %d: want %d to %d", out.MTU, MinMTU, MaxMTU)
	}
	if cfg.FirewallMark < 0 || int64(cfg.FirewallMark) > 0xffffffff {
		return out, fmt.Errorf("check firewall mark %d: out of range", cfg.FirewallMark)
	}
	out.Addresses = nil
	seen := make(map[netip.Prefix]bool)
	for _, p := range cfg.Addresses {
		p, ok := unmapPrefix(p)
		if !ok {
			return out, fmt.Errorf("check address %q: invalid prefix", p.String())
		}
		if !seen[p] {
			seen[p] = true
			out.Addresses = append(out.Addresses, p)
		}
	}
	out.ExtraAddrs = nil
	seenAddr := make(map[netip.Addr]bool)
	for _, a := range cfg.ExtraAddrs {
		if !a.IsValid() {
			return out, fmt.Errorf("check extra address %q: invalid address", a.String())
		}
		a = a.Unmap()
		if !seenAddr[a] {
			seenAddr[a] = true
			out.ExtraAddrs = append(out.ExtraAddrs, a)
		}
	}
	return out, nil
}

// unmapPrefix turns a 4-in-6 prefix (::ffff:10.20.0.1/120) into its IPv4
// form (10.20.0.1/24); it reports false for invalid prefixes and for 4-in-6
// prefixes shorter than /96.
func unmapPrefix(p netip.Prefix) (netip.Prefix, bool) {
	if !p.IsValid() {
		return p, false
	}
	if !p.Addr().Is4In6() {
		return p, true
	}
	if p.Bits() < 96 {
		return p, false
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96), true
}

// hostPrefix returns a as a single-address prefix (/32 or /128).
func hostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}

// ipNet converts p to the net.IPNet wgctrl and netlink use, keeping host bits.
func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf converts n back to a canonical, masked netip.Prefix.
func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	p, err := a.Prefix(ones)
	if err != nil {
		return netip.Prefix{}, false
	}
	return p, true
}
