package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-vpn/sluice/vmtest"
)

const (
	// kernelRounds is how many fresh VMs measure the kernel section. One:
	// under software emulation a VM with the four measurements takes about
	// 10 minutes on a 2-core machine, most of it removing the kernel
	// interface with 10,000 peers (twice).
	kernelRounds = 1
	// kernelVMTimeout bounds one VM run (boot, four measurements, power off).
	kernelVMTimeout = 25 * time.Minute
)

// kernelSection measures the scale figures on both WireGuard backends in
// one VM running Debian's kernel (the one with the module) under qemu's
// software emulation: each round boots a fresh VM that runs the guest
// benchmarks of vmtest/guest (BenchmarkSync10k, BenchmarkUp10k) for the
// kernel and the embedded backend, so the two are compared on the same
// emulated machine. Ratios are taken inside each round.
func (b *bench) kernelSection(ctx context.Context) []row {
	n := 10000 // the guest benchmarks' size (vmtest/guest scalePeers)
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
		{figure: fmt.Sprintf("Kernel VM (TCG): remove the interface with %d peers (wgdev Close) — kernel backend", n), unit: " s", s: closeK, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): remove the interface with %d peers (wgdev Close) — embedded backend", n), unit: " s", s: closeU, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice stop (SIGTERM until exit) with %d peers — kernel backend", n), unit: " s", s: stopK, rounds: R},
		{figure: fmt.Sprintf("Kernel VM (TCG): sluice stop (SIGTERM until exit) with %d peers — embedded backend", n), unit: " s", s: stopU, rounds: R},
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
	bins, err := vmtest.Build(ctx, root, dir)
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
			Args: []string{"-test.v", "-test.run=^$", "-test.bench=^Benchmark(Sync|Up)10k$", "-test.benchtime=1x",
				"-test.count=1", "-test.timeout=" + (kernelVMTimeout - 30*time.Second).String()},
			Timeout: kernelVMTimeout,
		})
		took = append(took, d)
		if err == nil {
			if code, _ := vmtest.ExitCode(console); code != 0 {
				err = fmt.Errorf("guest benchmarks exited %d: %s", code, lastLine(console))
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
		sk, okK := metric("BenchmarkSync10k/kernel", "ns/op", syncK)
		su, okU := metric("BenchmarkSync10k/userspace", "ns/op", syncU)
		if okK && okU && su > 0 {
			syncR.add(sk / su)
		} else {
			syncR.fail("a SyncPeers figure is missing")
		}
		uk, okK := metric("BenchmarkUp10k/kernel", "up-s", upK)
		uu, okU := metric("BenchmarkUp10k/userspace", "up-s", upU)
		if okK && okU && uu > 0 {
			upR.add(uk / uu)
		} else {
			upR.fail("an up figure is missing")
		}
		metric("BenchmarkUp10k/kernel", "RSS-MiB", rssK)
		metric("BenchmarkUp10k/userspace", "RSS-MiB", rssU)
		metric("BenchmarkSync10k/kernel", "close-s", closeK)
		metric("BenchmarkSync10k/userspace", "close-s", closeU)
		metric("BenchmarkUp10k/kernel", "stop-s", stopK)
		metric("BenchmarkUp10k/userspace", "stop-s", stopU)
	}
	b.notes = append(b.notes, fmt.Sprintf("Kernel VM: Debian's kernel %s (the WireGuard module this host lacks) under qemu -accel tcg — software emulation, %d MiB, %d vCPUs; VM runs took %s. Emulation makes every kernel VM figure several times slower than on hardware, and unevenly: compare the kernel and embedded rows with each other (same VM, same round), not with the host rows. Each of %d VM runs (rounds) executes vmtest/guest's BenchmarkSync10k (empty device to %d peers in one SyncPeers — generic netlink for the kernel backend, UAPI for the embedded one — then removing the interface) and BenchmarkUp10k (sluice up on a store of %d peers until its first peer sync is on the device, checked against the device; the daemon's VmRSS %s later — the kernel backend keeps peers in kernel memory, outside it; then SIGTERM until it exits). Removing a kernel interface with %d peers is per-peer work in the kernel that emulation magnifies to minutes; it was not measured on hardware",
		k.Release, vmtest.DefaultMemoryMiB, vmtest.DefaultCPUs, durations(took), R, n, n, rssSettle, n))
	return rows
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
