package peers

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/skip2/go-qrcode"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Rendering defaults.
const (
	// DefaultTunnelName names the tunnel in formats that carry a name.
	DefaultTunnelName = "sluice"
	// DefaultApplePlatform is the WireGuard app the mobileconfig targets.
	DefaultApplePlatform = "ios"
	// qrModulePixels is the size of one QR module in the PNG.
	qrModulePixels = 8
	// minMTU is the smallest MTU a client may get: IPv6 needs 1280.
	minMTU = 1280
)

// Rendering errors the CLI turns into advice.
var (
	// ErrNoEndpoint: interface.endpoint is not configured.
	ErrNoEndpoint = errors.New("no endpoint: set interface.endpoint (host:port clients connect to) in the sluice configuration")
	// ErrNoResolvers: no in-tunnel resolver address to put in the config.
	ErrNoResolvers = errors.New("no in-tunnel resolver address: set dns.listen in the sluice configuration")
	// ErrNoPrivateKey: the format needs the device's private key, which
	// sluice does not have because the user brought their own public key.
	ErrNoPrivateKey = errors.New("the device brought its own public key, so sluice has no private key to put in this format: use --format conf and paste the private key on the device")
)

// ClientParams is everything a client configuration is rendered from.
type ClientParams struct {
	Peer            Peer
	ServerPublicKey wgtypes.Key
	// Endpoint is host:port; required (ErrNoEndpoint).
	Endpoint string
	// MTU of the client interface; 0 leaves it to the client.
	MTU        int
	FullTunnel bool
	Routes     []netip.Prefix
	// Resolvers are the in-tunnel resolver addresses, IPv4 and IPv6.
	Resolvers []netip.Addr
	// GatewayAddrs are the gateway's own tunnel addresses. Split-mode
	// configs route them too: the table's ICMP rejections of off-policy DNS
	// and refused flows come from them, and a client that dropped those
	// would wait for a timeout instead of failing at once.
	GatewayAddrs  []netip.Addr
	SearchDomains []string
	// Zones are the internal zones the gateway forwards conditionally
	// (reverse zones included). Formats with per-domain DNS routing (nrpt,
	// resolved) send them to the in-tunnel resolvers besides the search
	// domains; the wg-quick DNS line does not list them.
	Zones []string
	// Keepalive is PersistentKeepalive: 0 means DefaultKeepalive, a
	// negative value leaves it out.
	Keepalive time.Duration
	// TunnelName names the tunnel (mobileconfig, nrpt); DefaultTunnelName
	// when empty.
	TunnelName string
	// ApplePlatform selects the WireGuard app a mobileconfig is for: "ios"
	// (DefaultApplePlatform) or "macos".
	ApplePlatform string
	// Encrypted, when set, points the device's encrypted DNS at the DoT/DoH
	// listeners of the in-tunnel resolvers (mobileconfig, nrpt, resolved).
	Encrypted *EncryptedDNS

	rand io.Reader // UUID source for mobileconfig; nil = crypto/rand
}

// Formats lists the formats Render accepts.
func Formats() []string {
	return []string{"conf", "qr", "png", "nrpt", "mobileconfig", "resolved"}
}

// ValidateFormat reports a format Render does not know.
func ValidateFormat(format string) error {
	for _, f := range Formats() {
		if f == format {
			return nil
		}
	}
	return fmt.Errorf("unknown format %q (use one of %s)", format, strings.Join(Formats(), ", "))
}

