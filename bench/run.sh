#!/usr/bin/env bash
# bench/run.sh — entry point of `make bench` and `make bench-quick`.
#
# Installs the anchor programs when missing, builds the harness and the
# programs it drives, runs bench/cmd/benchrun and leaves the table in
# bench/results/<date>-<host>.md. Everything it starts runs on loopback or in
# network namespaces named after a random run id; the trap below removes
# them even when the run is interrupted. See bench/README.md for the method.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

usage() {
	echo "usage: bench/run.sh [--quick] [--sections=dns,encrypted,tunnel,scale,kernel,fleet,profile] [-v]" >&2
	exit 2
}
args=()
for a in "$@"; do
	case "$a" in
	--quick) args+=(-quick) ;;
	-v) args+=(-v) ;;
	--sections=*) args+=(-sections "${a#--sections=}") ;;
	*) usage ;;
	esac
done

if [ "$(id -u)" != 0 ]; then
	echo "bench: must run as root (network namespaces, nftables, TUN)" >&2
	exit 1
fi

# Anchors and tools: command -> Debian package.
declare -A pkg=(
	[dnsperf]=dnsperf [dnsdist]=dnsdist [unbound]=unbound [iperf3]=iperf3
	[wg]=wireguard-tools [/usr/bin/wireguard-go]=wireguard-go [taskset]=util-linux
	[ip]=iproute2 [nft]=nftables [ping]=iputils-ping [/usr/bin/etcd]=etcd-server
)
missing=()
for c in "${!pkg[@]}"; do
	command -v "$c" >/dev/null 2>&1 || missing+=("${pkg[$c]}")
done
if ((${#missing[@]})); then
	echo "bench: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

run_id="sb$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
work="$(mktemp -d /tmp/sluice-bench.XXXXXX)"
bin="$work/bin"
mkdir -p "$bin"
pid=""
status=1

cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	# benchrun deletes its namespaces itself; this catches a killed benchrun.
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${run_id}" || true); do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
	if [ "$status" = 0 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
		rm -rf "$work"
	else
		echo "bench: logs kept in $work/logs" >&2
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$root"
echo "bench: building (run id $run_id)" >&2
build_start=$SECONDS
# The builds run side by side (linking is single-threaded; the build cache
# is shared safely): about half the time of building one after the other.
go build ./... 2>"$work/build-all.err" &
all_pid=$!

# The sluice side may not build yet while its packages are written; its rows
# then say n/a with the build error instead of failing the whole run.
build_sluice_side() {
	local name="$1" pkgpath="$2" verb="${3:-build}"
	local how=(build)
	[ "$verb" = test ] && how=(test -c)
	if ! go "${how[@]}" -o "$bin/$name" "$pkgpath" 2>"$bin/$name.err"; then
		echo "bench: $name not built: $(grep -v '^#' "$bin/$name.err" | head -1)" >&2
		rm -f "$bin/$name"
	fi
}
build_sluice_side dnsproxy-bench ./bench/cmd/dnsproxy-bench &
build_sluice_side sluice ./cmd/sluice &
build_sluice_side scale ./bench/cmd/scale &
# the packages' own scale benchmarks, run from test binaries
build_sluice_side wgdev.test ./gateway/wgdev test &
build_sluice_side firewall.test ./firewall test &
build_sluice_side etcdstore.test ./peers/etcdstore test &
build_sluice_side gateway.test ./gateway test &
build_sluice_side dnsproxy.test ./dnsproxy test &

go build -o "$bin/benchrun" ./bench/cmd/benchrun
go build -o "$bin/dnslat" ./bench/cmd/dnslat
go build -o "$bin/dnsload" ./bench/cmd/dnsload
go build -o "$bin/enclat" ./bench/cmd/enclat
# standalone wireguard-go from the very module version sluice embeds (go.mod)
go build -o "$bin/wireguard-go-same" golang.zx2c4.com/wireguard

if ! wait "$all_pid"; then
	echo "bench: warning: go build ./... fails (rows of pieces that do not build will say n/a):" >&2
	grep -v '^#' "$work/build-all.err" | head -3 >&2
fi
wait # the sluice side
build_secs=$((SECONDS - build_start))
"$bin/benchrun" -bin "$bin" -work "$work" -out "$here/results" -run-id "$run_id" -build-secs "$build_secs" ${args[@]+"${args[@]}"} &
pid=$!
wait "$pid"
status=$?
pid=""
