//go:build sluicevm

package guest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/gateway/wgdev"
	"github.com/sluice-vpn/sluice/peers"
)

// The scale benchmarks run the same measurements as bench's scale section
// (gateway/wgdev BenchmarkSyncPeers10k/add and `sluice up` on a store of
// 10,000 peers) once per backend, kernel and embedded, in the same VM so
// that the two can be compared; make bench boots the VM and reads the
// metrics (bench/cmd/benchrun, kernel section). They need the module and
// PID 1 like the tests.
const (
	scalePeers = 10000
	// scaleUpTimeout bounds sluice up until every peer is on the device.
	scaleUpTimeout = 4 * time.Minute
	// rssSettle is how long the daemon idles before its RSS is read (as
	// in bench's scale section).
	rssSettle = time.Second
	// scaleStopTimeout bounds a clean stop with 10,000 peers (minutes for
	// the kernel backend under emulation).
	scaleStopTimeout = 8 * time.Minute
)

var backends = []string{"kernel", "userspace"}

// BenchmarkSync10k: an open, empty device gets 10,000 peers in one
// SyncPeers (one ConfigureDevice: generic netlink for the kernel, UAPI for
// the embedded device). RSS-MiB is this process's resident set afterwards:
// for the kernel backend the peers live in kernel memory, not in it.
func BenchmarkSync10k(b *testing.B) {
	for _, backend := range backends {
		b.Run(backend, func(b *testing.B) {
			n := newNS(b)
			key, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				b.Fatal(err)
			}
			cfg := wgdev.Config{
				Name: unique("slbn"), Backend: wgdev.Backend(backend), PrivateKey: key,
				Addresses: []netip.Prefix{netip.MustParsePrefix("10.30.0.1/16"), netip.MustParsePrefix("fd20::1/64")},
			}
			var d *wgdev.Device
			if err := n.do(func() (err error) { d, err = wgdev.Open(context.Background(), cfg, wgdev.Options{}); return err }); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = d.Close() }) // after a failure; a second Close is a no-op
			if d.Backend() != wgdev.Backend(backend) {
				b.Fatalf("backend %s, want %s", d.Backend(), backend)
			}
			ps := scalePeerConfigs(b, scalePeers)
			runtime.GC()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				if _, _, _, err := d.SyncPeers(nil); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if a, _, _, err := d.SyncPeers(ps); err != nil || a != len(ps) {
					b.Fatalf("added %d of %d: %v", a, len(ps), err)
				}
			}
			b.StopTimer()
			st, err := d.Stats()
			if err != nil || len(st) != len(ps) {
				b.Fatalf("device has %d peers: %v", len(st), err)
			}
			rss, err := rssMiB(os.Getpid())
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rss, "RSS-MiB")
			// Removing the interface with every peer on it: what a clean
			// stop of the gateway costs (the kernel waits for a network
			// grace period per peer as it takes each one down).
			start := time.Now()
			if err := d.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(time.Since(start).Seconds(), "close-s")
		})
	}
}

// BenchmarkUp10k: `sluice up` on a store of 10,000 peers, from start until
// its first peer sync is on the device (up-s; checked against the device
// afterwards), and the daemon's RSS rssSettle later.
func BenchmarkUp10k(b *testing.B) {
	dir := b.TempDir()
	state := filepath.Join(dir, "state")
	st, err := peers.Open(state)
	if err != nil {
		b.Fatal(err)
	}
	pool := peers.Pool{
		V4: netip.MustParsePrefix("10.30.0.1/16"), V6: netip.MustParsePrefix("fd20::1/64"),
		Reserved: []netip.Addr{netip.MustParseAddr("10.30.0.53"), netip.MustParseAddr("fd20::53")},
	}
	reqs := make([]peers.AddRequest, scalePeers)
	for i := range reqs {
		reqs[i] = peers.AddRequest{User: fmt.Sprintf("user%05d", i)}
	}
	fill := time.Now()
	if _, err := st.AddMany(reqs, pool); err != nil {
		b.Fatalf("fill the peer store: %v", err)
	}
	b.Logf("filled the peer store with %d peers in %s", scalePeers, time.Since(fill).Round(time.Millisecond))
	for _, backend := range backends {
		b.Run(backend, func(b *testing.B) {
			var r upResult
			for range b.N {
				r = upOnce(b, dir, state, backend)
			}
			b.ReportMetric(r.up, "up-s")
			b.ReportMetric(r.rss, "RSS-MiB")
			b.ReportMetric(r.stop, "stop-s")
		})
	}
}

