package firewall

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
)

// LoadDoHFile reads extra DoH resolver addresses: one IP or CIDR per line,
// blank lines ignored, '#' starts a comment. Errors name file:line and the
// bad entry.
func LoadDoHFile(path string) ([]netip.Prefix, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open doh file %q: %w", path, err)
	}
	defer f.Close()
	var out []netip.Prefix
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		p, err := parsePrefixOrAddr(text)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: bad entry %q: want an IP address or CIDR", path, line, text)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read doh file %q: %w", path, err)
	}
	return out, nil
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("zoned address %q", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// addrRange is an inclusive range of addresses of one family.
type addrRange struct{ from, to netip.Addr }

// NormalizePrefixes merges overlapping, adjacent and duplicate prefixes,
// removes every address covered by minus, and returns the smallest list of
// prefixes covering the result: IPv4 first, then IPv6, each ascending. IPv4-
// mapped IPv6 prefixes count as IPv4; invalid prefixes are dropped.
func NormalizePrefixes(in []netip.Prefix, minus []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range normalizeRanges(in, minus) {
		out = append(out, r.prefixes()...)
	}
	return out
}

// normalizeRanges is NormalizePrefixes as merged ranges (v4 first): the form
// interval sets take in the kernel.
func normalizeRanges(in []netip.Prefix, minus []netip.Prefix) []addrRange {
	rs := mergeRanges(toRanges(in))
	if len(minus) > 0 {
		rs = subtractRanges(rs, mergeRanges(toRanges(minus)))
	}
	return rs
}

func canonical(p netip.Prefix) (netip.Prefix, bool) {
	if !p.IsValid() {
		return p, false
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return p.Masked(), true
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked(), true
	}
	return netip.PrefixFrom(p.Addr().WithZone(""), p.Bits()).Masked(), true
}

func toRanges(in []netip.Prefix) []addrRange {
	rs := make([]addrRange, 0, len(in))
	for _, p := range in {
		p, ok := canonical(p)
		if !ok {
			continue
		}
		rs = append(rs, addrRange{from: p.Addr(), to: lastAddr(p)})
	}
	return rs
}

// lastAddr is the highest address in p (p masked).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As16()
	off := 0
	if p.Addr().Is4() {
		off = 12
	}
	for i := off*8 + p.Bits(); i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		a = a.Unmap()
	}
	return a
}

// less orders v4 before v6, then by address.
func less(a, b netip.Addr) bool {
	if a.Is4() != b.Is4() {
		return a.Is4()
	}
	return a.Less(b)
}

func mergeRanges(rs []addrRange) []addrRange {
	if len(rs) == 0 {
		return nil
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].from != rs[j].from {
			return less(rs[i].from, rs[j].from)
		}
		return rs[i].to.Less(rs[j].to)
	})
	out := []addrRange{rs[0]}
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		if cur.from.Is4() == r.from.Is4() {
			next := cur.to.Next() // invalid when cur reaches the top of the family
			if !next.IsValid() || !next.Less(r.from) {
				if cur.to.Less(r.to) {
					cur.to = r.to
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// subtractRanges removes minus from rs; both sorted and merged.
func subtractRanges(rs, minus []addrRange) []addrRange {
	var out []addrRange
	for _, r := range rs {
		pieces := []addrRange{r}
		for _, m := range minus {
			if m.from.Is4() != r.from.Is4() {
				continue
			}
			var next []addrRange
			for _, p := range pieces {
				if m.to.Less(p.from) || p.to.Less(m.from) {
					next = append(next, p)
					continue
				}
				if p.from.Less(m.from) {
					next = append(next, addrRange{p.from, m.from.Prev()})
				}
				if m.to.Less(p.to) {
					next = append(next, addrRange{m.to.Next(), p.to})
				}
			}
			pieces = next
		}
		out = append(out, pieces...)
	}
	return out
}

// prefixes splits r into the fewest covering prefixes.
func (r addrRange) prefixes() []netip.Prefix {
	var out []netip.Prefix
	from := r.from
	for from.IsValid() && !r.to.Less(from) {
		var p netip.Prefix
		for bits := 0; bits <= from.BitLen(); bits++ {
			c := netip.PrefixFrom(from, bits)
			if c.Masked().Addr() == from && !r.to.Less(lastAddr(c)) {
				p = c
				break
			}
		}
		out = append(out, p)
		from = lastAddr(p).Next()
	}
	return out
}

// prefix reports whether r is exactly one prefix.
func (r addrRange) prefix() (netip.Prefix, bool) {
	ps := r.prefixes()
	if len(ps) == 1 {
		return ps[0], true
	}
	return netip.Prefix{}, false
}

// splitFamilies returns the v4 and v6 ranges of rs.
func splitFamilies(rs []addrRange) (v4, v6 []addrRange) {
	for _, r := range rs {
		if r.from.Is4() {
			v4 = append(v4, r)
		} else {
			v6 = append(v6, r)
		}
	}
	return v4, v6
}
