// Package peers owns sluice's peer registry: the on-disk store of peers
// (<state_dir>/peers.json, 0600, written atomically under an exclusive flock
// so that several processes can add peers at once), the allocation of one
// IPv4 /32 and one IPv6 /128 per device from the tunnel prefixes, the
// device keys, the rendering of client configurations (wg-quick, QR code,
// Windows NRPT, Apple configuration profile, systemd-resolved) and the
// AllowedIPs invariant that every rendered configuration routes every
// in-tunnel resolver address, IPv4 and IPv6.
//
// It also lints existing wg-quick client configurations for the DNS leak
// paths sluice exists to close (Lint).
//
// The package does not talk to the kernel: the gateway reads the store
// (List, Version) and programs the WireGuard device itself.
package peers
