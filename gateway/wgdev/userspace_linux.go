package wgdev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/sluice-vpn/sluice/internal/nsexec"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

const (
	// uapiDir is where wireguard-go and wg(8) keep UAPI sockets. It is shared
	// by every network namespace.
	uapiDir = "/var/run/wireguard"
	// uapiDialTimeout bounds the probe of an existing socket.
	uapiDialTimeout = time.Second
	// uapiAcceptBackoff is the pause after an unexpected accept error.
	uapiAcceptBackoff = 100 * time.Millisecond
	// tunCloseTimeout bounds the wait for the TUN's event goroutines at Close.
	tunCloseTimeout = 5 * time.Second
)

func uapiPath(name string) string { return filepath.Join(uapiDir, name+".sock") }

// userspace is the embedded wireguard-go backend.
type userspace struct {
	dev  *device.Device
	tun  *pinnedTUN
	uapi *uapiServer
}

// startUserspace claims the UAPI socket of name, creates the TUN in the
// calling thread's namespace and starts a wireguard-go device on it (down).
func startUserspace(name string, mtu int, log *slog.Logger) (userspaceDevice, error) {
	srv, err := listenUAPI(name, log)
	if err != nil {
		return nil, err
	}
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		cerr := srv.Close()
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("%w: %w", ErrExists, err)
		}
		return nil, errors.Join(fmt.Errorf("create tun %q: %w", name, err), cerr)
	}
	pt, err := newPinnedTUN(t)
	if err != nil {
		// Drain the TUN's events so its listeners can exit; the channel
		// closes after Close.
		go func() {
			for range t.Events() {
			}
		}()
		return nil, errors.Join(fmt.Errorf("create tun %q: %w", name, err), t.Close(), srv.Close())
	}
	dev := device.NewDevice(pt, conn.NewDefaultBind(), deviceLogger(log.With("interface", name)))
	srv.serve(dev)
	return &userspace{dev: dev, tun: pt, uapi: srv}, nil
}

func (u *userspace) Up() error { return u.dev.Up() }

func (u *userspace) Close() error {
	err := u.uapi.Close()
	u.dev.Close()
	select {
	case <-u.tun.done:
	case <-time.After(tunCloseTimeout):
		err = errors.Join(err, fmt.Errorf("wait for tun event reader: timed out after %s", tunCloseTimeout))
	}
	return err
}

// deviceLogger adapts slog to wireguard-go's printf-style logger: verbose
// lines at debug, errors at error. Formatting is skipped when debug is off.
func deviceLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			log.Error(fmt.Sprintf(format, args...))
		},
	}
}

// pinnedTUN passes a TUN through with two changes that keep wireguard-go
// working from threads outside the device's network namespace:
//
//   - it drops link up/down events. wireguard-go reacts to them by calling Up
//     or Down from its event goroutine, and Up opens the UDP sockets on
//     whatever thread that goroutine runs on. Instead Open calls Up once on
//     its own thread and the device stays up until Close. MTU events pass.
//   - MTU queries go through a socket opened in the namespace at creation;
//     wireguard-go's own query resolves the name in the calling thread's
//     namespace and fails with "no such device" elsewhere. Once Close has
//     begun (the link is going away) queries answer the last known MTU, so
//     a late MTU event during shutdown is not an error.
type pinnedTUN struct {
	tun.Device
	events chan tun.Event
	done   chan struct{} // closed when pump exits: the inner event channel was closed

	mu      sync.Mutex // protects ctl, closing and lastMTU
	ctl     int        // AF_INET datagram socket for SIOCGIFMTU; -1 after Close
	closing bool
	lastMTU int
}

// newPinnedTUN wraps t; it must run on a thread in t's namespace.
func newPinnedTUN(t tun.Device) (*pinnedTUN, error) {
	ctl, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open control socket: %w", err)
	}
	p := &pinnedTUN{Device: t, events: make(chan tun.Event, 8), done: make(chan struct{}), ctl: ctl}
	go p.pump()
	return p, nil
}

// pump forwards events until the wrapped TUN closes its channel (on Close).
func (p *pinnedTUN) pump() {
	defer close(p.done)
	defer close(p.events)
	for ev := range p.Device.Events() {
		if ev &= tun.EventMTUUpdate; ev != 0 {
			p.events <- ev
		}
	}
}

// Events returns the filtered event channel; it is closed after Close.
func (p *pinnedTUN) Events() <-chan tun.Event { return p.events }

