package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink/nltest"
)

// pollInterval bounds how long a deleted or changed table stays missing when
// the netlink monitor is unavailable or misses an event.
const pollInterval = 500 * time.Millisecond

// monitorBuffer is the event buffer of the nftables monitor (generations).
const monitorBuffer = 64

// monitorSocketBuffer is the monitor's forced netlink socket buffer size.
const monitorSocketBuffer = 4 << 20

// Sentinel errors.
var (
	ErrNotApplied = errors.New("firewall table not applied")
	// ErrTableInUse means the table enforces another WireGuard interface.
	ErrTableInUse = errors.New("firewall table in use for another interface")
	ErrClosed     = errors.New("firewall closed")
)

// Firewall owns one nftables table. Apply, Counters, Render and Remove may be
// called from any goroutine; Run watches the table until its context ends or
// Close is called. After Close every method returns ErrClosed (Render and
// Counters keep working until then).
type Firewall struct {
	log     *slog.Logger
	netns   int
	metrics *metrics

	dial       nltest.Func             // tests: capture netlink instead of the kernel
	pollOnly   bool                    // tests: no netlink monitor, polling only
	cleanFlows func(Spec) (int, error) // conntrack cleanup after Apply; replaced in tests

	reapplied atomic.Uint64

	// Learned egress pairs (learner.go).
	learn       *learner
	learnedFile string
	gating      atomic.Bool  // the applied table has learned sets
	minTTL      atomic.Int64 // floor of a learned pair's lifetime, nanoseconds
	learnMu     sync.Mutex   // serializes learned-set writes with table writes; protects learnTable
	learnTable  string       // table whose learned sets the writer fills; "" when none

	stop      chan struct{} // closed by Close; ends Run
	closeOnce sync.Once
	runs      sync.WaitGroup // Run calls in flight

	mu      sync.Mutex // protects the fields below and serializes netlink writes
	spec    Spec       // last applied, normalized
	desired *ruleset   // last applied, nil before the first Apply
	last    map[Reason]Counter
	applied time.Time // when the kernel's table was last (re)written
	closed  bool
}

// New returns a Firewall; it touches nothing in the kernel until Apply.
func New(opts Options) (*Firewall, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Firewall{log: log, netns: opts.NetNS, stop: make(chan struct{}), learn: newLearner(), learnedFile: opts.LearnedFile}
	f.cleanFlows = f.cleanConntrack
	f.minTTL.Store(int64(DefaultEgressMinTTL))
	if err := f.loadLearned(); err != nil {
		log.Warn("learned egress pairs not restored", "err", err)
	}
	f.metrics = newMetrics(f)
	if opts.Registerer != nil {
		if err := f.metrics.register(opts.Registerer); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Apply builds the whole table for spec in memory and replaces the kernel's
// table with it in one netlink batch, then deletes conntrack entries of
// existing peer DNS/DoT flows so they cannot keep bypassing the new rules.
// Counter values carry over from the table being replaced.
func (f *Firewall) Apply(spec Spec) error {
	s, err := spec.normalize()
	if err != nil {
		return fmt.Errorf("apply firewall table %q: %w", s.Table, err)
	}
	var eg egress
	if s.FullTunnel {
		if eg, err = f.resolveEgress(s.Egress); err != nil {
			return fmt.Errorf("apply firewall table %q: %w", s.Table, err)
		}
	}
	rs := build(s, eg)
	f.minTTL.Store(int64(s.EgressMinTTL))

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if err := f.checkOwner(s); err != nil {
		return fmt.Errorf("apply firewall table %q: %w", s.Table, err)
	}
	seed := f.seedLocked(s.Table)
	start := time.Now()
	if err := f.send(rs, seed); err != nil {
		return err
	}
	took := time.Since(start)
	f.metrics.applySecs.Set(took.Seconds())
	if f.desired != nil && f.desired.table != rs.table {
		// Renamed: the old table must not stay behind.
		if err := f.deleteTable(f.desired.table); err != nil {
			f.log.Warn("remove previous firewall table", "table", f.desired.table, "err", err)
		}
	}
	f.spec, f.desired, f.applied = s, rs, time.Now()
	f.log.Info("firewall applied", "table", s.Table, "interface", s.Interface, "rules", rs.ruleCount(),
		"doh_ranges", rs.elementCount(setDoH4, setDoH6), "took", took)
	if f.cleanFlows != nil {
		n, err := f.cleanFlows(s)
		if err != nil {
			// The table is in place; old flows still hit the reject backstop.
			f.log.Warn("delete old dns flows from conntrack", "err", err)
		} else if n > 0 {
			f.metrics.flushed.Add(float64(n))
			f.log.Info("deleted old dns flows from conntrack", "flows", n)
		}
	}
	return nil
}

// seedLocked returns the counter values the new table starts with: those of
// the table being replaced when present, else the last values read.
func (f *Firewall) seedLocked(table string) map[Reason]Counter {
	if cs, err := f.readCounters(table); err == nil {
		f.last = cs
		return cs
	}
	if f.desired != nil && f.desired.table == table {
		return f.last
	}
	return nil
}

// Run watches the table until ctx is done or Close is called: when the
// table disappears or is changed (nft delete table, nft flush ruleset, a
// deleted chain or rule), it applies the last spec again and counts it in
// sluice_firewall_reapplied_total. It reacts to nftables netlink events at
// once and polls every pollInterval as a fallback. It returns nil when ctx
// is done.
func (f *Firewall) Run(ctx context.Context) error {
	f.mu.Lock()
	closed := f.closed
	if !closed {
		f.runs.Add(1)
	}
	f.mu.Unlock()
	if closed {
		return ErrClosed
	}
	defer f.runs.Done()

	var events chan *nftables.MonitorEvents
	var mon *nftables.Monitor
	stopMonitor := func() {
		if mon == nil {
			return
		}
		_ = mon.Close() // best effort: its events are drained next
		for range events {
		}
		mon, events = nil, nil
	}
	defer stopMonitor()
	startMonitor := func() {
		// A big receive buffer: our own large batches echo many events.
		c, err := f.conn(monitorSocketBuffer)
		if err != nil {
			f.log.Warn("nftables monitor unavailable, polling", "err", err)
			return
		}
		m := nftables.NewMonitor(nftables.WithMonitorEventBuffer(monitorBuffer))
		ch, err := c.AddGenerationalMonitor(m)
		if err != nil {
			f.log.Warn("nftables monitor unavailable, polling", "err", err)
			return
		}
		mon, events = m, ch
	}
	useMonitor := f.dial == nil && !f.pollOnly
	if useMonitor {
		startMonitor()
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.stop:
			return nil
		case _, ok := <-events:
			if !ok {
				f.log.Warn("nftables monitor ended, polling")
				mon, events = nil, nil
				continue
			}
			// Coalesce a burst of generations into one check.
			for drained := false; !drained; {
				select {
				case _, ok := <-events:
					if !ok {
						mon, events = nil, nil
						drained = true
					}
				default:
					drained = true
				}
			}
			f.ensure()
		case <-tick.C:
			if mon == nil && useMonitor {
				startMonitor()
			}
			f.ensure()
		}
	}
}

// ensure re-applies the last spec when the kernel's table drifted from it.
func (f *Firewall) ensure() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.desired == nil {
		return
	}
	diff, err := f.drift(f.desired)
	if err != nil {
		f.log.Warn("check firewall table", "table", f.desired.table, "err", err)
		return
	}
	if diff == "" {
		if cs, err := f.readCounters(f.desired.table); err == nil {
			f.last = cs
		}
		return
	}
	seed := f.seedLocked(f.desired.table)
	start := time.Now()
	if err := f.send(f.desired, seed); err != nil {
		f.log.Error("re-apply firewall table", "table", f.desired.table, "drift", diff, "err", err)
		return
	}
	f.applied = time.Now()
	f.metrics.applySecs.Set(time.Since(start).Seconds())
	f.metrics.reapplied.Inc()
	f.reapplied.Add(1)
	f.log.Warn("firewall table changed outside sluice, re-applied", "table", f.desired.table, "drift", diff)
}

