// Command benchrun is the body of `make bench` (bench/run.sh builds it and
// the programs it drives, then runs it). It owns the benchmark method: it
// starts every contender itself (on loopback or in its own network
// namespaces), alternates them round by round, and prints one table of
// medians with min–max, ratios taken inside each round. The table is also
// written to bench/results/<date>-<host>.md.
//
// Sections: DNS cache hits (dnsperf, sluice vs dnsdist vs unbound), DNS cache
// misses (dnslat, latency sluice adds over its upstream), tunnel throughput
// (iperf3 through sluice vs standalone wireguard-go), scale (peers and
// firewall apply times), and kernel (the scale figures on the kernel and
// the embedded WireGuard backend in a VM running Debian's kernel, package
// vmtest).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Pinning: the machine this runs on in CI has two cores. Every server under
// test gets the same single core (serverCPU) and every load generator the
// other one (clientCPU), so a contender can never borrow the load
// generator's core and the load generator never competes with the server.
const (
	serverCPU = "0"
	clientCPU = "1"
)

// mode holds the sizes of one kind of run (full or --quick). The full
// sizes keep `make bench` under 10 minutes on the 2-core CI machine (build
// included) and the quick ones `make bench-quick` under 2: the header of
// every result prints each section's wall time.
type mode struct {
	name        string
	rounds      int           // rounds of the DNS section
	dnsperfTime time.Duration // per contender per round
	loadTime    time.Duration // dnsload's run per contender per round
	latQueries  int           // dnslat measured queries per target per round
	// inflightQueries is dnslat's measured queries per target per round
	// at missInflight queries in flight.
	inflightQueries int
	encRounds       int           // rounds of the encrypted (DoT/DoH) section
	iperfTime       time.Duration // per variant per round
	tunRounds       int
	// scaleRounds is how many fresh processes measure each Go benchmark
	// figure of the scale section.
	scaleRounds int
	scalePeers  int
	scaleDoH    int
	// scaleDaemon is the store sizes `sluice up` is measured at, and how
	// many fresh daemons measure each.
	scaleDaemon []daemonSize
	// egressRounds and forwardTime bound the egress figures: each round
	// sets up 100,000 learned pairs in several fresh processes, which is
	// most of a quick run's time on a busy machine.
	egressRounds int
	forwardTime  string // -test.benchtime of BenchmarkForward
	fleetRounds  int
}

// daemonSize is one store size of the scale section's `sluice up` figures.
type daemonSize struct{ peers, rounds int }

var (
	// Rounds: DNS figures vary most from round to round (ratios 0.93–1.13
	// over 5 rounds of 10 s), so DNS keeps 4 rounds of 3 s; DoT/DoH (ratio
	// spread ±3 %), the tunnel (±5 %) and the scale figures (±3 %; 50,000
	// peers ±2 %) were steadier and run fewer. dnsperf ran 4 s (quick: 2 s)
	// until the full run reached 10 min and the quick one 2 min 12 s on a
	// slow day (2026-12-07); the hits it measures are dnsperf-bound, and
	// dnsload's saturation rows 2.5 s.
	fullMode = mode{
		name: "full", rounds: 4, dnsperfTime: 3 * time.Second, loadTime: 2500 * time.Millisecond, latQueries: 6000, inflightQueries: 8000,
		encRounds: 3, iperfTime: 4 * time.Second, tunRounds: 3, scaleRounds: 2, scalePeers: 10000, scaleDoH: 5000,
		scaleDaemon: []daemonSize{{10000, 2}, {50000, 1}}, egressRounds: 2, forwardTime: "1s", fleetRounds: 1,
	}
	quickMode = mode{
		name: "quick", rounds: 2, dnsperfTime: time.Second, loadTime: time.Second, latQueries: 1500, inflightQueries: 2000,
		encRounds: 2, iperfTime: time.Second, tunRounds: 2, scaleRounds: 1, scalePeers: 10000, scaleDoH: 5000,
		scaleDaemon: []daemonSize{{10000, 1}}, egressRounds: 1, forwardTime: "1s", fleetRounds: 1,
	}
)

// bench is one harness run.
type bench struct {
	log   *slog.Logger
	r     *runner
	mode  mode
	bin   string // directory with the built programs
	work  string // scratch directory
	runID string // prefix of namespace and interface names
	dnsns string // namespace of the running DNS section

	loadBefore string // /proc/loadavg at the start, to judge a shared machine
	cpus       struct{ server, client, both string }
	notes      []string // shown under the table
	// buildTook is run.sh's build time (-build-secs), sections the wall
	// time of each section run, in order: the header shows both so that
	// whoever shortens the run next sees where the time goes.
	buildTook time.Duration
	sections  []sectionTime
}

