package firewall

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// EgressMode is how new peer flows to addresses no answer gave the peer are
// treated.
type EgressMode string

// Egress modes.
const (
	// EgressResolved refuses a new flow unless the gateway's resolver
	// answered the destination to that peer (a learned pair), or it is in
	// EgressAllow.
	EgressResolved EgressMode = "resolved"
	// EgressAudit counts and logs what EgressResolved would refuse, and
	// lets it through: the staged-rollout mode.
	EgressAudit EgressMode = "audit"
	// EgressOpen does not gate egress (no learned sets, no learning).
	EgressOpen EgressMode = "open"
)

// DefaultEgressMinTTL is the least time a learned pair stays: clients and
// runtimes cache answers longer than their TTLs say.
const DefaultEgressMinTTL = time.Hour

// EgressLogGroup is the NFLOG group the egress rules log refused (or, in
// audit, would-be refused) flows to; see EgressEvents.
const EgressLogGroup = 2613

// Log prefixes of the egress rules; EgressEvents tells them apart.
const (
	egressLogRefused = "sluice egress refused"
	egressLogAudit   = "sluice egress audit"
)

// egressLogRate bounds the logged events (per second, burst egressLogBurst):
// counting is exact, logging is a sample under a flood.
const (
	egressLogRate  = 20
	egressLogBurst = 40
)

const (
	chainPeerEgress = "peer_egress" // regular chain, jumped to from forward

	setLearned4      = "egress_learned_v4" // ipv4_addr . ipv4_addr, flags timeout
	setLearned6      = "egress_learned_v6"
	setEgressAllow4  = "egress_allow_v4"
	setEgressAllow6  = "egress_allow_v6"
	setInboundAllow4 = "inbound_allow_v4"
	setInboundAllow6 = "inbound_allow_v6"
)

// normalizeEgress fills the egress defaults of s and validates them.
func (s *Spec) normalizeEgress() error {
	switch s.EgressMode {
	case "":
		s.EgressMode = EgressOpen
		if s.FullTunnel {
			s.EgressMode = EgressResolved
		}
	case EgressResolved, EgressAudit, EgressOpen:
	default:
		return fmt.Errorf("invalid egress mode %q: want resolved, audit or open", s.EgressMode)
	}
	if s.EgressMinTTL < 0 {
		return fmt.Errorf("invalid egress minimum ttl %v", s.EgressMinTTL)
	}
	if s.EgressMinTTL == 0 {
		s.EgressMinTTL = DefaultEgressMinTTL
	}
	for _, p := range append(append([]netip.Prefix(nil), s.EgressAllow...), s.InboundAllow...) {
		if !p.IsValid() {
			return fmt.Errorf("invalid allow prefix %q", p)
		}
	}
	s.EgressAllow = NormalizePrefixes(s.EgressAllow, nil)
	s.InboundAllow = NormalizePrefixes(s.InboundAllow, nil)
	return nil
}

// gatesEgress reports whether the table carries the learned sets.
func (s Spec) gatesEgress() bool {
	return s.EgressMode == EgressResolved || s.EgressMode == EgressAudit
}

// buildEgress adds the egress gate: forward jumps to peer_egress for every
// peer packet leaving through another interface; established and related
// packets return at once, new flows return when their (source .
// destination) pair was learned or the destination is allowlisted, and
// everything else is counted (egress_unresolved, per peer too), logged to
// NFLOG (rate-limited) and — with EgressResolved — rejected fast.
func buildEgress(rs *ruleset, s Spec, fwd *chain,
	addSet func(name string, v6, interval bool, ranges []addrRange) *set,
	counted func(r Reason, fam family, match []stmt, tail ...stmt) []rule) {
	if !s.gatesEgress() {
		return
	}
	l4 := addSet(setLearned4, false, false, nil)
	l4.learned = true
	l6 := addSet(setLearned6, true, false, nil)
	l6.learned = true
	a4, a6 := splitFamilies(normalizeRanges(s.EgressAllow, nil))
	al4 := addSet(setEgressAllow4, false, true, a4)
	al6 := addSet(setEgressAllow6, true, true, a6)

	wg := s.Interface
	fwd.rules = append(fwd.rules, rule{[]stmt{iifname(wg), oifnameNot(wg), verdict(expr.VerdictJump, chainPeerEgress)}})

	eg := &chain{name: chainPeerEgress}
	eg.rules = append(eg.rules,
		rule{[]stmt{ctStateEstablishedRelated(), returnVerdict()}},
		rule{[]stmt{pairMatch(l4), returnVerdict()}},
		rule{[]stmt{pairMatch(l6), returnVerdict()}},
		rule{[]stmt{addrMatch(al4, true, false), returnVerdict()}},
		rule{[]stmt{addrMatch(al6, true, false), returnVerdict()}},
	)
	eg.rules = append(eg.rules, counted(ReasonEgressUnresolved, famBoth, nil, counterRef(ReasonEgressUnresolved))...)
	prefix := egressLogRefused
	if s.EgressMode == EgressAudit {
		prefix = egressLogAudit
	}
	eg.rules = append(eg.rules, rule{[]stmt{limitRate(egressLogRate, egressLogBurst), nflog(prefix, EgressLogGroup)}})
	if s.EgressMode == EgressResolved {
		eg.rules = append(eg.rules,
			rule{[]stmt{l4proto(unix.IPPROTO_TCP), rejectTCPReset()}},
			rule{[]stmt{rejectICMPX()}},
		)
	}
	rs.chains = append(rs.chains, eg)
}

