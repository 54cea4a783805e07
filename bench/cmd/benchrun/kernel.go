package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-vpn/sluice/vmtest"
)

const (
	// kernelRounds is how many fresh VMs measure the kernel section. One:
	// under software emulation a VM is slow to boot and to run, and the
	// kernel/embedded ratios of one VM were stable from run to run.
	kernelRounds = 1
	// kernelVMTimeout bounds one VM run (boot, measurements, power off).
	kernelVMTimeout = 10 * time.Minute
	// kernelPeers is the size of the SyncPeers, sluice up and RSS figures.
	kernelPeers = 10000
	// kernelRemovePeers is the size of the removal and stop figures: the
	// kernel removes an interface peer by peer, which emulation magnifies
	// to about 170 s at 10,000 peers (27 min full runs were mostly that),
	// so that is measured at a twentieth of the size (linear: 17 s at 1,000).
	kernelRemovePeers = 500
)

// kernelSection measures the scale figures on both WireGuard backends in
// one VM running Debian's kernel (the one with the module) under qemu's
// software emulation: each round boots a fresh VM whose /init is
// bench/cmd/kernelguest, measuring the kernel and the embedded backend, so
// the two are compared on the same emulated machine. Ratios are taken
// inside each round.
func (b *bench) kernelSection(ctx context.Context) []row {
	n, rm := kernelPeers, kernelRemovePeers
	syncK, syncU, syncR := &series{}, &series{}, &series{}
	upK, upU, upR := &series{}, &series{}, &series{}
	rssK, rssU := &series{}, &series{}
	closeK, closeU, stopK, stopU := &series{}, &series{}, &series{}, &series{}
	R := kernelRounds
	rows := []row{
		{figure: fmt.Sprintf("Kernel VM (TCG): apply %d peers in one SyncPeers — kernel backend", n), unit: " s", s: syncK, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): apply %d peers in one SyncPeers — embedded backend", n), unit: " s", s: syncU, rounds: R},
		{figure: "Kernel VM (TCG): SyncPeers ratio kernel / embedded", unit: "×", s: syncR, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice up until %d peers are on the device — kernel backend", n), unit: " s", s: upK, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice up until %d peers are on the device — embedded backend", n), unit: " s", s: upU, rounds: R},
		{figure: "Kernel VM (TCG): sluice up ratio kernel / embedded", unit: "×", s: upR, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice daemon RSS at %d peers — kernel backend", n), unit: " MiB", s: rssK, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice daemon RSS at %d peers — embedded backend", n), unit: " MiB", s: rssU, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): remove the interface with %d peers (wgdev Close) — kernel backend", rm), unit: " s", s: closeK, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): remove the interface with %d peers (wgdev Close) — embedded backend", rm), unit: " s", s: closeU, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice stop (SIGTERM until exit) with %d peers — kernel backend", rm), unit: " s", s: stopK, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice stop (SIGTERM until exit) with %d peers — embedded backend", rm), unit: " s", s: stopU, rounds: R},
	}
	all := []*series{syncK, syncU, syncR, upK, upU, upR, rssK, rssU, closeK, closeU, stopK, stopU}
	failAll := func(reason string) {
		for _, s := range all {
			s.fail(reason)
		}
	}

	k, err := vmtest.FindKernel(vmtest.KernelDir())
	if err != nil {
		failAll(err.Error())
		return rows
	}
	root, err := vmtest.RepoRoot(".")
	if err != nil {
		failAll("find the module root: " + err.Error())
		return rows
	}
	dir := filepath.Join(b.work, "kernel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		failAll(err.Error())
		return rows
	}
	bins, err := buildGuest(ctx, root, dir)
	if err != nil {
		failAll(firstLine(err.Error()))
		return rows
	}
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := vmtest.WriteInitramfs(initrd, k, bins, vmtest.Modules); err != nil {
		failAll(err.Error())
		return rows
	}

	var took []time.Duration
	for round := range R {
		if ctx.Err() != nil {
			return rows
		}
		b.log.Info("kernel VM round", "round", round+1, "of", R)
		console, d, err := vmtest.Run(ctx, vmtest.Spec{
			Kernel:    k,
			Initramfs: initrd,
			Console:   filepath.Join(dir, fmt.Sprintf("console-%d.log", round+1)),
			Args:      []string{"-peers=" + strconv.Itoa(n), "-remove-peers=" + strconv.Itoa(rm)},
			Timeout:   kernelVMTimeout,
		})
		took = append(took, d)
		if err == nil {
			if code, _ := vmtest.ExitCode(console); code != 0 {
				err = fmt.Errorf("kernelguest exited %d: %s", code, guestError(console))
			}
		}
		if err != nil {
			failAll(firstLine(err.Error()))
			continue
		}
		metric := func(name, key string, s *series) (float64, bool) {
			m, err := parseGoBench(console, name)
			if err != nil {
				s.fail(err.Error())
				return 0, false
			}
			v, ok := m[key]
			if !ok {
				s.fail(name + " reports no " + key)
				return 0, false
			}
			if key == "ns/op" {
				v /= 1e9
			}
			s.add(v)
			return v, true
		}
		sk, okK := metric("BenchmarkSync/kernel", "ns/op", syncK)
		su, okU := metric("BenchmarkSync/userspace", "ns/op", syncU)
		if okK && okU && su > 0 {
			syncR.add(sk / su)
		} else {
			syncR.fail("a SyncPeers figure is missing")
		}
		uk, okK := metric("BenchmarkUp/kernel", "up-s", upK)
		uu, okU := metric("BenchmarkUp/userspace", "up-s", upU)
		if okK && okU && uu > 0 {
			upR.add(uk / uu)
		} else {
			upR.fail("an up figure is missing")
		}
		metric("BenchmarkUp/kernel", "RSS-MiB", rssK)
		metric("BenchmarkUp/userspace", "RSS-MiB", rssU)
		metric("BenchmarkRemove/kernel", "close-s", closeK)
		metric("BenchmarkRemove/userspace", "close-s", closeU)
		metric("BenchmarkRemove/kernel", "stop-s", stopK)
		metric("BenchmarkRemove/userspace", "stop-s", stopU)
	}
	b.notes = append(b.notes, fmt.Sprintf("Kernel VM: Debian's kernel %s (the WireGuard module this host lacks) under qemu -accel tcg — software emulation, %d MiB, %d vCPUs; VM runs took %s. Emulation makes every kernel VM figure several times slower than on hardware, and unevenly: compare the kernel and embedded rows with each other (same VM, same round), not with the host rows. Each of %d VM runs (rounds) boots bench/cmd/kernelguest as /init, which for each backend measures an empty device to %d peers in one SyncPeers (generic netlink for the kernel backend, UAPI for the embedded one) and sluice up on a store of %d peers until its first peer sync is on the device (checked against the device), the daemon's VmRSS %s later (the kernel backend keeps peers in kernel memory, outside it). Removing the interface (wgdev Close) and a clean stop (SIGTERM until exit) are measured at %d peers, not %d: the kernel removes an interface peer by peer, per-peer work that emulation magnifies to about 170 s at %d peers (twice per VM, 6 of the 6.5 minutes a VM used to take) — a figure of the emulator more than of sluice; it was not measured on hardware",
		k.Release, vmtest.DefaultMemoryMiB, vmtest.DefaultCPUs, durations(took), R, n, n, rssSettle, rm, n, n))
	return rows
}

// buildGuest compiles sluice and bench/cmd/kernelguest (the VM's /init)
// statically into dir.
func buildGuest(ctx context.Context, root, dir string) (vmtest.Binaries, error) {
	bins := vmtest.Binaries{Guest: filepath.Join(dir, "kernelguest"), Sluice: filepath.Join(dir, "sluice")}
	for _, step := range [][2]string{{bins.Sluice, "./cmd/sluice"}, {bins.Guest, "./bench/cmd/kernelguest"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", step[0], step[1])
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			return bins, fmt.Errorf("go build %s: %w: %s", step[1], err, out)
		}
	}
	return bins, nil
}

// guestError returns kernelguest's error line from the console (it prints
// "kernelguest: ..." before its exit line), or the console's last line.
func guestError(console string) string {
	if i := strings.LastIndex(console, "kernelguest: "); i >= 0 {
		return firstLine(console[i:])
	}
	return lastLine(console)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

func durations(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(time.Second).String())
	}
	return strings.Join(s, ", ")
}
