package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Chain and set names inside the table.
const (
	chainPrerouting  = "prerouting"
	chainInput       = "input"
	chainForward     = "forward"
	chainPostrouting = "postrouting"
	chainPeerDNS     = "peer_dns" // regular chain, jumped to from input and forward

	setResolvers4 = "resolvers_v4"
	setResolvers6 = "resolvers_v6"
	setDoH4       = "doh_v4"
	setDoH6       = "doh_v6"
	setTunnel4    = "tunnel_v4"
	setTunnel6    = "tunnel_v6"
)

// Priorities of the base chains; see doc.go for why.
const (
	priorityDstNAT = -100 // "dstnat": NAT prerouting
	prioritySrcNAT = 100  // "srcnat": NAT postrouting
	// priorityFilter runs our filter chains a little before the common
	// priority 0 (filter) tables so that every attempt is counted and
	// rejected quickly even when a later table would drop it silently, and
	// after conntrack (-200) and NAT prerouting (-100).
	priorityFilter = -5
)

const (
	portDNS   = 53
	portDoT   = 853
	portHTTPS = 443
)

// stmt is one piece of a rule: the nft text and the expressions it compiles to.
type stmt struct {
	text  string
	exprs []expr.Any
}

type rule struct {
	stmts []stmt
}

func (r rule) text() string {
	parts := make([]string, len(r.stmts))
	for i, s := range r.stmts {
		parts[i] = s.text
	}
	return strings.Join(parts, " ")
}

func (r rule) exprs() []expr.Any {
	var out []expr.Any
	for _, s := range r.stmts {
		out = append(out, s.exprs...)
	}
	return out
}

type baseChain struct {
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	hookName string
	prio     int32
	prioText string
}

type chain struct {
	name  string
	base  *baseChain // nil for a regular chain
	rules []rule
}

type set struct {
	name     string
	id       uint32 // batch-local ID, unique within the ruleset
	v6       bool
	interval bool
	ranges   []addrRange // single addresses when !interval
	// peer is set for the dynamic per-peer accounting sets: the reason
	// whose packets they count per peer source address. They start empty.
	peer Reason
	// learned marks the learned egress sets: (peer . destination) pairs
	// with per-element timeouts, filled from userspace (see learned.go).
	learned bool
}

// ruleset is the whole desired table, built in memory.
type ruleset struct {
	table    string
	iface    string // the WireGuard interface every rule matches
	counters []Reason
	sets     []*set
	chains   []*chain
}

func (rs *ruleset) set(name string) *set {
	for _, s := range rs.sets {
		if s.name == name {
			return s
		}
	}
	return nil
}

// Per-peer accounting sets: one per counted Reason and family, keyed by
// the peer's source address, filled by the rules (dynset update) with a
// counter per element. An element lives peerSetTimeout after the peer's
// last counted packet; at most peerSetSize peers per set are counted.
const (
	peerSetSize    = 65535
	peerSetTimeout = time.Hour
	peerSetPrefix  = "peer_"
)

// PeerReasons lists the reasons counted per peer as well (see
// Firewall.PeerCounters), in rendering order.
func PeerReasons() []Reason {
	return []Reason{
		ReasonDNSRedirected, ReasonDNSRejected, ReasonDNSAccepted,
		ReasonDoTRejected, ReasonDoQRejected, ReasonDoHRejected,
		ReasonEgressUnresolved,
	}
}

func peerSetName(r Reason, v6 bool) string {
	if v6 {
		return peerSetPrefix + string(r) + "_v6"
	}
	return peerSetPrefix + string(r) + "_v4"
}

// Which address families a match can see.
type family int

const (
	famV4 family = iota
	famV6
	famBoth // the match does not test the family
)

// egress names the interfaces masqueraded out of in full mode.
type egress struct{ v4, v6 string }

