package firewall

import (
	"fmt"
	"strings"
)

// Set elements per line, as nft lays them out.
const (
	elementsPerLineV4 = 2
	elementsPerLineV6 = 1
)

// render prints rs in nft syntax, the way `nft list table inet NAME` lays it
// out, with the given counter values (missing ones print as zero). The text
// is valid input for `nft -f`.
func (rs *ruleset) render(counters map[Reason]Counter) string {
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
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, typ)
		if s.interval {
			b.WriteString("\t\tflags interval\n")
		}
		if len(s.ranges) > 0 {
			perLine := elementsPerLineV4
			if s.v6 {
				perLine = elementsPerLineV6
			}
			b.WriteString("\t\telements = { ")
			for i, r := range s.ranges {
				if i > 0 {
					if i%perLine == 0 {
						b.WriteString(",\n\t\t\t     ")
					} else {
						b.WriteString(", ")
					}
				}
				b.WriteString(r.String())
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
