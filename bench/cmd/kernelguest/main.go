// Command kernelguest is the /init of the VM that make bench's kernel
// section boots (bench/cmd/benchrun, kernel.go): Debian's kernel, with the
// WireGuard module this host lacks, under qemu's software emulation. It
// measures the scale figures on the kernel and the embedded WireGuard
// backend in the same VM and prints them as Go benchmark lines on the
// serial console, then powers the VM off.
//
// It measures an empty device to -peers peers in one SyncPeers, and
// `sluice up` on a store of -peers peers until its first sync is on the
// device, with the daemon's RSS (the guest benchmarks of vmtest/guest it
// replaced did the same), but it does not remove those interfaces: under
// emulation the kernel takes minutes to remove an interface with 10,000
// peers (per-peer work that emulation magnifies; about 170 s each time on
// the bench VM), which measured the emulator more than sluice. Removal
// (wgdev Close) and a clean stop (SIGTERM until exit) are measured at
// -remove-peers peers instead; the 10,000-peer interfaces go away with the
// VM.
//
// Output lines (parsed by benchrun's parseGoBench):
//
//	BenchmarkSync/<backend> 1 <ns> ns/op <MiB> RSS-MiB
//	BenchmarkUp/<backend> 1 <ns> ns/op <s> up-s <MiB> RSS-MiB
//	BenchmarkRemove/<backend> 1 <ns> ns/op <s> close-s <s> stop-s
//
// It refuses to run unless it is PID 1 (it mounts file systems and loads
// modules).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-vpn/sluice/internal/syncbuf"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/gateway/wgdev"
	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/vmtest"
	"github.com/sluice-vpn/sluice/vmtest/guestinit"
)

const (
	// upTimeout bounds sluice up until every peer is on the device.
	upTimeout = 4 * time.Minute
	// stopTimeout bounds a clean stop (SIGTERM until exit).
	stopTimeout = 4 * time.Minute
	// rssSettle is how long the daemon idles before its RSS is read (as
	// in bench's scale section).
	rssSettle = time.Second
	// upstreamAddr is the DNS upstream in the daemon's config; nothing
	// listens there and nothing asks it.
	upstreamAddr = "127.0.0.1:5300"
)

var backends = []string{"kernel", "userspace"}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "kernelguest: runs as /init of the VM the bench's kernel section boots")
		os.Exit(2)
	}
	// The kernel passes the arguments after "--" on its command line.
	fs := flag.NewFlagSet("kernelguest", flag.ContinueOnError)
	n := fs.Int("peers", 10000, "peers for the SyncPeers and sluice up figures")
	rm := fs.Int("remove-peers", 500, "peers for the removal and stop figures")
	code := 0
	if err := fs.Parse(os.Args[1:]); err != nil {
		code = 2
	} else if err := boot(); err != nil {
		fmt.Printf("%s: %v\n", vmtest.BootFailMarker, err)
		poweroff()
	} else if err := measure(*n, *rm); err != nil {
		fmt.Println("kernelguest:", err)
		code = 1
	}
	fmt.Printf("%s %d\n", vmtest.ExitMarker, code)
	poweroff()
}

// keep holds what must stay alive until the VM powers off: the namespaces
// (and the 10,000-peer interfaces in them) are never removed.
var keep []any

func measure(n, rm int) error {
	for _, be := range backends {
		if err := syncOnce(be, n); err != nil {
			return fmt.Errorf("sync %s: %w", be, err)
		}
	}
	big, err := fillStore("big", n)
	if err != nil {
		return err
	}
	small, err := fillStore("small", rm)
	if err != nil {
		return err
	}
	for _, be := range backends {
		r, err := upOnce(big, be, n, false)
		if err != nil {
			return fmt.Errorf("up %s: %w", be, err)
		}
		fmt.Printf("BenchmarkUp/%s 1 %d ns/op %.4f up-s %.2f RSS-MiB\n", be, int64(r.up*1e9), r.up, r.rss)
	}
	for _, be := range backends {
		cl, err := removeOnce(be, rm)
		if err != nil {
			return fmt.Errorf("remove %s: %w", be, err)
		}
		r, err := upOnce(small, be, rm, true)
		if err != nil {
			return fmt.Errorf("stop %s: %w", be, err)
		}
		fmt.Printf("BenchmarkRemove/%s 1 %d ns/op %.4f close-s %.4f stop-s\n", be, int64(cl*1e9), cl, r.stop)
	}
	return nil
}