// build turns a normalized spec into the desired table.
func build(s Spec, eg egress) *ruleset {
	rs := &ruleset{table: s.Table, iface: s.Interface, counters: Reasons()}
	addSet := func(name string, v6, interval bool, ranges []addrRange) *set {
		st := &set{name: name, id: uint32(len(rs.sets) + 1), v6: v6, interval: interval, ranges: ranges}
		rs.sets = append(rs.sets, st)
		return st
	}
	// counted returns the per-peer accounting rules for match followed by
	// the verdict rule (match, then tail). Accounting is a rule of its own,
	// never a statement inside the verdict rule: a dynset that cannot add an
	// element (set full, no memory) ends the rule it is in, and a reject in
	// that rule would then be skipped — fail open.
	counted := func(r Reason, fam family, match []stmt, tail ...stmt) []rule {
		var out []rule
		for _, v6 := range []bool{false, true} {
			if (fam == famV4 && v6) || (fam == famV6 && !v6) {
				continue
			}
			name := peerSetName(r, v6)
			st := rs.set(name)
			if st == nil {
				st = addSet(name, v6, false, nil)
				st.peer = r
			}
			acct := append(append([]stmt(nil), match...), peerUpdate(st, fam == famBoth))
			out = append(out, rule{acct})
		}
		return append(out, rule{append(append([]stmt(nil), match...), tail...)})
	}
	var res4, res6 []addrRange
	var first4, first6 netip.Addr
	for _, a := range s.Resolvers {
		r := addrRange{a, a}
		if a.Is4() {
			if !first4.IsValid() {
				first4 = a
			}
			res4 = append(res4, r)
		} else {
			if !first6.IsValid() {
				first6 = a
			}
			res6 = append(res6, r)
		}
	}
	res4, res6 = uniqueAddrs(res4), uniqueAddrs(res6)
	r4 := addSet(setResolvers4, false, false, res4)
	r6 := addSet(setResolvers6, true, false, res6)
	var doh4, doh6, tun4, tun6 *set
	if s.DoH == ActionReject {
		v4, v6 := splitFamilies(normalizeRanges(s.DoHSet, nil))
		doh4 = addSet(setDoH4, false, true, v4)
		doh6 = addSet(setDoH6, true, true, v6)
	}
	if s.FullTunnel {
		v4, v6 := splitFamilies(normalizeRanges(s.TunnelPrefixes, nil))
		tun4 = addSet(setTunnel4, false, true, v4)
		tun6 = addSet(setTunnel6, true, true, v6)
	}

	wg := s.Interface
	// nat prerouting: redirect off-policy DNS to the proxy.
	pre := &chain{name: chainPrerouting, base: &baseChain{
		typ: nftables.ChainTypeNAT, hook: nftables.ChainHookPrerouting, hookName: "prerouting",
		prio: priorityDstNAT, prioText: "dstnat",
	}}
	fams := []struct {
		set    *set
		target netip.Addr
	}{{r4, first4}, {r6, first6}}
	if s.OffPolicyDNS == ActionRedirect {
		for _, fam := range fams {
			if !fam.target.IsValid() {
				continue // no resolver of this family: the reject backstop in peer_dns applies
			}
			for _, proto := range []uint8{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				pre.rules = append(pre.rules, counted(ReasonDNSRedirected, familyOf(fam.set),
					[]stmt{iifname(wg), addrMatch(fam.set, true, true), dport(proto, portDNS)},
					counterRef(ReasonDNSRedirected), dnat(fam.target, portDNS))...)
			}
		}
	}

	pre.rules = append(pre.rules, dotRedirect(s, counted, fams)...)

	// peer_dns: what a peer may send to port 53/853/443, from input and forward.
	dns := &chain{name: chainPeerDNS}
	dns.rules = append(dns.rules, encryptedAccept(s, []*set{r4, r6})...)
	for _, st := range []*set{r4, r6} {
		for _, proto := range []uint8{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			dns.rules = append(dns.rules, counted(ReasonDNSAccepted, familyOf(st),
				[]stmt{addrMatch(st, true, false), dport(proto, portDNS)},
				counterRef(ReasonDNSAccepted), verdict(expr.VerdictAccept, ""))...)
		}
	}
	// With redirect this is the backstop for what NAT did not catch (old
	// flows, a family without a resolver); with reject it is the policy.
	dns.rules = append(dns.rules, counted(ReasonDNSRejected, famBoth,
		[]stmt{dport(unix.IPPROTO_UDP, portDNS)}, counterRef(ReasonDNSRejected), rejectICMPX())...)
	dns.rules = append(dns.rules, counted(ReasonDNSRejected, famBoth,
		[]stmt{dport(unix.IPPROTO_TCP, portDNS)}, counterRef(ReasonDNSRejected), rejectTCPReset())...)
	if s.DoT != ActionAllow { // redirect: the backstop for what NAT did not catch, and DoQ
		dns.rules = append(dns.rules, counted(ReasonDoTRejected, famBoth,
			[]stmt{dport(unix.IPPROTO_TCP, portDoT)}, counterRef(ReasonDoTRejected), rejectTCPReset())...)
		dns.rules = append(dns.rules, counted(ReasonDoQRejected, famBoth,
			[]stmt{dport(unix.IPPROTO_UDP, portDoT)}, counterRef(ReasonDoQRejected), rejectICMPX())...)
	}
	if s.DoH == ActionReject {
		// Port 443 (HTTPS and HTTP/3). In full mode every TCP and UDP port of
		// a known resolver address: DNSCrypt, DoH on 8443, DoQ on the draft
		// ports 784 and 8853 — a public resolver has nothing else to offer a
		// peer whose every route goes through the gateway. ICMP stays open.
		tcp, udp := dport(unix.IPPROTO_TCP, portHTTPS), dport(unix.IPPROTO_UDP, portHTTPS)
		if s.FullTunnel {
			tcp, udp = l4proto(unix.IPPROTO_TCP), l4proto(unix.IPPROTO_UDP)
		}
		for _, st := range []*set{doh4, doh6} {
			dns.rules = append(dns.rules, counted(ReasonDoHRejected, familyOf(st),
				[]stmt{addrMatch(st, true, false), tcp}, counterRef(ReasonDoHRejected), rejectTCPReset())...)
			dns.rules = append(dns.rules, counted(ReasonDoHRejected, familyOf(st),
				[]stmt{addrMatch(st, true, false), udp}, counterRef(ReasonDoHRejected), rejectICMPX())...)
		}
	}

	filterBase := func(hook *nftables.ChainHook, name string) *baseChain {
		return &baseChain{typ: nftables.ChainTypeFilter, hook: hook, hookName: name, prio: priorityFilter, prioText: "filter - 5"}
	}
	in := &chain{name: chainInput, base: filterBase(nftables.ChainHookInput, "input")}
	in.rules = append(in.rules, rule{[]stmt{iifname(wg), verdict(expr.VerdictJump, chainPeerDNS)}})

	fwd := &chain{name: chainForward, base: filterBase(nftables.ChainHookForward, "forward")}
	fwd.rules = append(fwd.rules, rule{[]stmt{iifname(wg), verdict(expr.VerdictJump, chainPeerDNS)}})
	fwd.rules = append(fwd.rules, groupRules(rs, s, addSet, counted)...)
	if !s.PeerToPeer {
		fwd.rules = append(fwd.rules, rule{[]stmt{iifname(wg), oifname(wg), counterRef(ReasonPeerToPeerDropped), verdict(expr.VerdictDrop, "")}})
	}
	rs.chains = []*chain{pre, in, fwd, dns}
	buildEgress(rs, s, fwd, addSet, counted)

	if s.FullTunnel {
		outs := []string{eg.v4}
		if eg.v6 != eg.v4 {
			outs = append(outs, eg.v6)
		}
		for _, o := range outs {
			fwd.rules = append(fwd.rules, rule{[]stmt{iifname(wg), oifname(o), counterRef(ReasonEgressAccepted), verdict(expr.VerdictAccept, "")}})
		}
		fwd.rules = append(fwd.rules, rule{[]stmt{oifname(wg), ctStateEstablishedRelated(), counterRef(ReasonEstablishedReturns), verdict(expr.VerdictAccept, "")}})
		post := &chain{name: chainPostrouting, base: &baseChain{
			typ: nftables.ChainTypeNAT, hook: nftables.ChainHookPostrouting, hookName: "postrouting",
			prio: prioritySrcNAT, prioText: "srcnat",
		}}
		post.rules = append(post.rules,
			rule{[]stmt{oifname(eg.v4), addrMatch(tun4, false, false), masquerade()}},
			rule{[]stmt{oifname(eg.v6), addrMatch(tun6, false, false), masquerade()}},
		)
		rs.chains = append(rs.chains, post)
	}
	buildInbound(rs, s, fwd, addSet)
	return rs
}

