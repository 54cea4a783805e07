#!/usr/bin/env bash
# sluice demo: a guided tour of the DNS-safe WireGuard gateway, run by
# `make demo` (as root). Everything happens in network namespaces created
# here with unique names and removed on any exit; nothing touches the host's
# own network namespace or resolver configuration.
#
#   client    192.0.2.2   wg-quick + wireguard-go, dig, kdig, curl
#   gateway   192.0.2.1   sluice (tunnel 10.20.0.1/24, fd20::1/64, resolvers 10.20.0.53, fd20::53)
#   corp      10.30.0.53, 10.30.0.54   unbound: git.corp.example = 10.30.1.10
#   internet  198.51.100.53 unbound: git.corp.example = 198.51.100.66 (the split-horizon trap)
#             DoT 203.0.113.11:853, DoH 203.0.113.10:443 (unbound)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $EUID -ne 0 ]]; then
	echo "demo.sh: run as root (it creates network namespaces)" >&2
	exit 1
fi
for tool in go ip wg wg-quick wireguard-go unbound unbound-checkconf openssl dig kdig curl; do
	command -v "$tool" >/dev/null || { echo "demo.sh: missing $tool" >&2; exit 1; }
done

SUF=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
GW=slgw$SUF CL=slcl$SUF CO=slco$SUF IN=slin$SUF
WGIF=slgw$SUF   # the gateway's WireGuard interface
CLIF=wgc$SUF    # the client's
WORK=$(mktemp -d /tmp/sluice-demo.XXXXXX)
SLUICE=$WORK/sluice
CONF=$WORK/sluice.yaml
SLUICE_PID="" SLUICE_LOG="" SLUICE_RUNS=0
UNBOUND_PIDS=()
CREATED_ETC_NETNS=""
[[ -d /etc/netns ]] || CREATED_ETC_NETNS=1

bold=$'\e[1m' cyan=$'\e[36m' dim=$'\e[2m' off=$'\e[0m'
[[ -t 1 ]] || bold="" cyan="" dim="" off=""

section() { printf '\n%s== %s ==%s\n' "$bold" "$*" "$off"; }
note() { printf '%s# %s%s\n' "$dim" "$*" "$off"; }
# on NS LABEL CMD...: print the command as typed in that namespace, then run it.
on() {
	local ns=$1 label=$2
	shift 2
	printf '%s[%s]$ %s%s\n' "$cyan" "$label" "${*/#$SLUICE/sluice}" "$off"
	ip netns exec "$ns" "$@"
}
# refused NS LABEL CMD...: like on, for a command that must fail.
refused() {
	local start=$SECONDS rc=0
	on "$@" || rc=$?
	if [[ $rc -eq 0 ]]; then
		echo "!! expected this to fail" >&2
		exit 1
	fi
	note "failed as it should (exit $rc, $((SECONDS - start))s)"
}
sluice() { on "$GW" gateway "$SLUICE" "$@" -c "$CONF"; }
# wgquick ARGS: wg-quick in the client namespace with Debian's wireguard-go
# (it daemonizes) and the resolvconf shim first in PATH.
wgquick() {
	printf '%s[client]$ wg-quick %s%s\n' "$cyan" "$*" "$off"
	ip netns exec "$CL" env -u WG_PROCESS_FOREGROUND -u LOG_LEVEL WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go \
		PATH="$WORK/shim:$PATH" wg-quick "$@" 2>&1 | grep -v -e '│' -e '┌' -e '└' -e 'Unknown device type'
}

cleanup() {
	local rc=$?
	set +e
	section "Cleaning up"
	stop_sluice
	for pid in "${UNBOUND_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
	if [[ -f $WORK/$CLIF.conf ]] && ip -n "$CL" link show "$CLIF" >/dev/null 2>&1; then
		ip netns exec "$CL" env WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go PATH="$WORK/shim:$PATH" \
			wg-quick down "$WORK/$CLIF.conf" >/dev/null 2>&1
	fi
	for ns in "$CL" "$GW" "$CO" "$IN"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
		ip netns del "$ns" 2>/dev/null
	done
	rm -rf "/etc/netns/$CL"
	[[ -n $CREATED_ETC_NETNS ]] && rmdir /etc/netns 2>/dev/null
	rm -f "/var/run/wireguard/$CLIF.sock" "/var/run/wireguard/$WGIF.sock"
	rm -rf "$WORK"
	echo "removed namespaces $CL $GW $CO $IN and $WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_sluice() {
	[[ -n $SLUICE_PID ]] || return 0
	note "SIGTERM to sluice (pid $SLUICE_PID)"
	kill -TERM "$SLUICE_PID" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$SLUICE_PID" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$SLUICE_PID" 2>/dev/null && note "sluice did not stop within 10s: killed"
	local rc=0
	wait "$SLUICE_PID" 2>/dev/null || rc=$?
	note "sluice exited with status $rc"
	tail -n 2 "$SLUICE_LOG"
	SLUICE_PID=""
}

