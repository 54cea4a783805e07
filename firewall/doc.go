// Package firewall owns sluice's nftables table (family inet, "sluice" by
// default): the desired state is built in memory from a Spec, applied in one
// netlink batch, watched and re-applied when someone removes or changes it,
// and its named counters are read back for status and Prometheus. It talks
// to the kernel with github.com/google/nftables only; it never runs nft.
//
// # What the table does
//
// Everything matches traffic arriving on the WireGuard interface (iifname):
//
//   - chain prerouting (nat, priority dstnat): with OffPolicyDNS=redirect,
//     UDP/TCP port 53 to any address that is not an in-tunnel resolver —
//     public resolvers and internal ones inside routed prefixes alike — is
//     DNATed to the first resolver of the packet's family. DNAT to an address,
//     not `redirect`, because redirect rewrites to the interface's primary
//     address, which need not be the proxy's.
//   - chains input and forward (filter, priority filter - 5) jump to the
//     regular chain peer_dns: accept port 53 to the resolvers
//     (dns_accepted); reject any other port 53 (dns_rejected: TCP reset,
//     ICMP/ICMPv6 administratively prohibited for UDP) — the policy with
//     reject, the backstop with redirect (old flows NAT did not see, a family
//     without a resolver); TCP 853 reset (dot_rejected), UDP 853 rejected
//     (doq_rejected); TCP/UDP 443 to the interval sets @doh_v4/@doh_v6
//     rejected (doh_rejected) — in full mode every TCP and UDP port of those
//     addresses (DNSCrypt, DoH on 8443, DoQ's draft ports), ICMP excepted.
//     Sets hold thousands of prefixes in a few rules.
//   - forward also drops peer-to-peer traffic (iif and oif the WireGuard
//     interface) unless PeerToPeer; in full mode it accepts peers' traffic
//     to the egress and established/related return traffic, and chain
//     postrouting (nat, priority srcnat) masquerades IPv4 and IPv6 from the
//     tunnel prefixes out of the egress.
//
// Every verdict is counted in a named counter object whose name is the
// Reason; Apply carries counter values over to the replacing table.
//
// # Per-peer counters
//
// The DNS verdicts (dns_redirected, dns_accepted, dns_rejected,
// dot_rejected, doq_rejected, doh_rejected) are also counted per peer, for
// `sluice doctor --peer`: each has a dynamic set per family,
// peer_<reason>_v4/_v6 (size 65535, flags dynamic,timeout, timeout 1h),
// keyed by the peer's source address, which the rules fill with
// `update @peer_<reason>_v4 { ip saddr counter }` — a per-element counter.
// PeerCounters reads them back (GetSetElements; google/nftables v0.3.0
// decodes the element's counter from NFTA_SET_ELEM_EXPR, which is what the
// kernel sends when an element has exactly one expression; it ignores
// NFTA_SET_ELEM_EXPRESSIONS, used for two or more, so keep one).
//
// The update is a rule of its own placed right before the verdict rule with
// the same match, never a statement inside it: when a dynset cannot add an
// element (the set is full, no memory) the kernel ends the rule it is in,
// so a reject or DNAT after it in the same rule would be skipped and the
// packet would pass — fail open. Separate, a full set only loses counts.
//
// Elements expire an hour after the peer's last counted packet, and Apply
// (and Run's re-apply) replaces the table, which starts the per-peer sets
// empty: unlike the named counters they are not carried over, because
// google/nftables cannot send an element's counter value. Per-peer counts
// therefore cover the time since the last apply, at most an hour of
// silence.
//
// # Resolution-gated egress (learned.go, learner.go, nflog.go)
//
// With EgressMode resolved or audit, forward jumps to the regular chain
// peer_egress for peer packets leaving through another interface. There,
// established and related packets return at once; a new flow returns when
// `ip saddr . ip daddr` is in @egress_learned_v4 (ip6 in _v6: concatenated
// keys, flags timeout, a timeout per element) or its destination is in the
// interval sets @egress_allow_v4/_v6; everything else is counted
// (egress_unresolved, and per peer), logged to NFLOG group 2613 (limit
// 20/s) and, in resolved mode, rejected (TCP reset, ICMPX admin-prohibited).
// Audit stops before the reject.
//
// The learned sets are filled from userspace: Learn (the dnsproxy answer
// observer, wired by gateway) hands pairs to one writer goroutine that
// sends everything waiting in one batch and answers every waiter after the
// kernel's ack; Covered is the allocation-free check the DNS fast path makes.
// A userspace map holds each pair's expiry: it de-duplicates (a pair is
// sent again only once less than max(TTL, floor/2) is left), it re-installs
// every live pair in the same batch whenever the table is replaced (Apply,
// re-apply), and it is persisted to Options.LearnedFile for restarts.
//
// In every mode forward also drops new flows from other interfaces toward
// the WireGuard interface (inbound_dropped) unless their source is in
// @inbound_allow_v4/_v6; related and established packets pass.
//
// # Atomic replace, fail closed
//
// Apply sends one batch: add table (creates it when missing), delete table,
// add table with all counters, sets, chains and rules. The kernel commits a
// batch atomically, so packets see the old table or the new one and never
// a mix, and a table left by a killed process is replaced, never doubled.
// A SIGKILLed sluice leaves its table in place (fail closed); only Close
// removes it, and not with KeepOnStop. After each Apply, conntrack entries
// of existing peer flows to ports 53 and 853 are deleted so that a flow
// opened before the rule (NAT is decided on a flow's first packet) cannot
// keep bypassing it.
//
// # Living beside other tables
//
// nftables evaluates every base chain registered at a hook, in priority
// order, table by table. An accept ends evaluation only within its own base
// chain: the packet then meets the next table's chain at the same hook, and
// a drop there still drops it. So sluice's accepts do not open anything in
// another table: an operator whose own table drops by default (a host
// firewall with policy drop on input) must itself allow the WireGuard
// interface to reach the resolvers on port 53 (and, with redirect, after
// DNAT the packet arrives on input addressed to the resolver). The converse
// holds too: sluice's rejects and drops are final whatever other tables
// accept, which is what keeps DNS in the tunnel.
//
// Priorities: NAT uses the standard dstnat (-100) and srcnat (100) so that
// DNAT happens before routing and filter chains see the rewritten address,
// like every other NAT table. The filter chains use filter - 5: after
// conntrack (-200) and dstnat, so ct state and the DNATed destination are
// known; a little before the usual filter (0) tables, so an off-policy
// attempt is counted and answered with a fast reset/ICMP error even when a
// later table would drop it silently (a silent drop makes clients wait for
// a timeout, then fall back to another resolver).
//
// # Watching
//
// Run listens to nftables netlink events and polls every 500 ms as a
// fallback; when the table is missing or a chain, rule or set of it is gone
// (nft delete table, nft flush ruleset, nft flush table), it applies the
// last spec again and counts it (sluice_firewall_reapplied_total).
package firewall