// syncOnce opens an empty device and gives it n peers in one SyncPeers.
// The device stays (removing it is measured at a smaller size).
func syncOnce(backend string, n int) error {
	h, err := guestinit.NewNetns()
	if err != nil {
		return err
	}
	keep = append(keep, h)
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	cfg := wgdev.Config{
		Name: unique("slbn"), Backend: wgdev.Backend(backend), PrivateKey: key,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.30.0.1/16"), netip.MustParsePrefix("fd20::1/64")},
	}
	var d *wgdev.Device
	if err := guestinit.InNetns(h, func() (err error) { d, err = wgdev.Open(context.Background(), cfg, wgdev.Options{}); return err }); err != nil {
		return err
	}
	keep = append(keep, d)
	if d.Backend() != wgdev.Backend(backend) {
		return fmt.Errorf("backend %s, want %s", d.Backend(), backend)
	}
	ps, err := peerConfigs(n)
	if err != nil {
		return err
	}
	runtime.GC()
	start := time.Now()
	if a, _, _, err := d.SyncPeers(ps); err != nil || a != n {
		return fmt.Errorf("added %d of %d: %v", a, n, err)
	}
	el := time.Since(start)
	st, err := d.Stats()
	if err != nil || len(st) != n {
		return fmt.Errorf("device has %d peers: %v", len(st), err)
	}
	rss, err := guestinit.RSSMiB(os.Getpid())
	if err != nil {
		return err
	}
	fmt.Printf("BenchmarkSync/%s 1 %d ns/op %.2f RSS-MiB\n", backend, el.Nanoseconds(), rss)
	if backend == "userspace" {
		// the embedded device's memory is this process's: free it before
		// the daemons run (its removal is cheap, unlike the kernel's)
		return d.Close()
	}
	return nil
}

