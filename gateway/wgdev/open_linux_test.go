package wgdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// fakeNetlink records the netlink calls Open and Close make, in order.
type fakeNetlink struct {
	mu      sync.Mutex
	calls   []string
	links   map[string]netlink.Link
	addErr  error            // returned by LinkAdd
	failOn  map[string]error // op name -> error
	closed  bool
	nextIdx int
}

func newFakeNetlink() *fakeNetlink {
	return &fakeNetlink{links: make(map[string]netlink.Link), failOn: make(map[string]error), nextIdx: 10}
}

func (f *fakeNetlink) record(op, s string) error {
	f.calls = append(f.calls, op+" "+s)
	return f.failOn[op]
}

func (f *fakeNetlink) addLink(l netlink.Link) {
	f.nextIdx++
	l.Attrs().Index = f.nextIdx
	f.links[l.Attrs().Name] = l
}

func (f *fakeNetlink) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("LinkByName", name); err != nil {
		return nil, err
	}
	l, ok := f.links[name]
	if !ok {
		return nil, netlink.LinkNotFoundError{}
	}
	return l, nil
}

func (f *fakeNetlink) LinkAdd(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("LinkAdd %s %s mtu=%d", l.Type(), l.Attrs().Name, l.Attrs().MTU))
	if f.addErr != nil {
		return f.addErr
	}
	f.addLink(l)
	return nil
}

func (f *fakeNetlink) LinkDel(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("LinkDel", l.Attrs().Name); err != nil {
		return err
	}
	delete(f.links, l.Attrs().Name)
	return nil
}

func (f *fakeNetlink) LinkSetMTU(l netlink.Link, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.record("LinkSetMTU", fmt.Sprintf("%s %d", l.Attrs().Name, mtu))
}

func (f *fakeNetlink) LinkSetUp(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.record("LinkSetUp", l.Attrs().Name)
}

func (f *fakeNetlink) AddrAdd(l netlink.Link, a *netlink.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.record("AddrAdd", fmt.Sprintf("%s %s flags=%#x", l.Attrs().Name, a.IPNet, a.Flags))
}

func (f *fakeNetlink) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
}

// fakeUserspace stands in for wireguard-go: starting it creates the link.
type fakeUserspace struct {
	nl     *fakeNetlink
	calls  *[]string
	upErr  error
	closed bool
}

func (u *fakeUserspace) Up() error {
	*u.calls = append(*u.calls, "userspace Up")
	return u.upErr
}

func (u *fakeUserspace) Close() error {
	*u.calls = append(*u.calls, "userspace Close")
	u.closed = true
	u.nl.mu.Lock()
	for name := range u.nl.links {
		delete(u.nl.links, name)
	}
	u.nl.mu.Unlock()
	return nil
}

// fakeHost wires the fakes into a system.
type fakeHost struct {
	nl       *fakeNetlink
	wg       *fakeWG
	live     bool
	started  []string // userspace starts: name/mtu
	us       *fakeUserspace
	startErr error
	upErr    error
	events   []string // userspace calls
}

func newFakeHost(name string) *fakeHost {
	return &fakeHost{nl: newFakeNetlink(), wg: newFakeWG(name)}
}

func (h *fakeHost) system() system {
	return system{
		netlink:  func() (netlinker, error) { return h.nl, nil },
		wgctrl:   func() (wgClient, error) { return h.wg, nil },
		uapiLive: func(string) bool { return h.live },
		userspace: func(name string, mtu int, _ *slog.Logger) (userspaceDevice, error) {
			h.started = append(h.started, fmt.Sprintf("%s/%d", name, mtu))
			if h.startErr != nil {
				return nil, h.startErr
			}
			h.nl.mu.Lock()
			h.nl.addLink(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}})
			h.nl.mu.Unlock()
			h.us = &fakeUserspace{nl: h.nl, calls: &h.events, upErr: h.upErr}
			return h.us, nil
		},
	}
}

func testConfig(t testing.TB, backend Backend) Config {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Name:         "wgt0",
		Backend:      backend,
		PrivateKey:   k,
		ListenPort:   51820,
		Addresses:    []netip.Prefix{netip.MustParsePrefix("10.20.0.1/24"), netip.MustParsePrefix("fd20::1/64")},
		ExtraAddrs:   []netip.Addr{netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("fd20::53")},
		FirewallMark: 0x51,
	}
}