// sectionTime is the wall time one section took.
type sectionTime struct {
	name string
	took time.Duration
}

// timed runs one section and records its wall time.
func (b *bench) timed(name string, f func()) {
	start := time.Now()
	f()
	b.sections = append(b.sections, sectionTime{name, time.Since(start)})
	b.log.Info("section done", "section", name, "took", time.Since(start).Round(time.Second))
}

// sectionTimes renders the build and section wall times for the header.
func (b *bench) sectionTimes() string {
	var parts []string
	if b.buildTook > 0 {
		parts = append(parts, "build "+b.buildTook.Round(time.Second).String())
	}
	for _, st := range b.sections {
		parts = append(parts, st.name+" "+st.took.Round(time.Second).String())
	}
	return strings.Join(parts, ", ")
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		quick    = flag.Bool("quick", false, "short run (< 2 minutes)")
		bin      = flag.String("bin", "", "directory with dnslat, wireguard-go-same and, when built, sluice and dnsproxy-bench")
		work     = flag.String("work", "", "scratch directory (default: a new one under /tmp)")
		out      = flag.String("out", "", "directory for <date>-<host>.md (empty: do not write)")
		runID    = flag.String("run-id", "", "short unique prefix for namespace and interface names")
		sections = flag.String("sections", "dns,encrypted,tunnel,scale,kernel,fleet", "comma-separated sections to run: dns, encrypted (DoT/DoH), tunnel, scale, kernel (scale on the kernel and embedded backends in a VM with Debian's kernel), fleet (etcd registry), profile (CPU profile of the proxy, not in the default)")
		verbose  = flag.Bool("v", false, "debug logging")
		buildSec = flag.Int("build-secs", 0, "seconds run.sh spent building (shown in the header)")
	)
	flag.Parse()
	sectionsSet := false
	flag.Visit(func(f *flag.Flag) { sectionsSet = sectionsSet || f.Name == "sections" })
	if *quick && !sectionsSet {
		*sections = "dns,tunnel,scale" // the kernel VM alone takes minutes under emulation
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *bin == "" {
		return errors.New("-bin is required")
	}
	if *work == "" {
		d, err := os.MkdirTemp("", "sluice-bench-")
		if err != nil {
			return fmt.Errorf("create work dir: %w", err)
		}
		*work = d
	}
	if *runID == "" {
		*runID = fmt.Sprintf("sb%04x", os.Getpid()&0xffff)
	}
	if len(*runID) > 8 {
		return fmt.Errorf("run id %q longer than 8 bytes (interface names are limited to 15)", *runID)
	}
	r, err := newRunner(log, filepath.Join(*work, "logs"))
	if err != nil {
		return err
	}
	b := &bench{log: log, r: r, mode: fullMode, bin: *bin, work: *work, runID: *runID, buildTook: time.Duration(*buildSec) * time.Second}
	if *quick {
		b.mode = quickMode
	}
	b.cpus.server, b.cpus.client, b.cpus.both = serverCPU, clientCPU, serverCPU+","+clientCPU
	if runtime.NumCPU() < 2 {
		b.cpus.client, b.cpus.both = serverCPU, serverCPU
		b.notes = append(b.notes, "only one CPU: servers and load generators share it")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer func() {
		if err := r.stopAll(); err != nil {
			log.Error("cleanup", "err", err)
		}
	}()

	start := time.Now()
	b.loadBefore = loadAvg()
	var rows []row
	want := map[string]bool{}
	for _, s := range strings.Split(*sections, ",") {
		want[strings.TrimSpace(s)] = true
	}
	if want["dns"] {
		b.timed("dns", func() { rows = append(rows, b.dnsSection(ctx)...) })
	}
	if want["encrypted"] && ctx.Err() == nil {
		b.timed("encrypted", func() { rows = append(rows, b.encryptedSection(ctx)...) })
	}
	if want["tunnel"] && ctx.Err() == nil {
		b.timed("tunnel", func() { rows = append(rows, b.tunnelSection(ctx)...) })
	}
	if want["scale"] && ctx.Err() == nil {
		b.timed("scale", func() { rows = append(rows, b.scaleSection(ctx)...) })
	}
	if want["kernel"] && ctx.Err() == nil {
		b.timed("kernel", func() { rows = append(rows, b.kernelSection(ctx)...) })
	}
	if want["fleet"] && ctx.Err() == nil {
		b.timed("fleet", func() { rows = append(rows, b.fleetSection(ctx)...) })
	}
	if want["profile"] && ctx.Err() == nil {
		dir := *out
		if dir == "" {
			dir = *work
		}
		b.timed("profile", func() {
			if err := b.profileSection(ctx, dir); err != nil {
				log.Error("profile", "err", err)
			}
		})
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if len(rows) == 0 {
		return nil
	}
	report := b.report(rows, time.Since(start))
	fmt.Print(report)
	if *out != "" {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return fmt.Errorf("create results dir: %w", err)
		}
		host, _ := os.Hostname()
		suffix := ""
		if *quick {
			suffix = "-quick" // a quick run never overwrites the full table
		}
		name := filepath.Join(*out, fmt.Sprintf("%s-%s%s.md", time.Now().Format("2006-01-02"), sanitize(host), suffix))
		if err := os.WriteFile(name, []byte(report), 0o644); err != nil {
			return fmt.Errorf("write results %q: %w", name, err)
		}
		fmt.Fprintf(os.Stderr, "benchrun: wrote %s\n", name)
	}
	return nil
}

func sanitize(s string) string {
	if s == "" {
		return "unknown"
	}
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '.' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, s)
}

