package firewall

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultTable is the name of sluice's table (family inet).
const DefaultTable = "sluice"

// Action is what the table does with one class of traffic.
type Action string

// Actions.
const (
	ActionRedirect Action = "redirect" // DNAT to the in-tunnel resolver
	ActionReject   Action = "reject"   // TCP reset or ICMP(v6) administratively prohibited
	ActionAllow    Action = "allow"    // no rule
)

// Config is the operator's enforcement policy, composed by gateway from the
// YAML `enforce:` section. Empty actions take the defaults named below.
type Config struct {
	OffPolicyDNS Action         // redirect | reject; "" = redirect in split mode, reject in full mode
	DoT          Action         // reject (default) | allow | redirect (TCP 853 DNATed to the resolver's DoT, UDP 853 rejected); covers TCP 853 (DoT) and UDP 853 (DoQ)
	DoH          Action         // reject (default) | allow
	DoHIPsFile   string         // extra DoH IPs/CIDRs, one per line, # comments
	DoHAllow     []netip.Prefix // removed from the DoH set
	Egress       string         // full mode masquerade egress; "" = interface of the default route
	PeerToPeer   bool           // false: peers cannot reach each other through the gateway
	KeepOnStop   bool           // false: Close removes the table

	// Resolution-gated egress and inbound (see learned.go).
	EgressMode   EgressMode     // resolved | audit | open; "" = resolved in full mode, open in split mode
	EgressAllow  []netip.Prefix // always reachable from peers, whatever was resolved
	EgressMinTTL time.Duration  // floor of a learned pair's lifetime; 0 = DefaultEgressMinTTL
	InboundAllow []netip.Prefix // sources outside the tunnel that may open connections to peers
}

// Spec is the whole desired state of the table.
type Spec struct {
	Table          string         // "" = DefaultTable
	Interface      string         // WireGuard interface (iifname match)
	Resolvers      []netip.Addr   // in-tunnel proxy addresses; DNAT target is the first of the packet's family
	TunnelPrefixes []netip.Prefix // interface prefixes (peer sources)
	FullTunnel     bool
	Config
	DoHSet []netip.Prefix // builtin + file − allow; Apply normalizes again
	// Groups restrict what their peers reach through the gateway (groups.go).
	Groups []GroupRule
	// GroupBound limits the group rules to these destinations (full mode:
	// the internal prefixes); empty: every destination.
	GroupBound []netip.Prefix
	// Encrypted are the resolver's DoT/DoH listeners, accepted on the
	// resolver addresses (see encrypted.go).
	Encrypted EncryptedListeners
}

// Options configure a Firewall.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // may be nil
	NetNS      int                   // network namespace fd; 0 = the current one
	// LearnedFile keeps learned egress pairs across restarts (written on
	// Close and every learnedPersistEvery); "" = not kept.
	LearnedFile string
}

// Reason names a counted verdict; each is one named counter in the table.
type Reason string

// Reasons, one named counter object each.
const (
	ReasonDNSRedirected      Reason = "dns_redirected" // flows DNATed to the proxy (first packet of each flow; DoT with enforce.dot: redirect)
	ReasonDNSRejected        Reason = "dns_rejected"   // port 53 to anything but the proxy, rejected
	ReasonDNSAccepted        Reason = "dns_accepted"   // packets to the proxy on port 53 (and 853/443 with encrypted DNS)
	ReasonDoTRejected        Reason = "dot_rejected"   // TCP 853
	ReasonDoQRejected        Reason = "doq_rejected"   // UDP 853
	ReasonDoHRejected        Reason = "doh_rejected"   // TCP/UDP 443 to a known DoH address
	ReasonPeerToPeerDropped  Reason = "peer_to_peer_dropped"
	ReasonEgressAccepted     Reason = "egress_accepted" // full mode: peer traffic forwarded to the egress
	ReasonEstablishedReturns Reason = "established_accepted"
	ReasonEgressUnresolved   Reason = "egress_unresolved" // new peer flow to an address no answer gave it (refused, or allowed in audit)
	ReasonInboundDropped     Reason = "inbound_dropped"   // new flow from outside toward a peer
)

// Reasons lists every counter the table carries, in rendering order.
func Reasons() []Reason {
	return []Reason{
		ReasonDNSRedirected, ReasonDNSRejected, ReasonDNSAccepted,
		ReasonDoTRejected, ReasonDoQRejected, ReasonDoHRejected,
		ReasonPeerToPeerDropped, ReasonEgressAccepted, ReasonEstablishedReturns,
		ReasonEgressUnresolved, ReasonInboundDropped,
	}
}

// Counter is one counter's value as read from the kernel.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

const maxIfname = 15 // IFNAMSIZ - 1

