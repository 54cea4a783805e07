package dnsproxy

import (
	"github.com/miekg/dns"
)

// router maps a query name to the one group that may answer it: the zone with
// the longest suffix match on label boundaries, case-insensitively, or the
// default group. It is immutable; Reload builds a new one.
type router struct {
	zones map[string]*group // canonical (lower-case, fully qualified) zone name
	def   *group
}

// route returns the group for name (any case, fully qualified or not) and
// never nil when a default group exists.
func (r *router) route(name string) *group {
	name = dns.Fqdn(lowerASCII(name))
	if len(r.zones) > 0 {
		for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
			if g, ok := r.zones[name[off:]]; ok {
				return g
			}
		}
		if g, ok := r.zones["."]; ok {
			return g
		}
	}
	return r.def
}
