package peers

import (
	"fmt"
	"net/netip"
	"time"
)

// MaxKeepalive is the largest PersistentKeepalive WireGuard encodes.
const MaxKeepalive = 65535 * time.Second

// FileConfig is the `peers:` section as the operator writes it. The yaml
// tags are the keys; doc, default, allowed and kind feed `sluice config
// reference`. To add a key: a field here, its rule in Build.
type FileConfig struct {
	StateDir            string   `yaml:"state_dir" doc:"the peer store (peers.json) and the default key file; one per interface, never shared by two configs" kind:"directory" default:"/var/lib/sluice/<interface.name>"`
	Routes              []string `yaml:"routes" doc:"split mode: prefixes clients route into the tunnel (the resolvers are always added)" kind:"CIDR"`
	PersistentKeepalive string   `yaml:"persistent_keepalive" doc:"keepalive written into client configs" kind:"duration" default:"25s" allowed:"1s-65535s"`
	DefaultGroup        string   `yaml:"default_group" doc:"the group of peers added without --group (needs a groups: section)" default:"none"`
	AddressQuarantine   string   `yaml:"address_quarantine" doc:"how long a removed peer's addresses are not handed out again" kind:"duration" default:"168h"`
}

// Build validates f into a Config (StateDir as written: the gateway fills
// its per-interface default). Errors and warnings are reported with their
// key inside the section (e.g. "routes[1]") and the fix.
func (f FileConfig) Build(report, warn func(key, msg, fix string)) Config {
	c := Config{StateDir: f.StateDir, PersistentKeepalive: DefaultKeepalive}
	if f.PersistentKeepalive != "" {
		d, err := time.ParseDuration(f.PersistentKeepalive)
		switch {
		case err == nil && d == 0: // the default
		case err != nil:
			report("persistent_keepalive", fmt.Sprintf("%q is not a duration", f.PersistentKeepalive), "write it like 25s")
		case d < time.Second || d > MaxKeepalive:
			report("persistent_keepalive", fmt.Sprintf("%s out of range", d), "use 1s-65535s; 25s keeps most NAT mappings open")
		default:
			c.PersistentKeepalive = d
		}
	}
	if f.AddressQuarantine != "" {
		d, err := time.ParseDuration(f.AddressQuarantine)
		if err != nil || d < 0 {
			report("address_quarantine", fmt.Sprintf("%q is not a duration", f.AddressQuarantine), "write it like 168h (7 days)")
		} else {
			c.AddressQuarantine = d
		}
	}
	keys := map[netip.Prefix]string{} // key of each route, for the warnings
	index := map[netip.Prefix]int{}
	for i, s := range f.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			report(key, fmt.Sprintf("%q is not a CIDR", s), "write it like 10.30.0.0/16 or fd30::/48")
			continue
		}
		if p != p.Masked() {
			report(key, fmt.Sprintf("%s has host bits set", s), "write the network: "+p.Masked().String())
			continue
		}
		for _, q := range c.Routes {
			switch {
			case q == p:
				warn(key, fmt.Sprintf("%s is listed twice (also entry %d)", p, index[q]), "remove one")
			case q.Overlaps(p) && q.Bits() <= p.Bits():
				warn(key, fmt.Sprintf("%s is redundant: %s (entry %d) already covers it", p, q, index[q]), "remove the narrower route")
			case q.Overlaps(p):
				warn(keys[q], fmt.Sprintf("%s is redundant: %s (entry %d) already covers it", q, p, i), "remove the narrower route")
			}
		}
		keys[p], index[p] = key, i
		c.Routes = append(c.Routes, p)
	}
	var def4, def6 bool
	for _, r := range c.Routes {
		def4 = def4 || r.Bits() == 0 && r.Addr().Is4()
		def6 = def6 || r.Bits() == 0 && r.Addr().Is6()
	}
	if def4 != def6 {
		report("routes", "routes one family's default route but not the other's: the other family leaks around the tunnel",
			"add both 0.0.0.0/0 and ::/0, or use dns.mode: full")
	}
	return c
}