// buildInbound drops new flows from outside the tunnel toward peers (in
// every mode) unless their source is in InboundAllow; established and
// related packets pass.
func buildInbound(rs *ruleset, s Spec, fwd *chain,
	addSet func(name string, v6, interval bool, ranges []addrRange) *set) {
	wg := s.Interface
	i4, i6 := splitFamilies(normalizeRanges(s.InboundAllow, nil))
	in4 := addSet(setInboundAllow4, false, true, i4)
	in6 := addSet(setInboundAllow6, true, true, i6)
	base := []stmt{iifnameNot(wg), oifname(wg), ctStateNotEstablishedRelated()}
	fwd.rules = append(fwd.rules,
		rule{append(append([]stmt(nil), base...), addrMatch(in4, false, false), verdict(expr.VerdictAccept, ""))},
		rule{append(append([]stmt(nil), base...), addrMatch(in6, false, false), verdict(expr.VerdictAccept, ""))},
		rule{append(append([]stmt(nil), base...), counterRef(ReasonInboundDropped), verdict(expr.VerdictDrop, ""))},
	)
}

// --- statements of the egress gate ---

// Registers for concatenations: 32-bit registers NFT_REG32_00 onwards, as
// nft allocates them, one address after the other.
const regConcat = 8 // NFT_REG32_00

// pairMatch matches `ip saddr . ip daddr @st` (ip6 for a v6 set).
func pairMatch(st *set) stmt {
	proto, nfproto := "ip", byte(unix.NFPROTO_IPV4)
	var soff, doff, l uint32 = 12, 16, 4
	if st.v6 {
		proto, nfproto, soff, doff, l = "ip6", unix.NFPROTO_IPV6, 8, 24, 16
	}
	return stmt{fmt.Sprintf("%s saddr . %s daddr @%s", proto, proto, st.name), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: regConcat, Base: expr.PayloadBaseNetworkHeader, Offset: soff, Len: l},
		&expr.Payload{DestRegister: regConcat + l/4, Base: expr.PayloadBaseNetworkHeader, Offset: doff, Len: l},
		&expr.Lookup{SourceRegister: regConcat, SetName: st.name, SetID: st.id},
	}}
}

func oifnameNot(name string) stmt {
	return stmt{fmt.Sprintf("oifname != %q", name), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes(name)},
	}}
}

func iifnameNot(name string) stmt {
	return stmt{fmt.Sprintf("iifname != %q", name), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes(name)},
	}}
}

// ctStateNotEstablishedRelated matches new, invalid and untracked packets.
func ctStateNotEstablishedRelated() stmt {
	s := ctStateEstablishedRelated()
	s.text = "ct state ! established,related"
	cmp := *s.exprs[2].(*expr.Cmp)
	cmp.Op = expr.CmpOpEq
	s.exprs = []expr.Any{s.exprs[0], s.exprs[1], &cmp}
	return s
}

func returnVerdict() stmt {
	return stmt{"return", []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}}
}

func limitRate(rate uint64, burst uint32) stmt {
	return stmt{fmt.Sprintf("limit rate %d/second burst %d packets", rate, burst), []expr.Any{
		&expr.Limit{Type: expr.LimitTypePkts, Rate: rate, Unit: expr.LimitTimeSecond, Burst: burst},
	}}
}

func nflog(prefix string, group uint16) stmt {
	return stmt{fmt.Sprintf("log prefix %q group %d", prefix, group), []expr.Any{
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: group, Data: []byte(prefix)},
	}}
}

// learnedSet is the kernel form of a learned set: concatenated addresses,
// per-element timeouts, no default timeout.
func learnedSet(t *nftables.Table, s *set) *nftables.Set {
	typ := nftables.TypeIPAddr
	if s.v6 {
		typ = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Name: s.name, ID: s.id, KeyType: nftables.MustConcatSetType(typ, typ),
		Concatenation: true, HasTimeout: true}
}