// report renders the header, the one table and the notes.
func (b *bench) report(rows []row, took time.Duration) string {
	var s strings.Builder
	host, _ := os.Hostname()
	total := took + b.buildTook
	fmt.Fprintf(&s, "## sluice bench — %s, %s (%s run, %s)\n\n", time.Now().Format("2006-01-02 15:04 MST"), host, b.mode.name, total.Round(time.Second))
	fmt.Fprintf(&s, "- wall time %s: %s\n", total.Round(time.Second), b.sectionTimes())
	fmt.Fprintf(&s, "- CPU: %s, %d cores; kernel %s; %s\n", cpuModel(), runtime.NumCPU(), kernel(), runtime.Version())
	fmt.Fprintf(&s, "- pinning: servers on CPU %s, load generators on CPU %s; tunnel: gateway side on CPU %s, client side on CPU %s\n",
		b.cpus.server, b.cpus.client, b.cpus.server, b.cpus.client)
	fmt.Fprintf(&s, "- load average (1/5/15 min) at start %s, at end %s: anything else running on the machine shows up as spread\n", b.loadBefore, loadAvg())
	if busy(b.loadBefore, runtime.NumCPU()) {
		fmt.Fprintf(&s, "- **warning: the machine was busy before this run started (load %s on %d cores): other work competed for the pinned cores, so treat these figures, the tunnel ones above all, as unreliable and run again on a quiet machine**\n", b.loadBefore, runtime.NumCPU())
	}
	fmt.Fprintf(&s, "- %d alternating rounds (DNS), %d (DoT/DoH), %d (tunnel), %d (scale benchmarks); median (min–max) over rounds; ratios and differences are taken inside each round\n\n", b.mode.rounds, b.mode.encRounds, b.mode.tunRounds, b.mode.scaleRounds)
	s.WriteString(table(rows))
	if len(b.notes) > 0 {
		s.WriteString("\n")
		for _, n := range b.notes {
			fmt.Fprintf(&s, "- %s\n", n)
		}
	}
	return s.String()
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// loadAvg returns the three load averages from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// busyLoadPerCore is the 1-minute load per core above which a machine is
// too busy, before the run starts, for its figures to be trusted.
const busyLoadPerCore = 0.5

// busy reports whether a loadAvg string shows a machine already busy.
func busy(load string, cores int) bool {
	f := strings.Fields(load)
	if len(f) == 0 || cores <= 0 {
		return false
	}
	l1, err := strconv.ParseFloat(f[0], 64)
	return err == nil && l1 > busyLoadPerCore*float64(cores)
}

func kernel() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "unknown"
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}

// have reports whether the harness has a built program.
func (b *bench) have(name string) bool {
	st, err := os.Stat(filepath.Join(b.bin, name))
	return err == nil && st.Mode().IsRegular()
}

// why returns the reason a program was not built (run.sh writes NAME.err).
func (b *bench) why(name string) string {
	if e, err := os.ReadFile(filepath.Join(b.bin, name+".err")); err == nil {
		for _, line := range strings.Split(string(e), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				return name + " not built: " + line
			}
		}
	}
	return name + " not built"
}
