// Package dnsproxy owns sluice's in-tunnel resolver: the UDP and TCP
// listeners on the tunnel addresses, the source ACL (tunnel prefixes only;
// never an open resolver), policy (leak canaries, DDR, public DoH/DoT names,
// blocklist, allowlist), the wire-format answer cache, the zone router, the
// upstream groups (udp, tcp, tls) with health checks, limits, metrics and
// the query log.
//
// A query is only ever sent to the group of its own zone (longest suffix
// match); when every upstream of that group fails the client gets SERVFAIL
// with an Extended DNS Error before Config.Deadline, never another group's
// answer.
//
// Cache hits over UDP never unpack a dns.Msg: the fast path parses the
// header and question from the wire, looks the case-folded key up, and
// patches ID, question case, flags and TTLs into a copy of the stored wire
// answer without allocating. A plain UDP miss is forwarded from the
// client's bytes by the listener on a shared random-port socket (a
// carrier) whose reader matches the answer, reads it on the wire, caches
// it and renders it like the hits that follow (miss_wire.go,
// carrier_linux.go). Everything else
// takes the slow path. The sockets of both are read and written with raw
// non-blocking system calls (dialudp_linux.go, server_udp_linux.go), so
// the Go scheduler never hands the proxy's core to another thread in the
// middle of a sendto.
//
// One file, one job:
//
//	config.go      Config, defaults, typed Upstream (ParseUpstream), the dns
//	               section as written (FileConfig) and its validation, Preflight
//	proxy.go       Proxy lifecycle (New, Start, Reload, Close, Stats, Exchange) and the slow path
//	server_udp.go  SO_REUSEPORT sockets per core, read loops (asleep in recvmmsg
//	               on sockets out of Go's poller, or in the poller: UDPWait), the fast path
//	miss_wire.go   the UDP miss path: startMiss on the listener, completeMiss on the carrier poller
//	carrier_linux.go  sockets carrying several misses at once
//	carrier_poll_linux.go  the one poller that reads every carrier's answers
//	procs.go       GOMAXPROCS raised for the threads that wait in the kernel (UDPWait)
//	spares.go      random-port upstream sockets made ahead, reused a few times
//	server_tcp.go  TCP listener (dns.Server with the proxy's own handler)
//	wire.go        minimal wire parsing and writing for the fast path
//	cache.go       sharded CLOCK cache of wire answers, TTL rules (RFC 2308)
//	router.go      zone → group routing
//	upstream.go    upstream exchange (udp with tcp fallback, tcp, tls), groups, failover
//	health.go      active health checks
//	policy.go      canaries, DDR, DoH names, blocklist, allowlist
//	limits.go      per-peer token buckets, in-flight cap
//	metrics.go     sluice_dns_* metrics, sharded hot-path counters
//	querylog.go    asynchronous slog JSON query log, drained every 2 ms while busy
package dnsproxy