// MTU reads the link's MTU in the TUN's namespace.
func (p *pinnedTUN) MTU() (int, error) {
	name, err := p.Device.Name()
	if err != nil {
		return 0, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("get mtu of %q: %w", name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return p.lastMTU, nil
	}
	if err := unix.IoctlIfreq(p.ctl, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, fmt.Errorf("get mtu of %q: %w", name, err)
	}
	p.lastMTU = int(ifr.Uint32())
	return p.lastMTU, nil
}

// Close closes the TUN, which removes the link, and the control socket.
func (p *pinnedTUN) Close() error {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	err := p.Device.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctl >= 0 {
		err = errors.Join(err, unix.Close(p.ctl))
		p.ctl = -1
	}
	return err
}

// uapiServer serves the WireGuard configuration protocol on the UAPI socket
// so that wg(8) and wgctrl reach the embedded device. Each connection is
// handled on a thread switched into the namespace the server was created in,
// so that a rebind requested over the socket (listen_port) opens its sockets
// there and not wherever the handler goroutine happens to run.
//
// It replaces ipc.UAPIListen, whose two internal goroutines can block forever
// on a one-slot error channel after Close.
type uapiServer struct {
	name string
	log  *slog.Logger
	ln   *net.UnixListener
	ns   netns.NsHandle
	wg   sync.WaitGroup // accept loop and handlers

	mu     sync.Mutex // protects conns and closed
	conns  map[net.Conn]struct{}
	closed bool
	stop   chan struct{} // closed by Close
}

// listenUAPI claims the socket of name. A live socket is ErrExists; a stale
// one is replaced (by ipc.UAPIOpen).
func listenUAPI(name string, log *slog.Logger) (*uapiServer, error) {
	if uapiLive(name) {
		return nil, fmt.Errorf("open uapi socket %s: %w", uapiPath(name), ErrExists)
	}
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		if uapiLive(name) { // lost a race with another process
			err = fmt.Errorf("%w: %w", ErrExists, err)
		}
		return nil, fmt.Errorf("open uapi socket %s: %w", uapiPath(name), err)
	}
	ln, err := net.FileListener(f)
	cerr := f.Close()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("listen on uapi socket %s: %w", uapiPath(name), err), cerr, removeSocket(name))
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		return nil, errors.Join(fmt.Errorf("listen on uapi socket %s: not a unix listener", uapiPath(name)), ln.Close(), removeSocket(name))
	}
	ul.SetUnlinkOnClose(true)
	h, err := netns.Get()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("get network namespace for uapi %q: %w", name, err), ul.Close())
	}
	return &uapiServer{
		name:  name,
		log:   log,
		ln:    ul,
		ns:    h,
		conns: make(map[net.Conn]struct{}),
		stop:  make(chan struct{}),
	}, nil
}

func removeSocket(name string) error {
	if err := unix.Unlink(uapiPath(name)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove uapi socket %s: %w", uapiPath(name), err)
	}
	return nil
}

// serve starts accepting connections for dev; Close stops it.
func (s *uapiServer) serve(dev *device.Device) {
	s.wg.Add(1)
	go s.accept(dev)
}

func (s *uapiServer) accept(dev *device.Device) {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept on uapi socket", "interface", s.name, "err", err)
			select {
			case <-s.stop:
				return
			case <-time.After(uapiAcceptBackoff):
				continue
			}
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close() // shutting down
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(dev, c)
	}
}

// handle serves one connection until the peer or Close closes it.
func (s *uapiServer) handle(dev *device.Device, c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	if err := inNamespace(s.ns, func() { dev.IpcHandle(c) }); err != nil { // IpcHandle closes c
		s.log.Error("serve uapi connection", "interface", s.name, "err", err)
		_ = c.Close() // not served
	}
}

// inNamespace runs fn on a thread switched into ns (nsexec.In).
//
// When the device lives in the process's own namespace — always, outside
// tests — fn runs directly: every thread of the scheduler's pool is there
// already, and no setns(2) is made, which systemd's RestrictNamespaces=
// would refuse.
func inNamespace(ns netns.NsHandle, fn func()) error {
	if cur, err := netns.Get(); err == nil {
		same := cur.Equal(ns)
		cur.Close()
		if same {
			fn()
			return nil
		}
	}
	return nsexec.In(ns, func() error { fn(); return nil })
}

// Close stops accepting, closes open connections, waits for their handlers
// and removes the socket file.
func (s *uapiServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	err := s.ln.Close() // unlinks the socket file
	for c := range s.conns {
		_ = c.Close() // ends its handler
	}
	s.mu.Unlock()
	s.wg.Wait()
	if cerr := s.ns.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close namespace handle: %w", cerr))
	}
	if err != nil {
		return fmt.Errorf("close uapi socket %s: %w", uapiPath(s.name), err)
	}
	return nil
}
