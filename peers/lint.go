package peers

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Finding severities.
const (
	SeverityError   = "error"
	SeverityWarning = "warning"
)

// Finding is one problem Lint found in a client configuration. Line is
// 1-based, 0 when the problem is a missing section. Fix says what to change.
type Finding struct {
	Line     int
	Severity string // SeverityError or SeverityWarning
	Message  string
	Fix      string
}

func (f Finding) String() string {
	return fmt.Sprintf("line %d: %s: %s (fix: %s)", f.Line, f.Severity, f.Message, f.Fix)
}

// MaxLintSize bounds what ReadLintFile reads: a wg-quick file is a few
// hundred bytes, a server's with thousands of peers a few hundred KiB.
const MaxLintSize = 4 << 20

// ErrTooLarge is returned by ReadLintFile for a file over MaxLintSize.
var ErrTooLarge = errors.New("too large for a wg-quick config")

// ReadLintFile reads a config to lint, at most MaxLintSize bytes, so that a
// device or a huge file (/dev/zero) fails fast instead of filling memory.
func ReadLintFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxLintSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxLintSize {
		return nil, fmt.Errorf("read %s: %w (over %d MiB)", path, ErrTooLarge, MaxLintSize>>20)
	}
	return data, nil
}

// LintOptions tunes Lint.
type LintOptions struct {
	// TunnelMTU is the gateway tunnel's MTU; 0 skips the MTU check.
	TunnelMTU int
}

// confLine is one key = value line of a wg-quick file.
type confLine struct {
	key, value string // key lower-cased
	line       int
}

type confSection struct {
	name  string // "interface" or "peer"
	line  int
	lines []confLine
}