func TestOpenKernelIssuesCalls(t *testing.T) {
	h := newFakeHost("wgt0")
	cfg := testConfig(t, BackendKernel)
	d, err := open(context.Background(), cfg, Options{}, h.system())
	if err != nil {
		t.Fatal(err)
	}
	wantCalls := []string{
		"LinkByName wgt0",
		"LinkAdd wireguard wgt0 mtu=0",
		"LinkByName wgt0",
		"AddrAdd wgt0 10.20.0.1/24 flags=0x0",
		"AddrAdd wgt0 fd20::1/64 flags=0x2",
		"AddrAdd wgt0 10.20.0.53/32 flags=0x0",
		"AddrAdd wgt0 fd20::53/128 flags=0x2",
		"LinkSetMTU wgt0 1420",
		"LinkSetUp wgt0",
	}
	if !reflect.DeepEqual(h.nl.calls, wantCalls) {
		t.Fatalf("netlink calls:\n%s\nwant:\n%s", strings.Join(h.nl.calls, "\n"), strings.Join(wantCalls, "\n"))
	}
	if len(h.started) != 0 {
		t.Fatalf("kernel backend started userspace: %v", h.started)
	}
	if len(h.wg.configs) != 1 {
		t.Fatalf("%d ConfigureDevice calls at open, want 1", len(h.wg.configs))
	}
	c := h.wg.configs[0]
	if c.PrivateKey == nil || *c.PrivateKey != cfg.PrivateKey || c.ListenPort == nil || *c.ListenPort != 51820 ||
		c.FirewallMark == nil || *c.FirewallMark != 0x51 || c.ReplacePeers || len(c.Peers) != 0 {
		t.Fatalf("device config = %+v", c)
	}
	if d.Backend() != BackendKernel || d.Name() != "wgt0" || d.PublicKey() != cfg.PrivateKey.PublicKey() || d.ListenPort() != 51820 {
		t.Fatalf("device = %s %s %s %d", d.Backend(), d.Name(), d.PublicKey(), d.ListenPort())
	}

	peer := PeerConfig{PublicKey: testKey(t), AllowedIPs: pfx("10.20.0.2/32", "fd20::2/128")}
	if a, r, u, err := d.SyncPeers([]PeerConfig{peer}); err != nil || a != 1 || r != 0 || u != 0 {
		t.Fatalf("sync = %d/%d/%d %v", a, r, u, err)
	}
	pc := h.wg.configs[1]
	if pc.PrivateKey != nil || pc.ListenPort != nil || len(pc.Peers) != 1 || pc.Peers[0].PublicKey != peer.PublicKey || !pc.Peers[0].ReplaceAllowedIPs {
		t.Fatalf("peer config = %+v", pc)
	}

	h.nl.calls = nil
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(h.nl.calls, []string{"LinkDel wgt0"}) || !h.nl.closed || !h.wg.closed {
		t.Fatalf("close: calls %v, netlink closed %v, wgctrl closed %v", h.nl.calls, h.nl.closed, h.wg.closed)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, _, _, err := d.SyncPeers(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("sync after close = %v", err)
	}
	if _, err := d.Stats(); !errors.Is(err, ErrClosed) {
		t.Fatalf("stats after close = %v", err)
	}
}

func TestOpenExistingTouchesNothing(t *testing.T) {
	t.Run("link", func(t *testing.T) {
		h := newFakeHost("wgt0")
		h.nl.addLink(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wgt0"}})
		_, err := open(context.Background(), testConfig(t, BackendAuto), Options{}, h.system())
		if !errors.Is(err, ErrExists) {
			t.Fatalf("err = %v, want ErrExists", err)
		}
		if !reflect.DeepEqual(h.nl.calls, []string{"LinkByName wgt0"}) || len(h.wg.configs) != 0 || len(h.started) != 0 {
			t.Fatalf("touched the existing interface: %v, %d configs, %v", h.nl.calls, len(h.wg.configs), h.started)
		}
		if _, ok := h.nl.links["wgt0"]; !ok || !h.nl.closed || !h.wg.closed {
			t.Fatal("existing link removed or handles leaked")
		}
	})
	t.Run("kernel link with another key", func(t *testing.T) {
		h := newFakeHost("wgt0")
		h.nl.addLink(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wgt0"}})
		h.wg.dev.Type = wgtypes.LinuxKernel
		h.wg.dev.PrivateKey = testKey(t)
		_, err := open(context.Background(), testConfig(t, BackendKernel), Options{}, h.system())
		if !errors.Is(err, ErrExists) {
			t.Fatalf("err = %v, want ErrExists", err)
		}
		if !reflect.DeepEqual(h.nl.calls, []string{"LinkByName wgt0"}) || len(h.wg.configs) != 0 {
			t.Fatalf("touched another gateway's interface: %v, %d configs", h.nl.calls, len(h.wg.configs))
		}
	})
	t.Run("live socket", func(t *testing.T) {
		h := newFakeHost("wgt0")
		h.live = true
		_, err := open(context.Background(), testConfig(t, BackendUserspace), Options{}, h.system())
		if !errors.Is(err, ErrExists) || len(h.started) != 0 || len(h.wg.configs) != 0 {
			t.Fatalf("err = %v, started %v, configs %d", err, h.started, len(h.wg.configs))
		}
	})
	t.Run("race on link add", func(t *testing.T) {
		h := newFakeHost("wgt0")
		h.nl.addErr = unix.EEXIST
		_, err := open(context.Background(), testConfig(t, BackendAuto), Options{}, h.system())
		if !errors.Is(err, ErrExists) || len(h.started) != 0 {
			t.Fatalf("err = %v, started %v", err, h.started)
		}
		for _, c := range h.nl.calls {
			if strings.HasPrefix(c, "LinkDel") {
				t.Fatalf("deleted a link it did not create: %v", h.nl.calls)
			}
		}
	})
}

// A kernel interface survives a SIGKILLed sluice; the next start finds it
// with its own private key and replaces it (found on Debian's kernel in
// the VM tier: before, every restart after a crash failed with ErrExists).
func TestOpenReplacesOwnLeftOverKernelLink(t *testing.T) {
	h := newFakeHost("wgt0")
	cfg := testConfig(t, BackendKernel)
	h.nl.addLink(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wgt0"}})
	h.wg.dev.Type = wgtypes.LinuxKernel
	h.wg.dev.PrivateKey = cfg.PrivateKey
	d, err := open(context.Background(), cfg, Options{}, h.system())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := []string{"LinkByName wgt0", "LinkDel wgt0", "LinkAdd wireguard wgt0 mtu=0"}
	if len(h.nl.calls) < len(want) || !reflect.DeepEqual(h.nl.calls[:len(want)], want) {
		t.Fatalf("netlink calls %v, want them to start with %v", h.nl.calls, want)
	}
	if d.Backend() != BackendKernel {
		t.Fatalf("backend %s", d.Backend())
	}
}

func TestOpenAutoFallsBackToUserspace(t *testing.T) {
	for _, addErr := range []error{
		unix.EOPNOTSUPP,
		fmt.Errorf("wrapped: %w", unix.EOPNOTSUPP),
		errors.New("Error: Unknown device type."),
	} {
		t.Run(addErr.Error(), func(t *testing.T) {
			h := newFakeHost("wgt0")
			h.nl.addErr = addErr
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			cfg := testConfig(t, BackendAuto)
			cfg.MTU = 1380
			d, err := open(context.Background(), cfg, Options{Logger: log}, h.system())
			if err != nil {
				t.Fatal(err)
			}
			if d.Backend() != BackendUserspace || !reflect.DeepEqual(h.started, []string{"wgt0/1380"}) {
				t.Fatalf("backend %s, started %v", d.Backend(), h.started)
			}
			if !strings.Contains(logs.String(), "backend=userspace") || !strings.Contains(logs.String(), "no wireguard support") {
				t.Fatalf("fallback not logged with its reason:\n%s", logs.String())
			}
			if strings.Contains(logs.String(), cfg.PrivateKey.String()) {
				t.Fatal("private key logged")
			}
			// The port is configured before the device comes up so that Up
			// binds it on the calling thread.
			if len(h.wg.configs) != 1 || h.wg.configs[0].ListenPort == nil || !reflect.DeepEqual(h.events, []string{"userspace Up"}) {
				t.Fatalf("configs %d, userspace calls %v", len(h.wg.configs), h.events)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if !h.us.closed {
				t.Fatal("close did not close the userspace device")
			}
			for _, c := range h.nl.calls {
				if strings.HasPrefix(c, "LinkDel") {
					t.Fatalf("userspace close deleted a link by netlink: %v", h.nl.calls)
				}
			}
		})
	}
}

func TestOpenKernelOnlyDoesNotFallBack(t *testing.T) {
	h := newFakeHost("wgt0")
	h.nl.addErr = unix.EOPNOTSUPP
	_, err := open(context.Background(), testConfig(t, BackendKernel), Options{}, h.system())
	if !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), `create kernel wireguard interface "wgt0"`) || len(h.started) != 0 {
		t.Fatalf("err = %v, started %v", err, h.started)
	}
}

func TestOpenUndoesOnFailure(t *testing.T) {
	steps := []struct {
		op, msg string
	}{
		{"AddrAdd", "add address 10.20.0.1/24"},
		{"LinkSetMTU", "set mtu 1420"},
		{"LinkSetUp", `set "wgt0" up`},
		{"configure", `configure wireguard interface "wgt0"`},
	}
	for _, backend := range []Backend{BackendKernel, BackendUserspace} {
		for _, st := range steps {
			t.Run(string(backend)+"/"+st.op, func(t *testing.T) {
				h := newFakeHost("wgt0")
				if st.op == "configure" {
					h.wg.configureErr = errFake
				} else {
					h.nl.failOn[st.op] = errFake
				}
				_, err := open(context.Background(), testConfig(t, backend), Options{}, h.system())
				if !errors.Is(err, errFake) || !strings.Contains(err.Error(), st.msg) {
					t.Fatalf("err = %v, want %q wrapping the cause", err, st.msg)
				}
				if len(h.nl.links) != 0 {
					t.Fatalf("link left behind: %v", h.nl.calls)
				}
				if backend == BackendUserspace && !h.us.closed {
					t.Fatal("userspace device left running")
				}
				if !h.nl.closed || !h.wg.closed {
					t.Fatal("handles leaked")
				}
			})
		}
	}
	t.Run("userspace up", func(t *testing.T) {
		h := newFakeHost("wgt0")
		h.upErr = unix.EADDRINUSE
		_, err := open(context.Background(), testConfig(t, BackendUserspace), Options{}, h.system())
		if !errors.Is(err, unix.EADDRINUSE) || !strings.Contains(err.Error(), "port 51820") || !h.us.closed {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestOpenValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"empty name", func(c *Config) { c.Name = "" }, "interface name"},
		{"long name", func(c *Config) { c.Name = "wg0123456789abcd" }, "interface name"},
		{"slash", func(c *Config) { c.Name = "wg/0" }, "invalid character"},
		{"backend", func(c *Config) { c.Backend = "bpf" }, "check backend"},
		{"key", func(c *Config) { c.PrivateKey = wgtypes.Key{} }, "private key is required"},
		{"port", func(c *Config) { c.ListenPort = 70000 }, "listen port"},
		{"mtu", func(c *Config) { c.MTU = 1000 }, "check mtu"},
		{"address", func(c *Config) { c.Addresses = []netip.Prefix{{}} }, "check address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost("wgt0")
			cfg := testConfig(t, BackendAuto)
			tc.mod(&cfg)
			_, err := open(context.Background(), cfg, Options{}, h.system())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if len(h.nl.calls) != 0 {
				t.Fatalf("invalid config reached netlink: %v", h.nl.calls)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := open(ctx, testConfig(t, BackendAuto), Options{}, newFakeHost("wgt0").system()); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestNormalizeDedupsAndUnmaps(t *testing.T) {
	cfg := testConfig(t, "")
	cfg.Addresses = append(cfg.Addresses, netip.MustParsePrefix("10.20.0.1/24"), netip.MustParsePrefix("::ffff:10.20.0.9/120"))
	cfg.ExtraAddrs = append(cfg.ExtraAddrs, netip.MustParseAddr("::ffff:10.20.0.53"))
	got, err := cfg.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if got.Backend != BackendAuto || got.MTU != DefaultMTU {
		t.Fatalf("defaults: %s %d", got.Backend, got.MTU)
	}
	wantA := pfx("10.20.0.1/24", "fd20::1/64", "10.20.0.9/24")
	if !reflect.DeepEqual(got.Addresses, wantA) || len(got.ExtraAddrs) != 2 {
		t.Fatalf("addresses %v extras %v", got.Addresses, got.ExtraAddrs)
	}
}