// AppliedAt returns when the table was last written to the kernel, by Apply
// or by a re-apply; the per-peer counters count from then. Zero before Apply.
func (f *Firewall) AppliedAt() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// Reapplied returns how many times Run re-applied the table.
func (f *Firewall) Reapplied() uint64 {
	return f.reapplied.Load()
}

// Counters reads every named counter of the table from the kernel.
func (f *Firewall) Counters() (map[Reason]Counter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.desired == nil {
		return nil, ErrNotApplied
	}
	cs, err := f.readCounters(f.desired.table)
	if err != nil {
		return nil, err
	}
	f.last = cs
	return cs, nil
}

// Render returns the applied table in nft syntax, as `nft list table inet
// NAME` prints it, built from the desired state with live counter values
// and the live elements of the per-peer sets (their "expires" are read
// separately from nft's, so they may differ by the time between the reads).
func (f *Firewall) Render() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.desired == nil {
		return "", ErrNotApplied
	}
	cs, err := f.readCounters(f.desired.table)
	if err != nil {
		return "", err
	}
	f.last = cs
	peers, err := f.peerElements(f.desired)
	if err != nil {
		return "", err
	}
	return f.desired.render(cs, peers), nil
}

// Remove deletes the table (a missing table is not an error) and forgets the
// desired state: Run does not re-apply it until the next Apply.
func (f *Firewall) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removeLocked()
}

func (f *Firewall) removeLocked() error {
	name := f.spec.Table
	if f.desired == nil {
		return nil
	}
	f.learnMu.Lock()
	f.learnTable = ""
	f.gating.Store(false)
	f.learnMu.Unlock()
	if err := f.deleteTable(name); err != nil {
		return err
	}
	f.desired = nil
	return nil
}

// Close stops Run, waits for it to return, and removes the table unless the
// last spec had KeepOnStop. A process killed without Close leaves the table
// in place (fail closed); the next Apply replaces it.
func (f *Firewall) Close() error {
	var err error
	f.closeOnce.Do(func() {
		f.mu.Lock()
		f.closed = true
		f.mu.Unlock()
		close(f.stop)
		f.runs.Wait()
		f.learn.wg.Wait()
		if perr := f.persistLearned(); perr != nil {
			f.log.Warn("persist learned egress pairs", "err", perr)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.desired != nil && !f.spec.KeepOnStop {
			err = f.removeLocked()
		}
	})
	return err
}

func (rs *ruleset) ruleCount() int {
	n := 0
	for _, c := range rs.chains {
		n += len(c.rules)
	}
	return n
}

func (rs *ruleset) elementCount(names ...string) int {
	n := 0
	for _, name := range names {
		if s := rs.set(name); s != nil {
			n += len(s.ranges)
		}
	}
	return n
}
