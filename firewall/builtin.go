package firewall

import "net/netip"

// builtinDoH holds the addresses of well-known public DoH (and DoT/DoQ)
// resolvers. It is a well-known list, not an exhaustive one: anyone can run a
// DoH server on any address, so operators add their own with DoHIPsFile and
// carve out exceptions with DoHAllow. Entries are IPs or CIDRs.
var builtinDoH = []string{
	// Google Public DNS (dns.google).
	"8.8.8.8", "8.8.4.4",
	"2001:4860:4860::8888", "2001:4860:4860::8844",
	"2001:4860:4860::6464", "2001:4860:4860::64",
	// Cloudflare (cloudflare-dns.com, one.one.one.one, security/family, mozilla).
	"1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
	"104.16.248.249", "104.16.249.249", "162.159.36.1", "162.159.46.1",
	"162.159.61.4", "172.64.41.4",
	"2606:4700:4700::1111", "2606:4700:4700::1001",
	"2606:4700:4700::1112", "2606:4700:4700::1002",
	"2606:4700:4700::1113", "2606:4700:4700::1003",
	"2606:4700:4700::64", "2606:4700:4700::6400",
	"2606:4700::6810:f8f9", "2606:4700::6810:f9f9",
	// Quad9 (dns.quad9.net and variants).
	"9.9.9.9", "149.112.112.112", "9.9.9.10", "149.112.112.10",
	"9.9.9.11", "149.112.112.11", "9.9.9.12", "149.112.112.12",
	"2620:fe::fe", "2620:fe::9", "2620:fe::10", "2620:fe::fe:10",
	"2620:fe::11", "2620:fe::fe:11", "2620:fe::12", "2620:fe::fe:12",
	// AdGuard DNS.
	"94.140.14.14", "94.140.15.15", "94.140.14.15", "94.140.15.16",
	"94.140.14.140", "94.140.14.141",
	"2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff", "2a10:50c0::bad1:ff",
	"2a10:50c0::bad2:ff", "2a10:50c0::1:ff", "2a10:50c0::2:ff",
	// OpenDNS / Cisco Umbrella (doh.opendns.com, familyshield).
	"208.67.222.222", "208.67.220.220", "208.67.222.123", "208.67.220.123",
	"208.67.222.2", "208.67.220.2", "146.112.41.2",
	"2620:119:35::35", "2620:119:53::53", "2620:119:35::123", "2620:119:53::123",
	"2620:0:ccc::2", "2620:0:ccd::2",
	// NextDNS anycast (per-profile addresses inside these blocks).
	"45.90.28.0/24", "45.90.30.0/24",
	"2a07:a8c0::/32", "2a07:a8c1::/32",
	// CleanBrowsing.
	"185.228.168.9", "185.228.169.9", "185.228.168.10", "185.228.169.11",
	"185.228.168.168", "185.228.169.168",
	"2a0d:2a00:1::", "2a0d:2a00:2::", "2a0d:2a00:1::1", "2a0d:2a00:2::1",
	"2a0d:2a00:1::2", "2a0d:2a00:2::2",
	// Mullvad DNS (dns.mullvad.net and variants).
	"194.242.2.2", "194.242.2.3", "194.242.2.4", "194.242.2.5",
	"194.242.2.6", "194.242.2.9",
	"2a07:e340::2", "2a07:e340::3", "2a07:e340::4", "2a07:e340::5",
	"2a07:e340::6", "2a07:e340::9",
	// Control D.
	"76.76.2.0/29", "76.76.10.0/29",
	"2606:1a40::/48", "2606:1a40:1::/48",
	// DNS.SB.
	"185.222.222.222", "45.11.45.11", "2a09::", "2a11::",
	// Alibaba, DNSPod, Yandex.
	"223.5.5.5", "223.6.6.6", "2400:3200::1", "2400:3200:baba::1",
	"1.12.12.12", "120.53.53.53",
	"77.88.8.8", "77.88.8.1", "2a02:6b8::feed:ff", "2a02:6b8:0:1::feed:ff",
}

// BuiltinDoH returns the well-known public DoH resolver addresses, v4 and v6,
// normalized. The list is well known, not exhaustive.
func BuiltinDoH() []netip.Prefix {
	ps := make([]netip.Prefix, 0, len(builtinDoH))
	for _, s := range builtinDoH {
		p, err := parsePrefixOrAddr(s)
		if err != nil {
			continue // covered by TestBuiltinDoHParses
		}
		ps = append(ps, p)
	}
	return NormalizePrefixes(ps, nil)
}
