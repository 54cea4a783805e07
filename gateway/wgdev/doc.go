// Package wgdev owns sluice's WireGuard interface: creating it with the kernel
// module (netlink + wgctrl) or with the embedded userspace implementation
// (wireguard-go on a TUN, with a UAPI socket so wg(8) and wgctrl work), its
// addresses, MTU and link state, the live peer set and the teardown.
//
// Both backends are configured through one wgctrl client. Peer changes are
// computed as a diff against the device's current peers and applied in one
// ConfigureDevice, so untouched peers keep their sessions.
//
// Network namespaces: Open creates every socket (TUN, UDP, netlink, UAPI
// handlers) in the network namespace of the calling thread, and the device
// keeps working there even when later calls come from other threads. The
// userspace backend deliberately ignores link up/down events after Open so
// that wireguard-go never rebinds its UDP sockets from a thread that sits in
// another namespace.
package wgdev
