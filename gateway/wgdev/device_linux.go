package wgdev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// netlinker is the part of *netlink.Handle the device uses. A handle is bound
// to the network namespace it was created in.
type netlinker interface {
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetMTU(link netlink.Link, mtu int) error
	LinkSetUp(link netlink.Link) error
	AddrAdd(link netlink.Link, addr *netlink.Addr) error
	// Close releases the handle's sockets.
	Close()
}

// userspaceDevice is a started wireguard-go device: its UAPI socket listens,
// its TUN exists, the device itself is down.
type userspaceDevice interface {
	// Up opens the UDP sockets. It must run on a thread in the device's
	// network namespace: the sockets belong to the namespace they are
	// created in.
	Up() error
	// Close removes the UAPI socket, closes the device and its TUN (which
	// removes the link) and waits for their goroutines.
	Close() error
}

// system is what Open needs from the host; tests replace it with fakes.
type system struct {
	netlink   func() (netlinker, error)
	wgctrl    func() (wgClient, error)
	uapiLive  func(name string) bool
	userspace func(name string, mtu int, log *slog.Logger) (userspaceDevice, error)
}

func hostSystem() system {
	return system{
		netlink:   func() (netlinker, error) { return netlink.NewHandle(unix.NETLINK_ROUTE) },
		wgctrl:    func() (wgClient, error) { return wgctrl.New() },
		uapiLive:  uapiLive,
		userspace: startUserspace,
	}
}

// Open creates the WireGuard interface cfg describes in the network namespace
// of the calling thread, configures its key, port and firewall mark, adds its
// addresses, sets its MTU and brings it up. It has no peers yet: use
// SyncPeers.
//
// If an interface with that name exists, or a live userspace UAPI socket has
// that name, Open fails with an error wrapping ErrExists and does not touch
// it — unless it is a kernel WireGuard interface holding cfg's private key:
// that one was left by an earlier run killed before it could remove it, and
// is replaced. A stale socket file nobody listens on is replaced. On any other
// failure Open removes whatever it created.
func Open(ctx context.Context, cfg Config, opts Options) (*Device, error) {
	return open(ctx, cfg, opts, hostSystem())
}

