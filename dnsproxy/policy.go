package dnsproxy

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/miekg/dns"
)

// Reasons a name is blocked, used in answers' EDE text, metrics and the query log.
const (
	reasonCanary    = "canary"
	reasonDDR       = "ddr"
	reasonDoH       = "doh"
	reasonBlocklist = "blocklist"
)

// canaryNames make applications turn their own encrypted DNS off when
// answered NXDOMAIN (Firefox, Apple iCloud Private Relay).
var canaryNames = []string{
	"use-application-dns.net.",
	"mask.icloud.com.",
	"mask-h2.icloud.com.",
}

// ddrName is the Discovery of Designated Resolvers name (RFC 9462); we answer
// NODATA so clients do not upgrade to an encrypted resolver outside the tunnel.
const ddrName = "_dns.resolver.arpa."

// builtinDoHNames are well-known public DoH/DoT resolver hostnames. They and
// their subdomains answer NXDOMAIN so a browser cannot bootstrap its own
// resolver; the firewall closes the IP paths.
var builtinDoHNames = []string{
	"dns.google.", "dns.google.com.", "dns64.dns.google.", "8888.google.",
	"cloudflare-dns.com.", "one.one.one.one.", "1dot1dot1dot1.cloudflare-dns.com.",
	"mozilla.cloudflare-dns.com.", "security.cloudflare-dns.com.", "family.cloudflare-dns.com.",
	"chrome.cloudflare-dns.com.", "dns.cloudflare.com.",
	"dns.quad9.net.", "dns9.quad9.net.", "dns10.quad9.net.", "dns11.quad9.net.", "dns12.quad9.net.",
	"doh.opendns.com.", "doh.familyshield.opendns.com.", "dns.umbrella.com.",
	"dns.adguard.com.", "dns.adguard-dns.com.", "dns-family.adguard.com.", "unfiltered.adguard-dns.com.",
	"dns.nextdns.io.", "doh.cleanbrowsing.org.", "dns.mullvad.net.", "doh.mullvad.net.",
	"adblock.dns.mullvad.net.", "base.dns.mullvad.net.",
	"doh.dns.sb.", "dns.twnic.tw.", "doh.libredns.gr.", "dns.switch.ch.",
	"freedns.controld.com.", "dns.controld.com.", "doh.xfinity.com.", "dns.alidns.com.",
	"doh.pub.", "dns.pub.", "dns0.eu.", "open.dns0.eu.", "kids.dns0.eu.",
	"dns.digitale-gesellschaft.ch.", "dns.njal.la.", "doh.ffmuc.net.", "dns.comss.one.",
	"private.canadianshield.cira.ca.", "protected.canadianshield.cira.ca.",
	"family.canadianshield.cira.ca.", "doh.la.ahadns.net.", "dns.brahma.world.",
}

// policy decides which names are answered locally instead of being forwarded.
// It is immutable; Reload builds a new one.
type policy struct {
	names map[string]string // canonical name → reason (the name and its subdomains)
	allow map[string]bool   // canonical names whose subtree is never blocked
}

func newPolicy(cfg PolicyConfig) (*policy, error) {
	p := &policy{names: map[string]string{}, allow: map[string]bool{}}
	if cfg.Canaries {
		for _, n := range canaryNames {
			p.names[n] = reasonCanary
		}
		p.names[ddrName] = reasonDDR
	}
	if cfg.BlockDoHNames {
		for _, n := range builtinDoHNames {
			p.names[n] = reasonDoH
		}
	}
	if cfg.BlocklistFile != "" {
		if err := p.loadBlocklist(cfg.BlocklistFile); err != nil {
			return nil, err
		}
	}
	for _, n := range cfg.Allowlist {
		name, err := canonicalName(n)
		if err != nil {
			return nil, fmt.Errorf("parse allowlist name %q: %w", n, err)
		}
		p.allow[name] = true
	}
	return p, nil
}

func (p *policy) loadBlocklist(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open blocklist %q: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		s := sc.Text()
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = s[:i]
		}
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		name, err := canonicalName(s)
		if err != nil {
			return fmt.Errorf("parse blocklist %s:%d: %w", path, line, err)
		}
		p.names[name] = reasonBlocklist
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read blocklist %q: %w", path, err)
	}
	return nil
}

// canonicalName validates a domain name and returns it lower-case, fully qualified.
func canonicalName(s string) (string, error) {
	n := dns.Fqdn(strings.ToLower(strings.TrimSpace(s)))
	if n == "." || strings.ContainsAny(n, " \t") {
		return "", fmt.Errorf("invalid name %q", s)
	}
	if _, ok := dns.IsDomainName(n); !ok {
		return "", fmt.Errorf("invalid name %q", s)
	}
	return n, nil
}

// check returns the block reason for name ("" when it may be forwarded).
func (p *policy) check(name string) string {
	if len(p.names) == 0 {
		return ""
	}
	name = dns.Fqdn(lowerASCII(name))
	reason := ""
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		suffix := name[off:]
		if p.allow[suffix] {
			return ""
		}
		if r, ok := p.names[suffix]; ok && reason == "" {
			reason = r
		}
	}
	return reason
}