start_sluice() {
	SLUICE_LOG=$WORK/sluice-$((++SLUICE_RUNS)).log
	ip netns exec "$GW" "$SLUICE" up -c "$CONF" >"$SLUICE_LOG" 2>&1 &
	SLUICE_PID=$!
	printf '%s[gateway]$ sluice up -c %s 2>%s &%s\n' "$cyan" "$CONF" "$SLUICE_LOG" "$off"
	for _ in $(seq 200); do
		grep -q ready "$SLUICE_LOG" && break
		kill -0 "$SLUICE_PID" 2>/dev/null || { cat "$SLUICE_LOG"; echo "sluice up exited" >&2; exit 1; }
		sleep 0.1
	done
	grep -q ready "$SLUICE_LOG" || { cat "$SLUICE_LOG"; echo "sluice up: not ready after 20s" >&2; exit 1; }
	tail -n 4 "$SLUICE_LOG"
}

unbound_conf() { # name addrs... -- records...
	local name=$1 dir=$WORK/unbound-$1
	shift
	mkdir -p "$dir"
	{
		echo "server:"
		printf '  %s\n' 'chroot: ""' 'username: ""' "directory: \"$dir\"" "pidfile: \"$dir/pid\"" \
			'use-syslog: no' "logfile: \"$dir/log\"" 'log-queries: yes' 'module-config: "iterator"' \
			'access-control: 0.0.0.0/0 allow' 'access-control: ::/0 allow' 'do-not-query-localhost: no' \
			'interface-automatic: no' 'local-zone: "." static' \
			'local-data: ". 60 IN SOA root.test. hostmaster.test. 1 3600 600 86400 60"'
		while [[ $1 != -- ]]; do echo "  interface: $1"; shift; done
		shift
		printf '  %s\n' "$@"
		printf 'remote-control:\n  control-enable: no\n'
	} >"$dir/unbound.conf"
	unbound-checkconf "$dir/unbound.conf" >/dev/null
}

wait_dns() { # ns server
	for _ in $(seq 50); do
		ip netns exec "$1" dig +tries=1 +time=1 @"$2" . SOA >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "resolver $2 did not come up" >&2
	exit 1
}

section "Building sluice"
(cd "$ROOT" && set -x && go build -o "$SLUICE" ./cmd/sluice)
"$SLUICE" version

section "Creating the test network (namespaces $CL $GW $CO $IN)"
for ns in "$CL" "$GW" "$CO" "$IN"; do
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
# Each veth pair is created directly inside its two namespaces.
ip -n "$GW" link add ul0 type veth peer name ul0 netns "$CL"
ip -n "$GW" link add corp0 type veth peer name gw0 netns "$CO"
ip -n "$GW" link add inet0 type veth peer name gw0 netns "$IN"
ip -n "$GW" addr add 192.0.2.1/24 dev ul0
ip -n "$GW" addr add 10.30.0.1/16 dev corp0
ip -n "$GW" addr add fd30::1/64 dev corp0
ip -n "$GW" addr add 203.0.113.1/24 dev inet0
ip -n "$GW" addr add 2001:db8:1::1/64 dev inet0
ip -n "$CL" addr add 192.0.2.2/24 dev ul0
for a in 10.30.0.2/16 10.30.0.53/16 10.30.0.54/16 fd30::2/64; do ip -n "$CO" addr add "$a" dev gw0; done
# git.corp.example's host, and a neighbour nobody resolves (resolution-gated egress).
for a in 10.30.1.10/32 10.30.1.11/32 fd30::10/128; do ip -n "$CO" addr add "$a" dev lo; done
ip -n "$IN" addr add 203.0.113.2/24 dev gw0
ip -n "$IN" addr add 2001:db8:1::2/64 dev gw0
for a in 198.51.100.53/32 203.0.113.10/32 203.0.113.11/32 2001:db8:53::53/128 2001:db8:443::10/128 2001:db8:853::11/128; do
	ip -n "$IN" addr add "$a" dev lo
done
for ns in "$CL" "$GW" "$CO" "$IN"; do
	for l in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do ip -n "$ns" link set "$l" up; done
