package firewall

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// resolveEgress returns the full-mode egress interfaces: the configured one
// for both families, else the interface of each family's default route in
// the firewall's namespace (a family without one uses the other's).
func (f *Firewall) resolveEgress(configured string) (egress, error) {
	if configured != "" {
		return egress{configured, configured}, nil
	}
	var h *netlink.Handle
	var err error
	if f.netns != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(f.netns))
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return egress{}, fmt.Errorf("open route netlink: %w", err)
	}
	defer h.Close()
	v4, err := defaultRouteIfname(h, unix.AF_INET)
	if err != nil {
		return egress{}, err
	}
	v6, err := defaultRouteIfname(h, unix.AF_INET6)
	if err != nil {
		return egress{}, err
	}
	switch {
	case v4 == "" && v6 == "":
		return egress{}, fmt.Errorf("find egress interface: no default route; set the egress interface")
	case v4 == "":
		v4 = v6
	case v6 == "":
		v6 = v4
	}
	return egress{v4, v6}, nil
}

// defaultRouteIfname is the interface of the family's best default route in
// the main table, or "" when there is none.
func defaultRouteIfname(h *netlink.Handle, family int) (string, error) {
	routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	best, bestPrio := 0, -1
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx == 0 {
			continue
		}
		if bestPrio < 0 || r.Priority < bestPrio {
			best, bestPrio = idx, r.Priority
		}
	}
	if best == 0 {
		return "", nil
	}
	l, err := h.LinkByIndex(best)
	if err != nil {
		return "", fmt.Errorf("look up default route interface %d: %w", best, err)
	}
	return l.Attrs().Name, nil
}
