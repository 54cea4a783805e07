#!/usr/bin/env bash
# vmtest/prepare.sh — what the kernel tier (go test ./vmtest, the kernel
# section of make bench) needs on the host: qemu-system-x86_64 and Debian's
# own kernel package (the one linux-image-amd64 depends on) extracted into a
# cache directory. The download happens once; a cache that holds a kernel is
# reused. Run as root (make vm-deps).
set -euo pipefail

dir="${SLUICE_VM_KERNEL_DIR:-/var/cache/sluice-test/kernel}"

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "vm-deps: $1 (run as root to install)" >&2
		exit 1
	fi
}

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
	need_root "qemu-system-x86_64 is missing"
	echo "vm-deps: installing qemu-system-x86" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86
fi

if compgen -G "$dir/boot/vmlinuz-*" >/dev/null && [ -d "$dir/lib/modules" ]; then
	exit 0
fi
need_root "no kernel in $dir"
pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [ -z "$pkg" ]; then
	apt-get update -qq
	pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
if [ -z "$pkg" ]; then
	echo "vm-deps: cannot resolve linux-image-amd64 to a kernel package" >&2
	exit 1
fi
echo "vm-deps: downloading $pkg into $dir" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp" "$dir.new"' EXIT
(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
rm -rf "$dir.new"
mkdir -p "$dir.new"
dpkg-deb -x "$tmp"/*.deb "$dir.new"
rm -rf "$dir"
mv "$dir.new" "$dir"