done
ip -n "$GW" route add default via 203.0.113.2
ip -n "$GW" -6 route add default via 2001:db8:1::2
ip -n "$CO" route add 10.20.0.0/24 via 10.30.0.1
ip -n "$CO" -6 route add fd20::/64 via fd30::1
ip -n "$GW" -br addr | awk '{$2=""; print}'

section "Starting resolvers: two corp unbounds, one public unbound with DoT and DoH"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=dns.example.net \
	-keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>/dev/null
corp=('local-zone: "corp.example." static'
	'local-data: "git.corp.example. 60 IN A 10.30.1.10"'
	'local-data: "git.corp.example. 60 IN AAAA fd30::10"')
unbound_conf corp1 10.30.0.53 -- "${corp[@]}"
unbound_conf corp2 10.30.0.54 -- "${corp[@]}"
unbound_conf public 198.51.100.53 2001:db8:53::53 198.51.100.53@5353 203.0.113.11@853 2001:db8:853::11@853 203.0.113.10@443 2001:db8:443::10@443 -- \
	'tls-port: 853' 'https-port: 443' "tls-service-key: \"$WORK/tls.key\"" "tls-service-pem: \"$WORK/tls.pem\"" \
	'local-zone: "corp.example." static' 'local-data: "git.corp.example. 60 IN A 198.51.100.66"' \
	'local-zone: "example.net." static' 'local-data: "www.example.net. 60 IN A 203.0.113.20"' \
	'local-data: "www.example.net. 60 IN AAAA 2001:db8:80::20"'
for u in corp1:"$CO" corp2:"$CO" public:"$IN"; do
	printf '%s[%s]$ unbound -d -c %s &%s\n' "$cyan" "${u%%:*}" "$WORK/unbound-${u%%:*}/unbound.conf" "$off"
	ip netns exec "${u#*:}" unbound -d -c "$WORK/unbound-${u%%:*}/unbound.conf" >/dev/null 2>&1 &
	UNBOUND_PIDS+=($!)
done
wait_dns "$CO" 10.30.0.53
wait_dns "$CO" 10.30.0.54
wait_dns "$IN" 198.51.100.53
note "the public resolver's view of an internal name (the trap a leaking client falls into):"
on "$GW" gateway dig +short @198.51.100.53 git.corp.example
PUBLIC_CORP_BEFORE=$(grep -c 'corp\.example' "$WORK/unbound-public/log" || true)
note "DoT and DoH servers are up (asked from the gateway itself, outside the tunnel):"
on "$GW" gateway kdig +short +tls @203.0.113.11 www.example.net
on "$GW" gateway kdig +short +https @203.0.113.10 www.example.net

section "Configuring sluice (split mode, everything else from the embedded defaults)"
printf '203.0.113.10\n2001:db8:443::10\n' >"$WORK/doh.txt"
write_conf() { # mode default-upstreams
	cat >"$CONF" <<EOF
interface:
  name: $WGIF
  endpoint: 192.0.2.1:51820
dns:
  mode: $1
  search_domains: [corp.example]
  zones:
    - name: corp.example
      upstreams: [10.30.0.53, 10.30.0.54]
  default:
    upstreams: $2
  query_log: $WORK/query.log
enforce:
  doh_ips_file: $WORK/doh.txt
peers:
  state_dir: $WORK/state
  routes: [10.30.0.0/16]
admin:
  control_socket: $WORK/ctl.sock
EOF
}
write_conf split "[198.51.100.53]"
cat "$CONF"
sluice check

section "Starting the gateway"
start_sluice

section "Adding a peer and bringing the client up with wg-quick"
sluice peer add alice --device laptop
sluice peer config alice/laptop -o "$WORK/$CLIF.conf"
sed -E 's/^((PrivateKey|PresharedKey) *= *).*/\1(hidden)/' "$WORK/$CLIF.conf"
# wg-quick hands DNS= to resolvconf: this shim writes the client
# namespace's own resolv.conf (ip netns exec mounts /etc/netns/NS/resolv.conf).
mkdir -p "/etc/netns/$CL" "$WORK/shim"
echo "# demo client: no resolver until wg-quick sets one" >"/etc/netns/$CL/resolv.conf"
printf '#!/bin/sh\ncase "$1" in -a) cat > %q ;; esac\n' "/etc/netns/$CL/resolv.conf" >"$WORK/shim/resolvconf"
chmod +x "$WORK/shim/resolvconf"
wgquick up "$WORK/$CLIF.conf"

section "Handshake and pings through the tunnel (IPv4 and IPv6)"
on "$CL" client ping -c 2 -W 1 10.20.0.53
on "$CL" client ping -c 2 -W 1 fd20::53
on "$CL" client ping -c 1 -W 1 10.30.0.53
on "$CL" client wg show "$CLIF"
sluice status

