package firewall

import (
	"fmt"
	"log/slog"
	"net/netip"

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
	// Encrypted are the resolver's DoT/DoH listeners, accepted on the
	// resolver addresses (see encrypted.go).
	Encrypted EncryptedListeners
}

// Options configure a Firewall.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // may be nil
	NetNS      int                   // network namespace fd; 0 = the current one
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
)

// Reasons lists every counter the table carries, in rendering order.
func Reasons() []Reason {
	return []Reason{
		ReasonDNSRedirected, ReasonDNSRejected, ReasonDNSAccepted,
		ReasonDoTRejected, ReasonDoQRejected, ReasonDoHRejected,
		ReasonPeerToPeerDropped, ReasonEgressAccepted, ReasonEstablishedReturns,
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
		s.OffPolicyDNS = ActionRedirect
		if s.FullTunnel {
			s.OffPolicyDNS = ActionReject
		}
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
	return s, nil
}