// Render renders the client configuration of p.Peer in format:
//
//   - conf: a wg-quick configuration;
//   - qr: the conf as a QR code for a terminal (UTF-8 half blocks);
//   - png: the conf as a QR code PNG image;
//   - nrpt: a PowerShell snippet adding Windows NRPT rules so the listed
//     domains (or every name in full-tunnel mode) go to the in-tunnel
//     resolvers only; the conf is imported into the WireGuard app;
//   - mobileconfig: an Apple configuration profile for the WireGuard app;
//   - resolved: a wg-quick configuration for Linux with systemd-resolved,
//     setting per-link DNS with resolvectl in PostUp instead of a DNS line.
func Render(format string, p ClientParams) ([]byte, error) {
	if err := p.normalize(); err != nil {
		return nil, fmt.Errorf("render %s config for %s: %w", format, p.Peer.ID(), err)
	}
	var (
		out []byte
		err error
	)
	switch format {
	case "conf":
		out = []byte(renderConf(p, confOptions{comments: true}))
	case "qr", "png":
		if p.Peer.PrivateKey == nil {
			err = ErrNoPrivateKey
			break
		}
		var q *qrcode.QRCode
		if q, err = qrcode.New(renderConf(p, confOptions{}), qrcode.Medium); err != nil {
			break
		}
		if format == "qr" {
			out = []byte(q.ToSmallString(false))
		} else {
			out, err = q.PNG(-qrModulePixels)
		}
	case "nrpt":
		out = []byte(renderNRPT(p))
	case "mobileconfig":
		out, err = renderMobileconfig(p)
	case "resolved":
		out = []byte(renderConf(p, confOptions{comments: true, resolved: true}))
	default:
		err = fmt.Errorf("unknown format (use one of %s)", strings.Join(Formats(), ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("render %s config for %s: %w", format, p.Peer.ID(), err)
	}
	return out, nil
}

var (
	tunnelNameRE = regexp.MustCompile(`^[a-zA-Z0-9_=+.-]{1,15}$`)
	domainRE     = regexp.MustCompile(`^([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$`)
	hostRE       = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
)

// normalize checks p and fills defaults, so that every value written into
// a config is known to be free of quotes, separators and newlines.
func (p *ClientParams) normalize() error {
	if p.Endpoint == "" {
		return ErrNoEndpoint
	}
	if err := p.Encrypted.check(); err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(p.Endpoint)
	if err != nil {
		return fmt.Errorf("endpoint %q: %w", p.Endpoint, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("endpoint %q: port must be 1-65535", p.Endpoint)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		p.Endpoint = net.JoinHostPort(a.Unmap().String(), port)
	} else if !hostRE.MatchString(host) {
		return fmt.Errorf("endpoint %q: host is neither an address nor a DNS name", p.Endpoint)
	}
	if !p.Peer.IPv4.IsValid() && !p.Peer.IPv6.IsValid() {
		return fmt.Errorf("peer has no tunnel address")
	}
	if p.ServerPublicKey == (wgtypes.Key{}) {
		return fmt.Errorf("server public key not set")
	}
	var res []netip.Addr
	for _, r := range p.Resolvers {
		if r.IsValid() {
			res = append(res, r.Unmap().WithZone(""))
		}
	}
	if len(res) == 0 {
		return ErrNoResolvers
	}
	p.Resolvers = res
	doms := make([]string, 0, len(p.SearchDomains))
	for _, d := range p.SearchDomains {
		d = strings.TrimSuffix(strings.ToLower(d), ".")
		if len(d) > 253 || !domainRE.MatchString(d) {
			return fmt.Errorf("search domain %q is not a DNS name", d)
		}
		doms = append(doms, d)
	}
	p.SearchDomains = doms
	zones := make([]string, 0, len(p.Zones))
	for _, d := range p.Zones {
		d = strings.TrimSuffix(strings.ToLower(d), ".")
		if len(d) > 253 || !domainRE.MatchString(d) {
			return fmt.Errorf("zone %q is not a DNS name", d)
		}
		zones = append(zones, d)
	}
	p.Zones = zones
	if p.MTU != 0 && (p.MTU < minMTU || p.MTU > 65535) {
		return fmt.Errorf("mtu %d out of range %d-65535", p.MTU, minMTU)
	}
	switch {
	case p.Keepalive == 0:
		p.Keepalive = DefaultKeepalive
	case p.Keepalive > 0 && (p.Keepalive < time.Second || p.Keepalive > MaxKeepalive):
		return fmt.Errorf("keepalive %s out of range 1s-65535s", p.Keepalive)
	}
	if p.TunnelName == "" {
		p.TunnelName = DefaultTunnelName
	}
	if !tunnelNameRE.MatchString(p.TunnelName) {
		return fmt.Errorf("tunnel name %q: use 1 to 15 characters a-z A-Z 0-9 _ = + . -", p.TunnelName)
	}
	if p.ApplePlatform == "" {
		p.ApplePlatform = DefaultApplePlatform
	}
	if p.ApplePlatform != "ios" && p.ApplePlatform != "macos" {
		return fmt.Errorf("apple platform %q: use ios or macos", p.ApplePlatform)
	}
	return nil
}

type confOptions struct {
	comments bool // leading explanation comments
	resolved bool // resolvectl PostUp instead of the DNS line
}

// privateKeyPlaceholder is written instead of a private key sluice does not
// have; wg(8) rejects it, so the config cannot be used by accident.
func privateKeyPlaceholder(pub wgtypes.Key) string {
	return "<private key of the device whose public key is " + pub.String() + ">"
}

func joinAddrs(as []netip.Addr, sep string) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// renderConf writes the wg-quick configuration; p is normalized.
func renderConf(p ClientParams, o confOptions) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	if o.comments {
		line("# sluice client config for %s", p.Peer.ID())
		line("# Gateway %s. DNS is answered inside the tunnel: keep the resolver", p.Endpoint)
		line("# addresses (%s) in AllowedIPs.", joinAddrs(p.Resolvers, ", "))
	}
	line("[Interface]")
	if p.Peer.PrivateKey != nil {
		line("PrivateKey = %s", p.Peer.PrivateKey)
	} else {
		line("# This device brought its own key pair: replace the next line with its private key.")
		line("PrivateKey = %s", privateKeyPlaceholder(p.Peer.PublicKey))
	}
	line("Address = %s", joinPrefixes(p.Peer.AllowedIPs()))
	if !o.resolved {
		dns := joinAddrs(p.Resolvers, ", ")
		if len(p.SearchDomains) > 0 {
			dns += ", " + strings.Join(p.SearchDomains, ", ")
		}
		line("DNS = %s", dns)
	}
	if p.MTU != 0 {
		line("MTU = %d", p.MTU)
	}
	if o.resolved {
		writeResolvedHooks(&b, p)
	}
	line("")
	line("[Peer]")
	line("PublicKey = %s", p.ServerPublicKey)
	if p.Peer.PresharedKey != nil {
		line("PresharedKey = %s", p.Peer.PresharedKey)
	}
	line("Endpoint = %s", p.Endpoint)
	line("AllowedIPs = %s", joinPrefixes(AllowedIPs(p.FullTunnel, p.Routes, append(slices.Clone(p.Resolvers), p.GatewayAddrs...))))
	if p.Keepalive > 0 {
		line("PersistentKeepalive = %d", int(p.Keepalive/time.Second))
	}
	return b.String()
}

// HoldsPrivateKey reports whether Render(format) for p carries the device's
// private key (and so must be written 0600 and kept off shared screens).
// A device that brought its own key gets a placeholder instead; NRPT
// scripts carry no key at all.
func HoldsPrivateKey(format string, p Peer) bool {
	return p.PrivateKey != nil && format != "nrpt"
}