// parseWgQuick splits a wg-quick configuration into sections. Like
// wg-quick, everything after '#' is a comment; keys are matched without
// regard to case.
func parseWgQuick(data []byte) ([]confSection, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var secs []confSection
	for i, raw := range strings.Split(string(data), "\n") {
		n := i + 1
		s, _, _ := strings.Cut(raw, "#")
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if strings.HasPrefix(s, "[") {
			if !strings.HasSuffix(s, "]") {
				return nil, fmt.Errorf("parse config line %d: section header %q has no closing ]", n, s)
			}
			name := strings.ToLower(strings.TrimSpace(s[1 : len(s)-1]))
			if name != "interface" && name != "peer" {
				return nil, fmt.Errorf("parse config line %d: unknown section %q (expected [Interface] or [Peer])", n, s)
			}
			secs = append(secs, confSection{name: name, line: n})
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("parse config line %d: expected Key = Value, got %q", n, s)
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if k == "" {
			return nil, fmt.Errorf("parse config line %d: missing key before =", n)
		}
		if len(secs) == 0 {
			return nil, fmt.Errorf("parse config line %d: %q before the first [Interface] or [Peer] section", n, k)
		}
		secs[len(secs)-1].lines = append(secs[len(secs)-1].lines, confLine{key: k, value: strings.TrimSpace(v), line: n})
	}
	return secs, nil
}

// splitList splits a wg-quick list value on commas and white space.
func splitList(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\r' })
}

// parsePrefixOrAddr accepts "10.0.0.1/32" and "10.0.0.1" (a host route),
// the way wg(8) does.
func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix %q", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// dnsServer is a resolver the config points the device at.
type dnsServer struct {
	addr netip.Addr
	line int
}

// resolvectlServers extracts the server addresses of "resolvectl dns IFACE
// ADDR..." commands in a PostUp value (see the resolved render format).
func resolvectlServers(cmd string) []netip.Addr {
	var out []netip.Addr
	cmd = strings.NewReplacer("&&", ";", "||", ";", "|", ";").Replace(cmd)
	for _, part := range strings.Split(cmd, ";") {
		f := strings.Fields(part)
		if len(f) < 4 || !strings.HasSuffix(f[0], "resolvectl") || f[1] != "dns" {
			continue
		}
		for _, tok := range f[3:] {
			tok, _, _ = strings.Cut(tok, "#") // addr#server-name
			if a, err := netip.ParseAddr(tok); err == nil {
				out = append(out, a.Unmap())
			} else if ap, err := netip.ParseAddrPort(tok); err == nil {
				out = append(out, ap.Addr().Unmap())
			}
		}
	}
	return out
}

// coversAll reports whether the prefixes route the whole family, as
// /0 or as the two /1 halves wg-quick users write to dodge its policy
// routing.
func coversAll(ps []netip.Prefix, v4 bool) bool {
	zero := netip.IPv6Unspecified()
	half := netip.MustParseAddr("8000::")
	if v4 {
		zero, half = netip.IPv4Unspecified(), netip.MustParseAddr("128.0.0.0")
	}
	var lo, hi bool
	for _, p := range ps {
		switch {
		case p.Addr() == zero && p.Bits() == 0:
			return true
		case p.Addr() == zero && p.Bits() == 1:
			lo = true
		case p.Addr() == half && p.Bits() == 1:
			hi = true
		}
	}
	return lo && hi
}

func hostBits(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// Lint checks a wg-quick client configuration (any, not only sluice's) for
// the DNS leak paths: no DNS line, DNS servers not routed into the tunnel,
// IPv6 or IPv4 left outside, an oversized MTU, and a placeholder private
// key. It returns an error only when the input cannot be parsed; the error
// names the line.
func Lint(data []byte, opts LintOptions) ([]Finding, error) {
	secs, err := parseWgQuick(data)
	if err != nil {
		return nil, err
	}
	var (
		out            []Finding
		iface          *confSection
		ifaceCount     int
		peerCount      int
		routes         []netip.Prefix
		routeLine      = map[netip.Prefix]int{}
		addrs          []netip.Prefix
		v6AddrLine     int
		dnsServers     []dnsServer
		dnsLineSeen    bool
		privateKeySeen bool
		mtu, mtuLine   int
		extraIfaceLine int
	)
	add := func(line int, sev, msg, fix string) {
		out = append(out, Finding{Line: line, Severity: sev, Message: msg, Fix: fix})
	}
	for i := range secs {
		sec := &secs[i]
		if sec.name == "peer" {
			peerCount++
			for _, l := range sec.lines {
				if l.key != "allowedips" {
					continue
				}
				for _, tok := range splitList(l.value) {
					p, err := parsePrefixOrAddr(tok)
					if err != nil {
						return nil, fmt.Errorf("parse config line %d: AllowedIPs entry %q is not an address prefix", l.line, tok)
					}
					routes = append(routes, p)
					if _, seen := routeLine[p]; !seen {
						routeLine[p] = l.line
					}
				}
			}
			continue
		}
		ifaceCount++
		if iface == nil {
			iface = sec
		} else if extraIfaceLine == 0 {
			extraIfaceLine = sec.line
		}
		for _, l := range sec.lines {
			switch l.key {
			case "privatekey":
				privateKeySeen = true
				if _, err := wgtypes.ParseKey(l.value); err != nil {
					add(l.line, SeverityError, "PrivateKey is a placeholder, not a key: wg-quick refuses this config",
						"replace the PrivateKey value with the device's private key (44 characters of base64)")
				}
			case "address":
				for _, tok := range splitList(l.value) {
					p, err := netip.ParsePrefix(tok)
					if err != nil {
						a, aerr := netip.ParseAddr(tok)
						if aerr != nil {
							return nil, fmt.Errorf("parse config line %d: Address entry %q is not an address", l.line, tok)
						}
						p = netip.PrefixFrom(a, a.BitLen())
					}
					addrs = append(addrs, p)
					if p.Addr().Is6() && !p.Addr().Is4In6() && v6AddrLine == 0 {
						v6AddrLine = l.line
					}
				}
			case "dns":
				dnsLineSeen = true
				for _, tok := range splitList(l.value) {
					if a, err := netip.ParseAddr(tok); err == nil {
						dnsServers = append(dnsServers, dnsServer{a.Unmap().WithZone(""), l.line})
					}
				}
			case "postup":
				for _, a := range resolvectlServers(l.value) {
					dnsLineSeen = true
					dnsServers = append(dnsServers, dnsServer{a.WithZone(""), l.line})
				}
			case "mtu":
				n, err := strconv.Atoi(l.value)
				if err != nil || n <= 0 {
					return nil, fmt.Errorf("parse config line %d: MTU %q is not a positive number", l.line, l.value)
				}
				mtu, mtuLine = n, l.line
			}
		}
	}

	if ifaceCount == 0 {
		add(0, SeverityError, "no [Interface] section", "add an [Interface] section with PrivateKey, Address and DNS")
	} else {
		if ifaceCount > 1 {
			add(extraIfaceLine, SeverityError,
				"more than one [Interface] section", "merge the [Interface] sections into one")
		}
		if !privateKeySeen {
			add(iface.line, SeverityError, "[Interface] has no PrivateKey", "add PrivateKey = <the device's private key>")
		}
	}
	if peerCount == 0 {
		add(0, SeverityError, "no [Peer] section: nothing is routed into the tunnel",
			"add the gateway as a [Peer] with PublicKey, Endpoint and AllowedIPs")
	}

	ifaceLine := 0
	if iface != nil {
		ifaceLine = iface.line
	}
	var has6DNS bool
	switch {
	case !dnsLineSeen && ifaceCount > 0:
		add(ifaceLine, SeverityError, "no DNS line: the device keeps asking the local network's resolver, so internal names fail and every lookup leaks outside the tunnel",
			"add DNS = <in-tunnel resolver addresses> (IPv4 and IPv6, e.g. DNS = 10.20.0.53, fd20::53) and route them in AllowedIPs")
	case dnsLineSeen && len(dnsServers) == 0:
		add(ifaceLine, SeverityError, "the DNS line lists search domains but no server address: lookups go to the local network's resolver",
			"add the in-tunnel resolver addresses to DNS (e.g. DNS = 10.20.0.53, fd20::53)")
	}
	seenDNS := map[netip.Addr]bool{}
	for _, d := range dnsServers {
		if d.addr.Is6() {
			has6DNS = true
		}
		if seenDNS[d.addr] {
			continue
		}
		seenDNS[d.addr] = true
		if d.addr.IsLoopback() {
			add(d.line, SeverityWarning, fmt.Sprintf("DNS server %s is a resolver on the device itself: where it forwards queries is outside the tunnel's control", d.addr),
				"point DNS at the in-tunnel resolver addresses instead")
			continue
		}
		if _, ok := covered(d.addr, routes); !ok {
			add(d.line, SeverityError, fmt.Sprintf("DNS server %s is not in any peer's AllowedIPs: its queries bypass the tunnel", d.addr),
				fmt.Sprintf("add %s to AllowedIPs", hostBits(d.addr)))
		}
	}

	var has4Addr, has6Addr, has4Route, has6Route bool
	var v6Addr netip.Prefix
	for _, a := range addrs {
		if a.Addr().Is4() || a.Addr().Is4In6() {
			has4Addr = true
		} else if !has6Addr {
			has6Addr, v6Addr = true, a
		}
	}
	for _, r := range routes {
		if r.Addr().Is4() {
			has4Route = true
		} else {
			has6Route = true
		}
	}
	if has6Addr {
		if !has6Route {
			add(v6AddrLine, SeverityWarning, fmt.Sprintf("the interface has IPv6 address %s but no peer routes any IPv6 prefix: IPv6 traffic and AAAA answers for internal names leave outside the tunnel", v6Addr),
				"add ::/0 (full tunnel) or the internal IPv6 prefixes and the IPv6 resolver /128 to AllowedIPs")
		}
		if !has6DNS && len(dnsServers) > 0 {
			add(v6AddrLine, SeverityWarning, fmt.Sprintf("the interface has IPv6 address %s but DNS lists no IPv6 server: lookups over IPv6 can go to the local network's resolver", v6Addr),
				"add the in-tunnel IPv6 resolver (e.g. fd20::53) to DNS and its /128 to AllowedIPs")
		}
	}
	if has4Addr && !has4Route && peerCount > 0 {
		add(ifaceLine, SeverityWarning, "the interface has an IPv4 address but no peer routes any IPv4 prefix",
			"add 0.0.0.0/0 (full tunnel) or the internal IPv4 prefixes and the IPv4 resolver /32 to AllowedIPs")
	}

	all4, all6 := coversAll(routes, true), coversAll(routes, false)
	if all4 && !all6 {
		add(routeLine[firstFull(routes, true)], SeverityError, "AllowedIPs routes all IPv4 (0.0.0.0/0) but not all IPv6: IPv6 traffic and DNS over IPv6 leave outside the tunnel",
			"add ::/0 to AllowedIPs")
	}
	if all6 && !all4 {
		add(routeLine[firstFull(routes, false)], SeverityError, "AllowedIPs routes all IPv6 (::/0) but not all IPv4: IPv4 traffic and DNS over IPv4 leave outside the tunnel",
			"add 0.0.0.0/0 to AllowedIPs")
	}

	if opts.TunnelMTU > 0 && mtu > opts.TunnelMTU {
		add(mtuLine, SeverityWarning, fmt.Sprintf("MTU %d is above the tunnel's %d: large packets (big DNS answers, TCP) are fragmented or dropped", mtu, opts.TunnelMTU),
			fmt.Sprintf("set MTU = %d or lower", opts.TunnelMTU))
	}

	slices.SortStableFunc(out, func(a, b Finding) int { return a.Line - b.Line })
	return out, nil
}

// firstFull returns the first route that makes the family fully routed.
func firstFull(routes []netip.Prefix, v4 bool) netip.Prefix {
	for _, r := range routes {
		if r.Addr().Is4() == v4 && r.Bits() <= 1 {
			return r
		}
	}
	return netip.Prefix{}
}