section "DNS through the tunnel"
note "meanwhile the operator watches alice's queries live (output below):"
printf '%s[gateway]$ sluice peer trace alice/laptop%s\n' "$cyan" "$off"
ip netns exec "$GW" "$SLUICE" peer trace alice/laptop --for 20s -c "$CONF" >"$WORK/trace.txt" 2>&1 &
TRACE_PID=$!
sleep 0.5
on "$CL" client cat /etc/resolv.conf
on "$CL" client dig +short git.corp.example
on "$CL" client dig +short AAAA git.corp.example
on "$CL" client dig +short www.example.net
note "a hard-coded resolver inside the routed corp prefix is redirected to the proxy:"
on "$CL" client dig +short @10.30.0.99 git.corp.example
note "Firefox's canary and a DoH provider's name are answered NXDOMAIN:"
on "$CL" client dig +short use-application-dns.net
on "$CL" client dig +short dns.google
sleep 0.2
kill -INT "$TRACE_PID" 2>/dev/null || true
wait "$TRACE_PID" 2>/dev/null || true
note "what sluice peer trace printed:"
cat "$WORK/trace.txt"

section "Full-tunnel mode: every name internal, every resolver bypass blocked"
stop_sluice
write_conf full "[10.30.0.53, 10.30.0.54]"
sed -n '/^dns:/,/^enforce:/p' "$CONF"
start_sluice
wgquick down "$WORK/$CLIF.conf"
sluice peer config alice/laptop -o "$WORK/$CLIF.conf"
grep AllowedIPs "$WORK/$CLIF.conf"
wgquick up "$WORK/$CLIF.conf"
on "$CL" client ping -c 1 -W 1 10.20.0.53
note "full mode rejects off-policy DNS by default: a hard-coded public resolver fails at once"
refused "$CL" client dig +tries=1 +time=3 @198.51.100.53 git.corp.example
refused "$CL" client dig +tries=1 +time=3 +tcp @2001:db8:53::53 AAAA git.corp.example
note "while the tunnel's resolver answers every name from the internal resolvers:"
on "$CL" client dig +short git.corp.example
on "$CL" client dig +short AAAA git.corp.example
note "DNS over TLS and DNS over HTTPS: refused at once"
refused "$CL" client kdig +retry=0 +timeout=3 +tls @203.0.113.11 www.example.net
refused "$CL" client kdig +retry=0 +timeout=3 +tls @2001:db8:853::11 www.example.net
refused "$CL" client kdig +retry=0 +timeout=3 +https @203.0.113.10 www.example.net
refused "$CL" client curl -sS --max-time 3 -k https://203.0.113.10/dns-query
note "resolution-gated egress (enforce.egress: resolved, the default in full mode): a peer"
note "opens connections only to addresses the gateway's resolver answered for it, so a"
note "resolver on another port, DoH on an unlisted address or any IP literal is refused:"
ip netns exec "$GW" "$SLUICE" peer trace alice/laptop --for 15s -c "$CONF" >"$WORK/trace-egress.txt" 2>&1 &
TRACE_PID=$!
sleep 0.5
refused "$CL" client dig +tries=1 +time=3 -p 5353 @198.51.100.53 git.corp.example
refused "$CL" client ping -c 1 -W 3 10.30.1.11
note "an address the tunnel's resolver answered is reachable at once (learned before the answer left):"
on "$CL" client dig +short git.corp.example
on "$CL" client ping -c 1 -W 3 10.30.1.10
sleep 0.2
kill -INT "$TRACE_PID" 2>/dev/null || true
wait "$TRACE_PID" 2>/dev/null || true
grep -E "egress (refused|audit|log reader)" "$SLUICE_LOG" || true
note "what sluice peer trace printed (queries and refused connections):"
cat "$WORK/trace-egress.txt"

section "The proof: firewall counters, DNS metrics, query log"
on "$GW" gateway curl -s http://127.0.0.1:9153/metrics | grep -E '^sluice_(firewall_packets|dns_queries)_total' || true
on "$GW" gateway tail -n 6 "$WORK/query.log"
note "the public resolver never saw a corp.example query:"
PUBLIC_CORP_AFTER=$(grep -c 'corp\.example' "$WORK/unbound-public/log" || true)
echo "corp.example queries at the public resolver since the gateway started: $((PUBLIC_CORP_AFTER - PUBLIC_CORP_BEFORE))"
sluice firewall show | sed -n "1,40p"

section "sluice doctor"
sluice doctor --peer alice/laptop || note "doctor reported problems (exit $?)"

section "Done"