// uniqueAddrs sorts single-address ranges and drops duplicates; unlike
// mergeRanges it keeps adjacent addresses apart (plain sets hold keys).
func uniqueAddrs(rs []addrRange) []addrRange {
	sort.Slice(rs, func(i, j int) bool { return rs[i].from.Less(rs[j].from) })
	var out []addrRange
	for _, r := range rs {
		if len(out) == 0 || out[len(out)-1].from != r.from {
			out = append(out, r)
		}
	}
	return out
}

// --- statements ---

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func iifname(name string) stmt {
	return stmt{fmt.Sprintf("iifname %q", name), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)},
	}}
}

func oifname(name string) stmt {
	return stmt{fmt.Sprintf("oifname %q", name), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)},
	}}
}

// addrMatch matches the destination (or source) address against st.
func addrMatch(st *set, daddr, invert bool) stmt {
	proto, nfproto := "ip", byte(unix.NFPROTO_IPV4)
	var off, l uint32 = 12, 4 // ip saddr
	if daddr {
		off = 16
	}
	if st.v6 {
		proto, nfproto, off, l = "ip6", unix.NFPROTO_IPV6, 8, 16
		if daddr {
			off = 24
		}
	}
	dir := "saddr"
	if daddr {
		dir = "daddr"
	}
	op := ""
	if invert {
		op = "!= "
	}
	return stmt{fmt.Sprintf("%s %s %s@%s", proto, dir, op, st.name), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l},
		&expr.Lookup{SourceRegister: 1, SetName: st.name, SetID: st.id, Invert: invert},
	}}
}