// removeOnce opens a device with n peers and returns the seconds its
// removal (wgdev Close) takes.
func removeOnce(backend string, n int) (float64, error) {
	h, err := guestinit.NewNetns()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return 0, err
	}
	cfg := wgdev.Config{Name: unique("slbr"), Backend: wgdev.Backend(backend), PrivateKey: key,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.30.0.1/16")}}
	var d *wgdev.Device
	if err := guestinit.InNetns(h, func() (err error) { d, err = wgdev.Open(context.Background(), cfg, wgdev.Options{}); return err }); err != nil {
		return 0, err
	}
	ps, err := peerConfigs(n)
	if err != nil {
		return 0, err
	}
	if a, _, _, err := d.SyncPeers(ps); err != nil || a != n {
		_ = d.Close()
		return 0, fmt.Errorf("added %d of %d: %v", a, n, err)
	}
	start := time.Now()
	if err := d.Close(); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// store is a peer store directory filled with n peers.
type store struct{ dir, state string }

func fillStore(name string, n int) (store, error) {
	dir := filepath.Join("/tmp", name)
	s := store{dir: dir, state: filepath.Join(dir, "state")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return s, err
	}
	st, err := peers.Open(s.state)
	if err != nil {
		return s, err
	}
	pool := peers.Pool{
		V4: netip.MustParsePrefix("10.30.0.1/16"), V6: netip.MustParsePrefix("fd20::1/64"),
		Reserved: []netip.Addr{netip.MustParseAddr("10.30.0.53"), netip.MustParseAddr("fd20::53")},
	}
	reqs := make([]peers.AddRequest, n)
	for i := range reqs {
		reqs[i] = peers.AddRequest{User: fmt.Sprintf("user%05d", i)}
	}
	start := time.Now()
	if _, err := st.AddMany(reqs, pool); err != nil {
		return s, fmt.Errorf("fill the peer store: %w", err)
	}
	fmt.Printf("filled the peer store %s with %d peers in %s\n", name, n, time.Since(start).Round(time.Millisecond))
	return s, nil
}

// upResult is one sluice up: seconds until the peers are on the device,
// the daemon's RSS in MiB, and seconds from SIGTERM until it exited (only
// when asked to stop cleanly).
type upResult struct{ up, rss, stop float64 }

// upOnce starts sluice up on the store and waits for its first peer sync
// of n peers. With stop, it then stops the daemon with SIGTERM and times
// the exit; without, it kills it (SIGKILL): the interface stays in the
// namespace, which stays until the VM powers off.
func upOnce(s store, backend string, n int, stop bool) (upResult, error) {
	h, err := guestinit.NewNetns()
	if err != nil {
		return upResult{}, err
	}
	if stop {
		defer h.Close()
	} else {
		keep = append(keep, h)
	}
	ifname := unique("slup")
	conf := filepath.Join(s.dir, ifname+".yaml")
	text := fmt.Sprintf(`interface: {name: %s, backend: %s, listen_port: 51821, private_key_file: %s/gw.key, addresses: [10.30.0.1/16, fd20::1/64], mtu: 1420, endpoint: 192.0.2.1:51821}
dns: {mode: split, listen: [10.30.0.53, fd20::53], default: {upstreams: ["%s"]}}
enforce: {table: %s}
peers: {state_dir: %s, routes: []}
admin: {listen: "", control_socket: %s/%s.sock}
`, ifname, backend, s.dir, upstreamAddr, unique("slbt"), s.state, s.dir, ifname)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return upResult{}, err
	}
	// The daemon logs "peers applied" with the total once its first sync
	// is on the device.
	applied := fmt.Sprintf("total=%d ", n)
	cmd := exec.Command(vmtest.SluicePath, "up", "-c", conf, "--log-level", "info")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	out := &syncbuf.Buffer{}
	seen := make(chan time.Time, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(out, line)
			if strings.Contains(line, "msg=\"peers applied\"") && strings.Contains(line, applied) {
				select {
				case seen <- time.Now():
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	start := time.Now()
	if err := guestinit.InNetns(h, cmd.Start); err != nil {
		pw.Close()
		return upResult{}, err
	}
	exited := make(chan error, 1)
	go func() { err := cmd.Wait(); pw.Close(); exited <- err }()
	finished := false
	defer func() {
		if !finished {
			_ = cmd.Process.Kill()
			<-exited
		}
		<-scanned
	}()
	var at time.Time
	select {
	case at = <-seen:
	case err := <-exited:
		exited <- err
		return upResult{}, fmt.Errorf("sluice up exited: %v\n%s", err, out.String())
	case <-time.After(upTimeout):
		return upResult{}, fmt.Errorf("no \"peers applied\" with %d peers after %s\n%s", n, upTimeout, out.String())
	}
	r := upResult{up: at.Sub(start).Seconds()}
	time.Sleep(rssSettle)
	if r.rss, err = guestinit.RSSMiB(cmd.Process.Pid); err != nil {
		return r, err
	}
	var wg *wgctrl.Client
	if err := guestinit.InNetns(h, func() (err error) { wg, err = wgctrl.New(); return err }); err != nil {
		return r, err
	}
	dev, err := wg.Device(ifname)
	wg.Close()
	if err != nil {
		return r, err
	}
	if len(dev.Peers) != n {
		return r, fmt.Errorf("device %s has %d peers after the daemon's sync, want %d", ifname, len(dev.Peers), n)
	}
	if kernel := dev.Type == wgtypes.LinuxKernel; kernel != (backend == "kernel") {
		return r, fmt.Errorf("device type %v on the %s backend", dev.Type, backend)
	}
	if !stop {
		return r, nil // the deferred kill leaves the interface in place
	}
	t0 := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return r, err
	}
	select {
	case err := <-exited:
		exited <- err
		finished = true
		if err != nil {
			return r, fmt.Errorf("sluice up after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(stopTimeout):
		return r, fmt.Errorf("still running %s after SIGTERM", stopTimeout)
	}
	r.stop = time.Since(t0).Seconds()
	return r, nil
}

// peerConfigs returns n peers with random keys and one /32 and /128 each
// in 10.30.0.0/16 and fd20::/64.
func peerConfigs(n int) ([]wgdev.PeerConfig, error) {
	out := make([]wgdev.PeerConfig, n)
	for i := range out {
		var k wgtypes.Key
		if _, err := rand.Read(k[:]); err != nil {
			return nil, err
		}
		var v4 [4]byte
		binary.BigEndian.PutUint32(v4[:], 10<<24|30<<16|uint32(i+2))
		v6 := netip.MustParseAddr("fd20::").As16()
		binary.BigEndian.PutUint32(v6[12:], uint32(i+0x1000))
		out[i] = wgdev.PeerConfig{
			PublicKey:  k,
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4(v4), 32), netip.PrefixFrom(netip.AddrFrom16(v6), 128)},
		}
	}
	return out, nil
}

func unique(prefix string) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

// boot prepares the bare initramfs (guestinit.Boot).
func boot() error {
	_, err := guestinit.Boot(vmtest.ModulesDir)
	return err
}

func poweroff() { guestinit.Poweroff() }