// normalize fills defaults and validates s; it returns a copy.
func (s Spec) normalize() (Spec, error) {
	if s.Table == "" {
		s.Table = DefaultTable
	}
	if len(s.Table) > 255 {
		return s, fmt.Errorf("table name %q too long", s.Table)
	}
	if s.Interface == "" || len(s.Interface) > maxIfname {
		return s, fmt.Errorf("invalid interface name %q", s.Interface)
	}
	if s.OffPolicyDNS == "" {
		s.OffPolicyDNS = DefaultOffPolicy(s.FullTunnel)
	}
	if s.DoT == "" {
		s.DoT = ActionReject
	}
	if s.DoH == "" {
		s.DoH = ActionReject
	}
	if s.OffPolicyDNS != ActionRedirect && s.OffPolicyDNS != ActionReject {
		return s, fmt.Errorf("invalid off-policy dns action %q: want redirect or reject", s.OffPolicyDNS)
	}
	for name, a := range map[string]Action{"dot": s.DoT, "doh": s.DoH} {
		if a != ActionReject && a != ActionAllow && !(name == "dot" && a == ActionRedirect && s.Encrypted.DoT) {
			return s, fmt.Errorf("invalid %s action %q: want reject or allow (or redirect with a DoT listener)", name, a)
		}
	}
	if len(s.Egress) > maxIfname {
		return s, fmt.Errorf("invalid egress interface name %q", s.Egress)
	}
	if err := s.normalizeEgress(); err != nil {
		return s, err
	}
	if len(s.Resolvers) == 0 {
		return s, fmt.Errorf("no resolver addresses for interface %q", s.Interface)
	}
	res := make([]netip.Addr, 0, len(s.Resolvers))
	for _, a := range s.Resolvers {
		if !a.IsValid() || a.Zone() != "" {
			return s, fmt.Errorf("invalid resolver address %q", a)
		}
		res = append(res, a.Unmap())
	}
	s.Resolvers = res
	tp := make([]netip.Prefix, 0, len(s.TunnelPrefixes))
	for _, p := range s.TunnelPrefixes {
		if !p.IsValid() {
			return s, fmt.Errorf("invalid tunnel prefix %q", p)
		}
		tp = append(tp, p)
	}
	s.TunnelPrefixes = NormalizePrefixes(tp, nil)
	s.DoHSet = NormalizePrefixes(s.DoHSet, s.DoHAllow)
	return s.normalizeGroups()
}

// DefaultOffPolicy is the off-policy DNS action when the operator sets none:
// redirect in split mode, reject in full mode.
func DefaultOffPolicy(fullTunnel bool) Action {
	if fullTunnel {
		return ActionReject
	}
	return ActionRedirect
}

// FileConfig is the `enforce:` section as the operator writes it. The yaml
// tags are the keys; doc, default and allowed feed `sluice config reference`.
// To add a key: a field here, its rule in Build.
type FileConfig struct {
	OffPolicyDNS    string   `yaml:"off_policy_dns" doc:"what happens to a peer's DNS (port 53) sent anywhere but the in-tunnel resolver" default:"redirect in split mode, reject in full mode" allowed:"redirect, reject"`
	DoT             string   `yaml:"dot" doc:"DNS over TLS (TCP 853) and DNS over QUIC (UDP 853) from peers to other addresses than the resolvers" default:"reject" allowed:"reject, allow (split mode only), redirect (to sluice's own DoT: needs dot in dns.encrypted)"`
	DoH             string   `yaml:"doh" doc:"HTTPS (TCP/UDP 443) from peers to known DoH resolver addresses" default:"reject" allowed:"reject, allow (split mode only)"`
	DoHIPsFile      string   `yaml:"doh_ips_file" doc:"extra DoH resolver addresses, one IP or CIDR per line, # comments; the built-in list is always loaded" kind:"file" default:"none"`
	DoHAllow        []string `yaml:"doh_allow" doc:"IPs or CIDRs removed from the DoH set (e.g. your own DoH server)" kind:"IP or CIDR"`
	EgressInterface string   `yaml:"egress_interface" doc:"full mode: the interface peers' traffic is masqueraded out of" default:"the interface of the default route"`
	PeerToPeer      bool     `yaml:"peer_to_peer" doc:"let peers reach each other through the gateway" default:"false"`
	KeepOnStop      bool     `yaml:"keep_on_stop" doc:"leave the table in place when sluice stops (fail closed)" default:"false"`
	Table           string   `yaml:"table" doc:"name of the nftables table (family inet)" default:"sluice"`

	Egress       string   `yaml:"egress" doc:"resolved: a peer opens new connections only to addresses the gateway's resolver answered it (plus egress_allow); audit: allow but count and log what resolved would refuse; open: no gate" default:"resolved in full mode, open in split mode" allowed:"resolved, audit, open"`
	EgressAllow  []string `yaml:"egress_allow" doc:"destinations always reachable from peers (NTP, hard-coded SaaS ranges, the corp network)" kind:"IP or CIDR"`
	EgressMinTTL string   `yaml:"egress_min_ttl" doc:"least time a resolved destination stays reachable, whatever the record's TTL" kind:"duration" default:"1h"`
	InboundAllow []string `yaml:"inbound_allow" doc:"sources outside the tunnel that may open connections to peers (all others are dropped)" kind:"IP or CIDR"`
}