func open(ctx context.Context, cfg Config, opts Options, sys system) (_ *Device, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err = cfg.normalize()
	if err != nil {
		return nil, err
	}
	name := cfg.Name
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open wireguard interface %q: %w", name, err)
	}

	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				log.Warn("undo partial wireguard setup", "interface", name, "err", uerr)
			}
		}
	}()

	nl, err := sys.netlink()
	if err != nil {
		return nil, fmt.Errorf("open netlink for %q: %w", name, err)
	}
	undo = append(undo, func() error { nl.Close(); return nil })
	wg, err := sys.wgctrl()
	if err != nil {
		return nil, fmt.Errorf("open wireguard control for %q: %w", name, err)
	}
	undo = append(undo, wg.Close)

	if l, err := nl.LinkByName(name); err == nil {
		if !leftOver(l, wg, cfg.PrivateKey) {
			return nil, fmt.Errorf("create wireguard interface %q: %w", name, ErrExists)
		}
		// A kernel interface outlives a killed process. One holding this
		// very private key was made from our key file by an earlier run
		// that did not stop cleanly (the caller holds the instance lock,
		// so that run is gone): replace it rather than refuse to start.
		if err := nl.LinkDel(l); err != nil {
			return nil, fmt.Errorf("remove wireguard interface %q left by an earlier run: %w", name, err)
		}
		log.Warn("removed the kernel wireguard interface an earlier run left behind (same private key)", "interface", name)
	} else if !isLinkNotFound(err) {
		return nil, fmt.Errorf("look up interface %q: %w", name, err)
	}
	if sys.uapiLive(name) {
		return nil, fmt.Errorf("create wireguard interface %q: userspace socket is live: %w", name, ErrExists)
	}

	backend := cfg.Backend
	reason := "configured"
	var us userspaceDevice
	if backend == BackendKernel || backend == BackendAuto {
		lerr := nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name}})
		switch {
		case lerr == nil:
			backend, reason = BackendKernel, "kernel supports wireguard links"
			undo = append(undo, func() error {
				return nl.LinkDel(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name}})
			})
		case errors.Is(lerr, unix.EEXIST):
			return nil, fmt.Errorf("create wireguard interface %q: %w", name, ErrExists)
		case backend == BackendAuto && kernelUnsupported(lerr):
			backend, reason = BackendUserspace, "kernel has no wireguard support: "+lerr.Error()
		default:
			return nil, fmt.Errorf("create kernel wireguard interface %q: %w", name, lerr)
		}
	}
	if backend == BackendUserspace {
		us, err = sys.userspace(name, cfg.MTU, log)
		if err != nil {
			return nil, fmt.Errorf("start userspace wireguard %q: %w", name, err)
		}
		undo = append(undo, us.Close)
	}
	if cfg.Backend == BackendAuto {
		log.Info("wireguard backend chosen", "interface", name, "backend", string(backend), "reason", reason)
	}

	link, err := nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up interface %q: %w", name, err)
	}
	// Key, port and mark go through the same client as peers. On the
	// userspace backend the device is still down, so the port is only
	// recorded here and bound by Up on this thread, in this namespace.
	wgcfg := wgtypes.Config{PrivateKey: &cfg.PrivateKey, ListenPort: &cfg.ListenPort}
	if cfg.FirewallMark != 0 {
		wgcfg.FirewallMark = &cfg.FirewallMark
	}
	if err := wg.ConfigureDevice(name, wgcfg); err != nil {
		return nil, fmt.Errorf("configure wireguard interface %q: %w", name, err)
	}
	if us != nil {
		if err := us.Up(); err != nil {
			return nil, fmt.Errorf("bring up userspace wireguard %q on port %d: %w", name, cfg.ListenPort, err)
		}
	}
	for _, a := range linkAddrs(cfg) {
		if err := nl.AddrAdd(link, a); err != nil {
			return nil, fmt.Errorf("add address %s to %q: %w", a.IPNet, name, err)
		}
	}
	if err := nl.LinkSetMTU(link, cfg.MTU); err != nil {
		return nil, fmt.Errorf("set mtu %d on %q: %w", cfg.MTU, name, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %q up: %w", name, err)
	}

	// Read back the port: with ListenPort 0 the device picked one.
	got, err := wg.Device(name)
	if err != nil {
		return nil, fmt.Errorf("read wireguard interface %q: %w", name, err)
	}
	port := got.ListenPort

	d := &Device{
		name:       name,
		backend:    backend,
		pub:        cfg.PrivateKey.PublicKey(),
		listenPort: port,
		log:        log,
		wg:         wg,
	}
	d.teardown = func() error {
		var errs []error
		if us != nil {
			errs = append(errs, us.Close())
		} else if err := nl.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete link: %w", err))
		}
		errs = append(errs, wg.Close())
		nl.Close()
		return errors.Join(errs...)
	}
	log.Info("wireguard interface up", "interface", name, "backend", string(backend),
		"public_key", d.pub.String(), "listen_port", port, "mtu", cfg.MTU)
	return d, nil
}

// linkAddrs lists the netlink addresses for cfg: the interface prefixes,
// then the extra addresses as /32 and /128. IPv6 addresses skip duplicate
// address detection so they are usable at once.
func linkAddrs(cfg Config) []*netlink.Addr {
	var out []*netlink.Addr
	add := func(p netip.Prefix) {
		n := ipNet(p)
		a := &netlink.Addr{IPNet: &n}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		out = append(out, a)
	}
	for _, p := range cfg.Addresses {
		add(p)
	}
	for _, a := range cfg.ExtraAddrs {
		add(hostPrefix(a))
	}
	return out
}

// leftOver reports whether the existing link l is a kernel WireGuard
// interface configured with key: the one an earlier run of the same
// gateway created and could not remove (SIGKILL, crash). Anything else with
// that name — another interface kind, another key, a userspace device — is
// not ours to touch.
func leftOver(l netlink.Link, wg wgClient, key wgtypes.Key) bool {
	if l.Type() != "wireguard" {
		return false
	}
	dev, err := wg.Device(l.Attrs().Name)
	if err != nil {
		return false
	}
	return dev.Type == wgtypes.LinuxKernel && dev.PrivateKey == key
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// kernelUnsupported reports whether a wireguard link add failed because the
// kernel does not know the link kind (no module).
func kernelUnsupported(err error) bool {
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPROTONOSUPPORT) {
		return true
	}
	s := strings.ToLower(err.Error())
	for _, m := range []string{"operation not supported", "unknown link kind", "unknown device type"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// uapiLive reports whether a process listens on the UAPI socket of name.
func uapiLive(name string) bool {
	c, err := net.DialTimeout("unix", uapiPath(name), uapiDialTimeout)
	if err != nil {
		return false
	}
	_ = c.Close() // only probing
	return true
}
