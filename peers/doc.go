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
// (List, and Version to notice changes made by the CLI) and programs the
// WireGuard device itself.
//
// # Store
//
// peers.json is {"version": 1, "peers": [...]}, each peer with user,
// device, base64 keys, ipv4, ipv6 and created. Every change is one
// read-modify-write under flock(<state_dir>/peers.lock): read and check the
// file, change the list, write a temporary file in the same directory,
// fsync it, rename it over peers.json, fsync the directory. Readers take no
// lock. A file that fails the checks (bad JSON, unknown fields or version,
// duplicate names, keys or addresses, addresses outside the pool) is
// reported with ErrDamaged and never written over.
//
// # Formats
//
// The "resolved" format is a wg-quick file without a DNS line whose PostUp
// runs resolvectl: the link gets the resolver addresses and, in split mode,
// the search domains as its (search and routing) domains with
// default-route off, so only those names go into the tunnel; in full mode
// (or without search domains) "~." with default-route on, so every name
// does. It was chosen over a systemd-networkd .netdev/.network pair because
// it is a single file used the same way as the conf.
package peers