// upResult is one sluice up: seconds until the peers are on the device,
// the daemon's RSS in MiB, and seconds from SIGTERM until it exited.
type upResult struct{ up, rss, stop float64 }

func upOnce(b *testing.B, dir, state, backend string) upResult {
	b.StopTimer()
	n := newNS(b)
	wg := n.wgctrl(b)
	ifname := unique("slup")
	conf := filepath.Join(dir, ifname+".yaml")
	text := fmt.Sprintf(`interface: {name: %s, backend: %s, listen_port: 51821, private_key_file: %s/gw.key, addresses: [10.30.0.1/16, fd20::1/64], mtu: 1420, endpoint: 192.0.2.1:51821}
dns: {mode: split, listen: [10.30.0.53, fd20::53], default: {upstreams: ["%s"]}}
enforce: {table: %s}
peers: {state_dir: %s, routes: []}
admin: {listen: "", control_socket: %s/%s.sock}
`, ifname, backend, dir, upstreamAddr, unique("slbt"), state, dir, ifname)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		b.Fatal(err)
	}
	// The daemon logs "peers applied" with the total once its first sync
	// is on the device; waiting for that line instead of polling the
	// device keeps 10,000-peer dumps (slow under emulation, and holding
	// the device's lock) out of the measurement.
	applied := fmt.Sprintf("total=%d ", scalePeers)
	cmd := exec.Command(sluiceBin, "up", "-c", conf, "--log-level", "info")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	out := &lockedBuffer{}
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
	b.StartTimer()
	start := time.Now()
	if err := n.do(cmd.Start); err != nil {
		pw.Close()
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { err := cmd.Wait(); pw.Close(); exited <- err }()
	stopped := false
	defer func() {
		if !stopped { // a failure on the way: do not wait for a clean stop
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
		b.Fatalf("sluice up (%s) exited: %v\n%s", backend, err, out.String())
	case <-time.After(scaleUpTimeout):
		b.Fatalf("sluice up (%s): no \"peers applied\" with %d peers after %s\n%s", backend, scalePeers, scaleUpTimeout, out.String())
	}
	b.StopTimer()
	el := at.Sub(start).Seconds()
	time.Sleep(rssSettle)
	rss, err := rssMiB(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	dev, err := wg.Device(ifname)
	if err != nil {
		b.Fatal(err)
	}
	if len(dev.Peers) != scalePeers {
		b.Fatalf("device %s has %d peers after the daemon's sync, want %d", ifname, len(dev.Peers), scalePeers)
	}
	if kernel := dev.Type == wgtypes.LinuxKernel; kernel != (backend == "kernel") {
		b.Fatalf("device type %v on the %s backend", dev.Type, backend)
	}
	stop := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		stopped = true
		if err != nil {
			b.Fatalf("sluice up (%s) after SIGTERM: %v\n%s", backend, err, out.String())
		}
	case <-time.After(scaleStopTimeout):
		b.Fatalf("sluice up (%s) still running %s after SIGTERM", backend, scaleStopTimeout)
	}
	return upResult{up: el, rss: rss, stop: time.Since(stop).Seconds()}
}

// scalePeerConfigs returns n peers with random keys and one /32 and /128
// each in 10.30.0.0/16 and fd20::/64.
func scalePeerConfigs(b *testing.B, n int) []wgdev.PeerConfig {
	out := make([]wgdev.PeerConfig, n)
	for i := range out {
		var k wgtypes.Key
		if _, err := rand.Read(k[:]); err != nil {
			b.Fatal(err)
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
	return out
}