func familyOf(st *set) family {
	if st.v6 {
		return famV6
	}
	return famV4
}

// peerUpdate adds the packet's source address to the per-peer set st (or
// refreshes its timeout) and counts the packet in the element's counter:
// `update @set { ip saddr counter }`. withFamily tests the family first,
// for rules whose match does not (nft leaves that test implicit in text).
func peerUpdate(st *set, withFamily bool) stmt {
	proto, nfproto := "ip", byte(unix.NFPROTO_IPV4)
	var off, l uint32 = 12, 4
	if st.v6 {
		proto, nfproto, off, l = "ip6", unix.NFPROTO_IPV6, 8, 16
	}
	var exprs []expr.Any
	if withFamily {
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}})
	}
	exprs = append(exprs,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l},
		&expr.Dynset{SrcRegKey: 1, SetName: st.name, SetID: st.id, Operation: unix.NFT_DYNSET_OP_UPDATE,
			Exprs: []expr.Any{&expr.Counter{}}})
	return stmt{fmt.Sprintf("update @%s { %s saddr counter }", st.name, proto), exprs}
}

func protoName(proto uint8) string {
	if proto == unix.IPPROTO_TCP {
		return "tcp"
	}
	return "udp"
}

// l4proto matches the transport protocol alone (any port).
func l4proto(proto uint8) stmt {
	return stmt{"meta l4proto " + protoName(proto), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}}
}

func dport(proto uint8, port uint16) stmt {
	return stmt{fmt.Sprintf("%s dport %d", protoName(proto), port), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}}
}

func ctStateEstablishedRelated() stmt {
	mask := expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED
	return stmt{"ct state established,related", []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}}
}

const objTypeCounter = 1 // NFT_OBJECT_COUNTER

func counterRef(r Reason) stmt {
	return stmt{fmt.Sprintf("counter name %q", string(r)), []expr.Any{
		&expr.Objref{Type: objTypeCounter, Name: string(r)},
	}}
}

func verdict(k expr.VerdictKind, target string) stmt {
	text := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictJump: "jump " + target}[k]
	return stmt{text, []expr.Any{&expr.Verdict{Kind: k, Chain: target}}}
}

func rejectTCPReset() stmt {
	return stmt{"reject with tcp reset", []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}}
}

func rejectICMPX() stmt {
	return stmt{"reject with icmpx admin-prohibited", []expr.Any{
		&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED},
	}}
}

func dnat(to netip.Addr, port uint16) stmt {
	fam, text := uint32(unix.NFPROTO_IPV4), fmt.Sprintf("dnat ip to %s:%d", to, port)
	if to.Is6() {
		fam, text = unix.NFPROTO_IPV6, fmt.Sprintf("dnat ip6 to [%s]:%d", to, port)
	}
	return stmt{text, []expr.Any{
		&expr.Immediate{Register: 1, Data: to.AsSlice()},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1, RegProtoMin: 2},
	}}
}

func masquerade() stmt {
	return stmt{"masquerade", []expr.Any{&expr.Masq{}}}
}
