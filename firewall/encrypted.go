package firewall

import (
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// EncryptedListeners says which encrypted DNS listeners the in-tunnel
// resolver runs. Peers may reach them on the resolver addresses: DoT on
// TCP 853, DoH on TCP 443 and UDP 443 (so an HTTP/3 attempt fails fast and
// the client falls back to HTTP/2). To every other address 853 and 443 are
// treated as before.
type EncryptedListeners struct {
	DoT bool
	DoH bool
}

// countedRules is build's helper that adds per-peer accounting to a verdict rule.
type countedRules func(r Reason, fam family, match []stmt, tail ...stmt) []rule

// encryptedAccept returns the peer_dns rules accepting the encrypted
// listeners on the resolver addresses; they come before the DoT/DoQ rejects.
func encryptedAccept(s Spec, resolvers []*set) []rule {
	var ports []struct {
		proto uint8
		port  uint16
	}
	if s.Encrypted.DoT {
		ports = append(ports, struct {
			proto uint8
			port  uint16
		}{unix.IPPROTO_TCP, portDoT})
	}
	if s.Encrypted.DoH {
		ports = append(ports, struct {
			proto uint8
			port  uint16
		}{unix.IPPROTO_TCP, portHTTPS}, struct {
			proto uint8
			port  uint16
		}{unix.IPPROTO_UDP, portHTTPS})
	}
	var out []rule
	for _, st := range resolvers {
		if len(st.ranges) == 0 {
			continue
		}
		for _, p := range ports {
			out = append(out, rule{[]stmt{addrMatch(st, true, false), dport(p.proto, p.port),
				counterRef(ReasonDNSAccepted), verdict(expr.VerdictAccept, "")}})
		}
	}
	return out
}

// dotRedirect returns the prerouting rules of `enforce.dot: redirect`: DoT
// (TCP 853) from a peer to any address but the resolvers is DNATed to the
// first resolver of its family. A client in opportunistic mode then talks
// to sluice; a strict one fails its certificate check at once.
func dotRedirect(s Spec, counted countedRules, fams []struct {
	set    *set
	target netip.Addr
}) []rule {
	if s.DoT != ActionRedirect || !s.Encrypted.DoT {
		return nil
	}
	var out []rule
	for _, fam := range fams {
		if !fam.target.IsValid() {
			continue
		}
		out = append(out, counted(ReasonDNSRedirected, familyOf(fam.set),
			[]stmt{iifname(s.Interface), addrMatch(fam.set, true, true), dport(unix.IPPROTO_TCP, portDoT)},
			counterRef(ReasonDNSRedirected), dnat(fam.target, portDoT))...)
	}
	return out
}
