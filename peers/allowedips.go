package peers

import (
	"net/netip"
	"slices"
)

// Full-tunnel routes.
var (
	allV4 = netip.MustParsePrefix("0.0.0.0/0")
	allV6 = netip.MustParsePrefix("::/0")
)

// AllowedIPs is the client side AllowedIPs of the gateway peer, and holds
// sluice's first promise: every in-tunnel resolver address is routed into
// the tunnel, whatever the routes say.
//
// Full tunnel: 0.0.0.0/0 and ::/0. Split: the routes plus each resolver as
// a /32 or /128 unless a route already covers it. The result is normalized
// (host bits cleared, IPv4-mapped IPv6 unmapped, zones dropped), without
// duplicates or prefixes covered by another, sorted IPv4 first.
func AllowedIPs(fullTunnel bool, routes []netip.Prefix, resolvers []netip.Addr) []netip.Prefix {
	if fullTunnel {
		return []netip.Prefix{allV4, allV6}
	}
	var all []netip.Prefix
	for _, r := range routes {
		if !r.IsValid() {
			continue
		}
		a := r.Addr().WithZone("")
		bits := r.Bits()
		if a.Is4In6() {
			if bits < 96 {
				continue // no sensible IPv4 meaning; not a client route
			}
			a, bits = a.Unmap(), bits-96
		}
		all = append(all, netip.PrefixFrom(a, bits).Masked())
	}
	for _, r := range resolvers {
		if !r.IsValid() {
			continue
		}
		a := r.Unmap().WithZone("")
		all = append(all, netip.PrefixFrom(a, a.BitLen()))
	}
	return normalizePrefixes(all)
}

// normalizePrefixes sorts and drops duplicates and prefixes covered by a
// shorter one. Input prefixes must be masked.
func normalizePrefixes(in []netip.Prefix) []netip.Prefix {
	slices.SortFunc(in, comparePrefix)
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		// After sorting by (family, address, bits), a covering prefix sorts
		// before everything it covers, so checking the last kept one of the
		// same family is enough.
		if n := len(out); n > 0 {
			last := out[n-1]
			if last.Addr().Is4() == p.Addr().Is4() && last.Bits() <= p.Bits() && last.Contains(p.Addr()) {
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if a.Addr().Is4() != b.Addr().Is4() {
		if a.Addr().Is4() {
			return -1
		}
		return 1
	}
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// covered reports whether a falls inside one of prefixes.
func covered(a netip.Addr, prefixes []netip.Prefix) (netip.Prefix, bool) {
	a = a.Unmap().WithZone("")
	for _, p := range prefixes {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