// Build validates f into a Config and the table name. Each problem is
// reported with its key inside the section (e.g. "dot") and the fix.
func (f FileConfig) Build(fullTunnel bool, report func(key, msg, fix string)) (Config, string) {
	var c Config
	actions := []struct {
		key, val string
		def      Action
		allowed  []Action
		dst      *Action
	}{
		{"off_policy_dns", f.OffPolicyDNS, DefaultOffPolicy(fullTunnel), []Action{ActionRedirect, ActionReject}, &c.OffPolicyDNS},
		{"dot", f.DoT, ActionReject, []Action{ActionReject, ActionAllow, ActionRedirect}, &c.DoT},
		{"doh", f.DoH, ActionReject, []Action{ActionReject, ActionAllow}, &c.DoH},
	}
	for _, a := range actions {
		*a.dst = a.def
		if a.val == "" {
			continue
		}
		if !slices.Contains(a.allowed, Action(a.val)) {
			names := make([]string, len(a.allowed))
			for i, v := range a.allowed {
				names[i] = string(v)
			}
			report(a.key, fmt.Sprintf("unknown action %q", a.val), "use "+strings.Join(names, " or "))
			continue
		}
		*a.dst = Action(a.val)
	}
	if fullTunnel && (c.DoT == ActionAllow || c.DoH == ActionAllow) {
		key := "dot"
		if c.DoH == ActionAllow {
			key = "doh"
		}
		report(key, "full mode must reject DoT, DoQ and DoH", "remove the key or set it to reject")
	}
	c.DoHIPsFile = f.DoHIPsFile
	for i, s := range f.DoHAllow {
		p, err := parsePrefixOrAddr(s)
		if err != nil {
			report(fmt.Sprintf("doh_allow[%d]", i), fmt.Sprintf("%q is not an IP or CIDR", s), "write it like 192.0.2.10 or 2001:db8::/48")
			continue
		}
		c.DoHAllow = append(c.DoHAllow, p)
	}
	c.Egress = f.EgressInterface
	if f.EgressInterface != "" && !validName(f.EgressInterface, maxIfname) {
		report("egress_interface", fmt.Sprintf("%q is not a valid interface name", f.EgressInterface), "name the host's internet-facing interface, e.g. eth0")
	}
	c.PeerToPeer = f.PeerToPeer
	c.KeepOnStop = f.KeepOnStop
	f.buildEgress(fullTunnel, &c, report)
	table := f.Table
	if table == "" {
		table = DefaultTable
	}
	if !validName(table, maxIfname) {
		report("table", fmt.Sprintf("%q is not a valid table name", f.Table), "use 1-15 letters, digits, '_', '.' or '-'")
	}
	return c, table
}

// buildEgress reads egress, egress_allow, egress_min_ttl and inbound_allow.
func (f FileConfig) buildEgress(fullTunnel bool, c *Config, report func(key, msg, fix string)) {
	switch m := EgressMode(f.Egress); m {
	case "":
		c.EgressMode = EgressOpen
		if fullTunnel {
			c.EgressMode = EgressResolved
		}
	case EgressResolved, EgressAudit, EgressOpen:
		c.EgressMode = m
	default:
		report("egress", fmt.Sprintf("unknown mode %q", f.Egress), "use resolved, audit or open")
	}
	for _, l := range []struct {
		key  string
		vals []string
		dst  *[]netip.Prefix
	}{{"egress_allow", f.EgressAllow, &c.EgressAllow}, {"inbound_allow", f.InboundAllow, &c.InboundAllow}} {
		for i, s := range l.vals {
			p, err := parsePrefixOrAddr(s)
			if err != nil {
				report(fmt.Sprintf("%s[%d]", l.key, i), fmt.Sprintf("%q is not an IP or CIDR", s), "write it like 192.0.2.10, 10.30.0.0/16 or 2001:db8::/48")
				continue
			}
			*l.dst = append(*l.dst, p)
		}
	}
	c.EgressMinTTL = DefaultEgressMinTTL
	if f.EgressMinTTL != "" {
		d, err := time.ParseDuration(f.EgressMinTTL)
		if err != nil || d < 0 {
			report("egress_min_ttl", fmt.Sprintf("%q is not a duration", f.EgressMinTTL), "write it like 1h or 30m")
		} else if d > 0 {
			c.EgressMinTTL = d
		}
	}
}

// Preflight opens the files c names, as Apply will, so that a bad file is
// found before anything is changed. Problems are reported with their key
// inside the enforce section; the message names file:line.
func (c Config) Preflight(report func(key, msg, fix string)) {
	if c.DoHIPsFile == "" {
		return
	}
	if _, err := LoadDoHFile(c.DoHIPsFile); err != nil {
		report("doh_ips_file", err.Error(), "one IP or CIDR per line, # starts a comment")
	}
}

// validName accepts 1..max letters, digits, '_', '.' and '-'.
func validName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-'
		if !ok {
			return false
		}
	}
	return true
}
