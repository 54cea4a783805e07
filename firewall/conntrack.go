package firewall

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// bypassPorts are the destination ports whose existing flows from peers are
// deleted after each Apply: an old flow must not keep bypassing a new rule
// (NAT is decided on a flow's first packet only).
var bypassPorts = map[uint16]bool{portDNS: true, portDoT: true}

// cleanConntrack deletes conntrack entries of flows from the tunnel prefixes
// to ports 53 and 853. It returns how many deleted flows went somewhere other
// than the resolvers (flows to the proxy itself are deleted too, harmlessly,
// but not counted).
func (f *Firewall) cleanConntrack(s Spec) (int, error) {
	if len(s.TunnelPrefixes) == 0 {
		return 0, nil
	}
	c, err := conntrack.Dial(&netlink.Config{NetNS: f.netns})
	if err != nil {
		return 0, fmt.Errorf("open conntrack netlink: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("dump conntrack: %w", err)
	}
	resolvers := make(map[netip.Addr]bool, len(s.Resolvers))
	for _, a := range s.Resolvers {
		resolvers[a] = true
	}
	n := 0
	for _, fl := range flows {
		if !bypassFlow(fl, s.TunnelPrefixes) {
			continue
		}
		if err := c.Delete(fl); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // ended on its own meanwhile
			}
			return n, fmt.Errorf("delete conntrack flow %s: %w", fl.TupleOrig, err)
		}
		if !resolvers[fl.TupleOrig.IP.DestinationAddress.Unmap()] {
			n++
		}
	}
	return n, nil
}

func bypassFlow(fl conntrack.Flow, peers []netip.Prefix) bool {
	t := fl.TupleOrig
	if t.Proto.Protocol != unix.IPPROTO_UDP && t.Proto.Protocol != unix.IPPROTO_TCP {
		return false
	}
	if !bypassPorts[t.Proto.DestinationPort] {
		return false
	}
	src := t.IP.SourceAddress.Unmap()
	for _, p := range peers {
		if p.Contains(src) {
			return true
		}
	}
	return false
}
