package main

import (
	"fmt"
	"net/netip"

	"github.com/sluice-vpn/sluice/dnsproxy"
)

// withGroups configures n peer groups and peers identities for the groups
// bench row: zone bench. (the query set) and one zone zI.internal per group,
// all forwarded to upstream; group gI sees bench. and zI.internal. Peers
// get addresses 127.0.0.1, 127.0.0.2, ... and groups round robin, so the
// load generator (127.0.0.1) is a peer of group g0 and every cache hit runs
// the per-request group check (identity lookup, group lookup, bit test).
func withGroups(cfg *dnsproxy.Config, n, peers int, upstream string) dnsproxy.IdentityMap {
	cfg.Zones = append(cfg.Zones, dnsproxy.Zone{Name: "bench.", Upstreams: dnsproxy.MustParseUpstreams(upstream)})
	for i := range n {
		zone := fmt.Sprintf("z%d.internal.", i)
		cfg.Zones = append(cfg.Zones, dnsproxy.Zone{Name: zone, Upstreams: dnsproxy.MustParseUpstreams(upstream)})
		cfg.Groups = append(cfg.Groups, dnsproxy.PeerGroup{Name: fmt.Sprintf("g%d", i), Zones: []string{"bench.", zone}})
	}
	cfg.DefaultGroup = "g0"
	ids := dnsproxy.IdentityMap{}
	a := netip.MustParseAddr("127.0.0.1")
	for i := range max(peers, 1) {
		ids[a] = &dnsproxy.Peer{Name: fmt.Sprintf("user%d/default", i), Group: fmt.Sprintf("g%d", i%n), V4: a}
		a = a.Next()
	}
	return ids
}
