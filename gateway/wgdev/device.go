package wgdev

import (
	"fmt"
	"log/slog"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wgClient is the part of *wgctrl.Client the device uses. One client serves
// both backends: wgctrl reaches kernel devices over generic netlink and
// userspace ones over their UAPI socket.
type wgClient interface {
	// Device returns the current configuration and peers of name.
	Device(name string) (*wgtypes.Device, error)
	// ConfigureDevice applies cfg to name in one operation.
	ConfigureDevice(name string, cfg wgtypes.Config) error
	// Close releases the client; no method may be called afterwards.
	Close() error
}

// Device is an open WireGuard interface. Its methods are safe for concurrent
// use; after Close they return ErrClosed.
type Device struct {
	name    string
	backend Backend
	pub     wgtypes.Key
	// listenPort is the UDP port in use (chosen by the kernel when 0 was asked).
	listenPort int
	log        *slog.Logger

	mu       sync.Mutex // serializes peer changes; protects closed and the fields below
	closed   bool
	wg       wgClient
	teardown func() error // removes the interface and releases every resource
}

// Name returns the interface name.
func (d *Device) Name() string { return d.name }

// Backend returns the backend actually in use (never auto).
func (d *Device) Backend() Backend { return d.backend }

// PublicKey returns the interface's public key.
func (d *Device) PublicKey() wgtypes.Key { return d.pub }

// ListenPort returns the UDP port the device listens on.
func (d *Device) ListenPort() int { return d.listenPort }

// SyncPeers makes the device's peer set equal to peers. It reads the current
// peers, computes the difference and applies it in one ConfigureDevice:
// new peers are added, missing ones removed, changed ones updated in place.
// Peers that did not change are not touched and keep their sessions. When
// nothing differs no configuration is sent.
func (d *Device) SyncPeers(peers []PeerConfig) (added, removed, updated int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, 0, 0, fmt.Errorf("sync peers of %q: %w", d.name, ErrClosed)
	}
	cur, err := d.wg.Device(d.name)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("read peers of %q: %w", d.name, err)
	}
	cfg, n, err := diffPeers(cur.Peers, peers)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("sync peers of %q: %w", d.name, err)
	}
	if len(cfg.Peers) == 0 {
		return 0, 0, 0, nil
	}
	if err := d.wg.ConfigureDevice(d.name, cfg); err != nil {
		return 0, 0, 0, fmt.Errorf("configure peers of %q: %w", d.name, err)
	}
	d.log.Debug("peers synced", "interface", d.name, "added", n.added, "removed", n.removed, "updated", n.updated, "total", len(peers))
	return n.added, n.removed, n.updated, nil
}

// Stats returns the current peers with their endpoints, last handshake
// times and transfer counters.
func (d *Device) Stats() ([]wgtypes.Peer, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("read stats of %q: %w", d.name, ErrClosed)
	}
	cur, err := d.wg.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("read stats of %q: %w", d.name, err)
	}
	for i := range cur.Peers {
		cur.Peers[i].PresharedKey = wgtypes.Key{} // secrets stay in the device
	}
	return cur.Peers, nil
}

// Close removes the interface (kernel: link delete; userspace: closing the
// device and its TUN removes the link) and the UAPI socket, and waits for the
// device's goroutines. Calling it again returns nil.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.teardown()
	if err != nil {
		err = fmt.Errorf("close wireguard interface %q: %w", d.name, err)
	}
	d.log.Info("wireguard interface removed", "interface", d.name, "backend", string(d.backend))
	return err
}
