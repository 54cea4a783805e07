package firewall

import (
	"fmt"
	"strings"
	"time"
)

// Set elements per line, as nft lays them out.
const (
	elementsPerLineV4 = 2
	elementsPerLineV6 = 1
)

// render prints rs in nft syntax, the way `nft list table inet NAME` lays it
// out, with the given counter values (missing ones print as zero) and the
// live elements of the dynamic per-peer sets (by set name, already in nft's
// element syntax and order). The text is valid input for `nft -f`.
func (rs *ruleset) render(counters map[Reason]Counter, peers map[string][]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", rs.table)
	first := true
	block := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, r := range rs.counters {
		block()
		c := counters[r]
		fmt.Fprintf(&b, "\tcounter %s {\n\t\tpackets %d bytes %d\n\t}\n", r, c.Packets, c.Bytes)
	}
	for _, s := range rs.sets {
		block()
		typ := "ipv4_addr"
		if s.v6 {
			typ = "ipv6_addr"
		}
		if s.learned {
			// Thousands of pairs: listed by `sluice status`, not here.
			fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s . %s\n\t\tflags timeout\n\t}\n", s.name, typ, typ)
			continue
		}
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, typ)
		if s.peer != "" {
			fmt.Fprintf(&b, "\t\tsize %d\n\t\tflags dynamic,timeout\n\t\ttimeout %s\n", peerSetSize, nftDuration(peerSetTimeout))
		}
		if s.interval {
			b.WriteString("\t\tflags interval\n")
		}
		elems := peers[s.name]
		if s.peer == "" {
			elems = make([]string, len(s.ranges))
			for i, r := range s.ranges {
				elems[i] = r.String()
			}
		}
		if len(elems) > 0 {
			perLine := elementsPerLineV4
			if s.v6 {
				perLine = elementsPerLineV6
			}
			b.WriteString("\t\telements = { ")
			for i, e := range elems {
				if i > 0 {
					if i%perLine == 0 {
						b.WriteString(",\n\t\t\t     ")
					} else {
						b.WriteString(", ")
					}
				}
				b.WriteString(e)
			}
			b.WriteString(" }\n")
		}
		b.WriteString("\t}\n")
	}
	for _, c := range rs.chains {
		block()
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		if c.base != nil {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %s; policy accept;\n", c.base.typ, c.base.hookName, c.base.prioText)
		}
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.text())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// nftDuration prints d as nft prints timeouts: 1d2h3m4s5ms, zero units left out.
func nftDuration(d time.Duration) string {
	ms := d.Milliseconds()
	if ms == 0 {
		return "0s"
	}
	var b strings.Builder
	for _, u := range []struct {
		ms   int64
		unit string
	}{{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}} {
		if n := ms / u.ms; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.unit)
			ms -= n * u.ms
		}
	}
	return b.String()
}

// String prints r as nft does: an address, a prefix, or from-to.
func (r addrRange) String() string {
	if r.from == r.to {
		return r.from.String()
	}
	if p, ok := r.prefix(); ok {
		return p.String()
	}
	return r.from.String() + "-" + r.to.String()
}
