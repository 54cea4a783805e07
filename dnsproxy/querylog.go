package dnsproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// logRecord is one answered query, queued for the query log writer.
type logRecord struct {
	time      time.Time
	src       netip.AddrPort
	name      string
	qtype     uint16
	rcode     int
	group     string
	upstream  string
	cacheHit  bool
	latency   time.Duration
	blocked   string
	transport Transport
	// peerGroup is the asking peer's group ("" when none are configured).
	peerGroup string
}

// queryLogBufferSize bounds what the query log holds before a write(2): a
// busy proxy writes many records per system call, an idle one each record
// at once (run flushes whenever the queue is empty).
const queryLogBufferSize = 64 << 10

// queryLog writes records as slog JSON lines from one goroutine. Producers
// never block: when the bounded queue is full the record is dropped and counted.
type queryLog struct {
	ch       chan logRecord
	reopenCh chan chan error // run reopens the file (after log rotation)
	path     string
	out      slog.Handler  // writes into buf; owned by run once it started
	buf      *bufio.Writer // batches the file writes; flushed whenever the queue runs empty
	closer   io.Closer     // nil for stderr; owned by run once it started
	peerName func(netip.Addr) string
	gateway  string // named in every record when set
	dropped  prometheus.Counter
	done     chan struct{}
}

// openQueryLog returns nil when cfg.Path is empty.
func openQueryLog(cfg QueryLogConfig, peerName func(netip.Addr) string, dropped prometheus.Counter) (*queryLog, error) {
	if cfg.Path == "" {
		return nil, nil
	}
	var w io.Writer = os.Stderr
	var closer io.Closer
	if cfg.Path != "-" {
		f, err := os.OpenFile(cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open query log %q: %w", cfg.Path, err)
		}
		w, closer = f, f
	}
	buf := bufio.NewWriterSize(w, queryLogBufferSize)
	return &queryLog{
		ch:       make(chan logRecord, cfg.Buffer),
		reopenCh: make(chan chan error),
		path:     cfg.Path,
		out:      queryLogHandler(buf, cfg.Gateway),
		buf:      buf,
		closer:   closer,
		peerName: peerName,
		gateway:  cfg.Gateway,
		dropped:  dropped,
		done:     make(chan struct{}),
	}, nil
}

// queryLogHandler writes JSON records, each naming gateway when set.
func queryLogHandler(w io.Writer, gateway string) slog.Handler {
	h := slog.NewJSONHandler(w, nil)
	if gateway == "" {
		return h
	}
	return h.WithAttrs([]slog.Attr{slog.String("gateway", gateway)})
}

// add queues r without blocking.
func (l *queryLog) add(r logRecord) {
	select {
	case l.ch <- r:
	default:
		l.dropped.Inc()
	}
}

// logDrainEvery is how long the writer sleeps between drains while
// records keep coming. Woken for every record, it would cost the thread
// that answered the query a wake-up of another thread for each one
// (futex, and a context switch on its core): a trace, whose reader is
// woken that way, costs a miss 11–12 µs when the UDP path waits in the
// kernel (lab, 2026-12-07). At 4,096 records of buffer (the default) the
// queue holds 2 ms of two million queries a second.
const logDrainEvery = 2 * time.Millisecond

// run writes records until ctx ends, then drains what is queued and closes
// the file. It is the only goroutine that touches the writer. Idle, it
// waits for a record; while records keep coming it drains the queue every
// logDrainEvery instead of waking for each.
func (l *queryLog) run(ctx context.Context) {
	defer close(l.done)
	tick := time.NewTimer(logDrainEvery)
	tick.Stop()
	busy := false
	for {
		wait := l.ch
		if busy {
			wait = nil // sleep out the tick
			tick.Reset(logDrainEvery)
		}
		select {
		case r := <-wait:
			l.write(r)
		case <-tick.C:
		case req := <-l.reopenCh:
			req <- l.reopenFile()
			continue
		case <-ctx.Done():
			tick.Stop()
			l.drain()
			l.flush()
			if l.closer != nil {
				l.closer.Close()
			}
			return
		}
		n := l.drain()
		l.flush()
		busy = n > 0 || !busy // a record that ended an idle spell may start a burst
	}
}

// drain writes what is queued now and returns how many.
func (l *queryLog) drain() int {
	for n := 0; ; n++ {
		select {
		case r := <-l.ch:
			l.write(r)
		default:
			return n
		}
	}
}

// reopen makes the running writer open its file again, so that a rotated
// log (renamed by logrotate) is followed by a new file at the same path.
// Records queued before it go to the old file. It must only be called while
// run is running.
func (l *queryLog) reopen() error {
	if l.path == "-" {
		return nil
	}
	req := make(chan error, 1)
	select {
	case l.reopenCh <- req:
		return <-req
	case <-l.done:
		return errors.New("reopen dns query log: closed")
	}
}

// reopenFile runs on run's goroutine. On error the old file stays in use.
func (l *queryLog) reopenFile() error {
drain: // what was queued belongs to the old file
	for {
		select {
		case r := <-l.ch:
			l.write(r)
		default:
			break drain
		}
	}
	l.flush()
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("reopen dns query log %q: %w", l.path, err)
	}
	if l.closer != nil {
		l.closer.Close()
	}
	l.buf = bufio.NewWriterSize(f, queryLogBufferSize)
	l.out, l.closer = queryLogHandler(l.buf, l.gateway), f
	return nil
}

// flush writes out what buf holds. A failed write (disk full) loses the
// buffered records, counted as dropped, and the log carries on.
func (l *queryLog) flush() {
	if err := l.buf.Flush(); err != nil {
		l.dropped.Inc()
		l.buf.Reset(l.underlying())
	}
}

// underlying is the writer buf writes to.
func (l *queryLog) underlying() io.Writer {
	if w, ok := l.closer.(io.Writer); ok {
		return w
	}
	return os.Stderr
}

func (l *queryLog) write(r logRecord) {
	q := r.export()
	peer := r.src.Addr().String()
	if l.peerName != nil {
		if n := l.peerName(r.src.Addr()); n != "" {
			peer = n
		}
	}
	rec := slog.NewRecord(r.time, slog.LevelInfo, "dns query", 0)
	rec.AddAttrs(
		slog.String("peer", peer),
		slog.String("client", r.src.String()),
		slog.String("transport", r.transport.String()),
		slog.String("name", q.Name),
		slog.String("type", q.Type),
		slog.String("rcode", q.Rcode),
		slog.String("group", q.Group),
		slog.String("upstream", q.Upstream),
		slog.Bool("cache_hit", q.CacheHit),
		slog.Float64("latency_ms", float64(r.latency.Microseconds())/1000),
		slog.String("blocked", q.Blocked),
	)
	if q.PeerGroup != "" {
		rec.AddAttrs(slog.String("peer_group", q.PeerGroup))
	}
	l.out.Handle(context.Background(), rec) //nolint:errcheck // nowhere to report a failed log write
}

// wireName renders the uncompressed wire name at the start of b in
// presentation format (only used when the query log is on).
func wireName(b []byte) string {
	name, _, err := dns.UnpackDomainName(b, 0)
	if err != nil {
		return ""
	}
	return name
}
