package peers

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestAllowedIPs(t *testing.T) {
	res := addrs("10.20.0.53", "fd20::53")
	for _, tc := range []struct {
		name      string
		full      bool
		routes    []netip.Prefix
		resolvers []netip.Addr
		want      string
	}{
		{"full", true, prefixes("10.30.0.0/16"), res, "0.0.0.0/0, ::/0"},
		{"full without resolvers", true, nil, nil, "0.0.0.0/0, ::/0"},
		{"split adds both resolvers", false, prefixes("10.30.0.0/16"), res, "10.20.0.53/32, 10.30.0.0/16, fd20::53/128"},
		{"split without routes still routes resolvers", false, nil, res, "10.20.0.53/32, fd20::53/128"},
		{"resolver covered by a route is not repeated", false, prefixes("10.20.0.0/24", "fd20::/64"), res, "10.20.0.0/24, fd20::/64"},
		{"only v4 covered", false, prefixes("10.20.0.0/24"), res, "10.20.0.0/24, fd20::53/128"},
		{"routes with host bits are masked", false, prefixes("10.30.1.7/16", "fd30::9/48"), res, "10.20.0.53/32, 10.30.0.0/16, fd20::53/128, fd30::/48"},
		{"duplicates and nested routes collapse", false, prefixes("10.30.0.0/16", "10.30.5.0/24", "10.30.0.0/16", "fd30::/48", "fd30::1:0:0:0/64"), res, "10.20.0.53/32, 10.30.0.0/16, fd20::53/128, fd30::/48"},
		{"duplicate resolvers", false, nil, addrs("10.20.0.53", "10.20.0.53", "::ffff:10.20.0.53", "fd20::53%eth0"), "10.20.0.53/32, fd20::53/128"},
		{"split with default routes", false, prefixes("0.0.0.0/0", "::/0"), res, "0.0.0.0/0, ::/0"},
		{"sorted v4 first", false, prefixes("fd30::/48", "192.0.2.0/24", "10.30.0.0/16"), addrs("fd20::53", "10.20.0.54", "10.20.0.53"), "10.20.0.53/32, 10.20.0.54/32, 10.30.0.0/16, 192.0.2.0/24, fd20::53/128, fd30::/48"},
		{"invalid entries ignored", false, []netip.Prefix{{}}, []netip.Addr{{}, netip.MustParseAddr("10.20.0.53")}, "10.20.0.53/32"},
		{"mapped v4 route unmapped", false, prefixes("::ffff:10.30.0.0/112"), nil, "10.30.0.0/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := AllowedIPs(tc.full, tc.routes, tc.resolvers)
			if s := joinPrefixes(got); s != tc.want {
				t.Errorf("AllowedIPs = %s, want %s", s, tc.want)
			}
		})
	}
}

// The invariant over many route shapes: every resolver is inside the result.
func TestAllowedIPsAlwaysRoutesResolvers(t *testing.T) {
	resolvers := addrs("10.20.0.53", "fd20::53", "10.30.0.53", "2001:db8::53")
	routeSets := [][]netip.Prefix{
		nil,
		prefixes("10.30.0.0/16"),
		prefixes("10.30.0.0/24", "2001:db8::/64"),
		prefixes("10.20.0.52/31", "fd20::52/127"),
		prefixes("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"),
		prefixes("10.0.0.0/8", "2001:db8:1::/48"),
	}
	for _, full := range []bool{false, true} {
		for _, routes := range routeSets {
			got := AllowedIPs(full, routes, resolvers)
			for _, r := range resolvers {
				if _, ok := covered(r, got); !ok {
					t.Errorf("full=%v routes=%v: resolver %s not routed by %v", full, routes, r, got)
				}
			}
			for _, r := range routes {
				if _, ok := covered(r.Addr(), got); !ok {
					t.Errorf("full=%v: route %s lost from %v", full, r, got)
				}
			}
			if !slices.IsSortedFunc(got, comparePrefix) {
				t.Errorf("result not sorted: %v", got)
			}
			if strings.Count(joinPrefixes(got), "/") != len(got) {
				t.Errorf("odd result %v", got)
			}
		}
	}
}
