//go:build linux

// Command dnsload is a UDP DNS load generator light enough that the server,
// not the generator, is the limit: on one core it sends and reads in
// batches (sendmmsg/recvmmsg, up to -batch queries per system call) on
// -sockets connected sockets, each kept at -window queries in flight, and
// checks every answer against the query it answers (ID, QR, RCODE
// NOERROR). Debian's dnsperf 2.10 sends and reads one query per system
// call from two threads, which on the bench's one client core tops out
// near the servers' own rate; the bench keeps its dnsperf rows and adds
// dnsload's as the server-bound figures.
//
// It asks the names q0.<zone> … q<N-1>.<zone> (type A) in turn, the set
// dnsperf's hit file holds, for -l, and prints one JSON object: queries
// sent, answered inside the run, lost (no answer within -timeout),
// mismatched (an answer to no query in flight, or not NOERROR), the run
// time and the answered queries per second.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

type result struct {
	Sent       int64   `json:"sent"`
	Completed  int64   `json:"completed"`
	Lost       int64   `json:"lost"`
	Mismatched int64   `json:"mismatched"`
	RunTime    float64 `json:"run_time_s"`
	QPS        float64 `json:"qps"`
}

func main() {
	target := flag.String("target", "", "server address host:port (required)")
	dur := flag.Duration("l", 4*time.Second, "how long to send")
	sockets := flag.Int("sockets", 4, "client sockets (source ports)")
	window := flag.Int("window", 64, "queries kept in flight per socket")
	batch := flag.Int("batch", 32, "queries per sendmmsg and answers per recvmmsg, at most")
	names := flag.Int("set-size", 1000, "names in the set: q0.<zone> … q<N-1>.<zone>")
	zone := flag.String("zone", "bench.", "zone the names are under")
	timeout := flag.Duration("timeout", 500*time.Millisecond, "a query without an answer this long is lost")
	flag.Parse()
	if *target == "" || *sockets < 1 || *window < 1 || *batch < 1 || *names < 1 {
		fmt.Fprintln(os.Stderr, "dnsload: -target is required; -sockets, -window, -batch and -set-size must be positive")
		os.Exit(2)
	}
	addr, err := netip.ParseAddrPort(*target)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnsload: -target %q: %v\n", *target, err)
		os.Exit(2)
	}
	queries := make([][]byte, *names)
	for i := range queries {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("q%d.%s", i, dns.Fqdn(*zone)), dns.TypeA)
		if queries[i], err = m.Pack(); err != nil {
			fmt.Fprintf(os.Stderr, "dnsload: pack query: %v\n", err)
			os.Exit(2)
		}
	}
	loaders := make([]*loader, *sockets)
	for i := range loaders {
		l, err := newLoader(addr, queries, *window, *batch, *timeout, i)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dnsload: %v\n", err)
			os.Exit(1)
		}
		loaders[i] = l
	}
	start := time.Now()
	end := start.Add(*dur)
	var wg sync.WaitGroup
	for _, l := range loaders {
		wg.Go(func() { l.run(end) })
	}
	wg.Wait()
	var r result
	for _, l := range loaders {
		if l.err != nil {
			fmt.Fprintf(os.Stderr, "dnsload: %v\n", l.err)
			os.Exit(1)
		}
		r.Sent += l.sent
		r.Completed += l.completed
		r.Lost += l.lost
		r.Mismatched += l.mismatched
	}
	r.RunTime = dur.Seconds()
	r.QPS = float64(r.Completed) / r.RunTime
	json.NewEncoder(os.Stdout).Encode(r) //nolint:errcheck // stdout
}

// loader is one socket's sender and reader, run by one goroutine.
type loader struct {
	rc      syscall.RawConn
	f       *os.File
	queries [][]byte
	window  int
	batch   int
	timeout time.Duration

	next    int                // the next name to ask
	id      uint16             // the next ID to try
	sentAt  [1 << 16]time.Time // by ID: when the query in flight went out (zero: none)
	name    [1 << 16]int32     // by ID: the name asked
	flying  int
	sendBuf [][]byte
	shdr    []unix.Mmsghdr
	siov    []unix.Iovec
	rhdr    []unix.Mmsghdr
	riov    []unix.Iovec
	rbufs   [][]byte

	sent, completed, lost, mismatched int64
	err                               error
}

func newLoader(addr netip.AddrPort, queries [][]byte, window, batch int, timeout time.Duration, seed int) (*loader, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().Unmap().As4()}
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	// Room for every socket's window of answers arriving at once.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20) //nolint:errcheck // best effort
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	f := os.NewFile(uintptr(fd), "udp")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	l := &loader{rc: rc, f: f, queries: queries, window: window, batch: batch, timeout: timeout,
		next: seed * len(queries) / 7 % len(queries), id: uint16(seed * 8191)}
	l.sendBuf = make([][]byte, batch)
	l.shdr, l.siov = make([]unix.Mmsghdr, batch), make([]unix.Iovec, batch)
	l.rhdr, l.riov, l.rbufs = make([]unix.Mmsghdr, batch), make([]unix.Iovec, batch), make([][]byte, batch)
	for i := range batch {
		l.sendBuf[i] = make([]byte, 0, 512)
		l.shdr[i].Hdr.Iov = &l.siov[i]
		l.shdr[i].Hdr.SetIovlen(1)
		l.rbufs[i] = make([]byte, 4096)
		l.riov[i].Base = &l.rbufs[i][0]
		l.riov[i].SetLen(len(l.rbufs[i]))
		l.rhdr[i].Hdr.Iov = &l.riov[i]
		l.rhdr[i].Hdr.SetIovlen(1)
	}
	return l, nil
}

// run keeps the window full until end, then reads what is still in flight
// (not counted: only answers inside the run are) and closes the socket.
func (l *loader) run(end time.Time) {
	defer l.f.Close()
	lastSweep := time.Now()
	for {
		now := time.Now()
		if !now.Before(end) {
			return
		}
		if now.Sub(lastSweep) >= l.timeout/4 {
			l.sweep(now)
			lastSweep = now
		}
		if err := l.fill(now); err != nil {
			l.err = err
			return
		}
		// wake for the next sweep at the latest: a server that stops
		// answering loses the window's queries, then gets new ones
		wake := lastSweep.Add(l.timeout / 4)
		if end.Before(wake) {
			wake = end
		}
		if err := l.read(wake); err != nil {
			l.err = err
			return
		}
	}
}

// fill sends queries until the window is full, a batch per sendmmsg.
func (l *loader) fill(now time.Time) error {
	for l.flying < l.window {
		n := min(l.window-l.flying, l.batch)
		for i := range n {
			id := l.freeID()
			q := append(l.sendBuf[i][:0], l.queries[l.next]...)
			binary.BigEndian.PutUint16(q, id)
			l.sendBuf[i] = q
			l.sentAt[id], l.name[id] = now, int32(l.next)
			l.next = (l.next + 1) % len(l.queries)
			l.siov[i].Base = &q[0]
			l.siov[i].SetLen(len(q))
		}
		sent := 0
		var serr error
		err := l.rc.Write(func(fd uintptr) bool {
			for sent < n {
				r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&l.shdr[sent])), uintptr(n-sent), unix.MSG_DONTWAIT, 0, 0)
				switch e {
				case 0:
					sent += int(r)
				case unix.EAGAIN:
					return false
				case unix.EINTR:
				default:
					serr = e
					return true
				}
			}
			return true
		})
		if err == nil {
			err = serr
		}
		if err != nil && !errors.Is(err, unix.ECONNREFUSED) {
			return fmt.Errorf("sendmmsg: %w", err)
		}
		// Queries the kernel did not take are not in flight.
		for i := sent; i < n; i++ {
			l.sentAt[binary.BigEndian.Uint16(l.sendBuf[i])] = time.Time{}
		}
		l.sent += int64(sent)
		l.flying += sent
		if sent < n {
			return nil
		}
	}
	return nil
}

// freeID is the next ID with no query in flight.
func (l *loader) freeID() uint16 {
	for !l.sentAt[l.id].IsZero() {
		l.id++
	}
	id := l.id
	l.id++
	return id
}

// read takes one batch of answers, waiting in the poller (at most until
// wake) when none is there.
func (l *loader) read(wake time.Time) error {
	for i := range l.batch {
		l.rhdr[i].Len = 0
	}
	n := 0
	var rerr error
	l.f.SetReadDeadline(wake)
	err := l.rc.Read(func(fd uintptr) bool {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&l.rhdr[0])), uintptr(l.batch), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			n = int(r)
			return true
		case unix.EAGAIN, unix.EINTR:
			return false
		case unix.ECONNREFUSED:
			return true // the server is not there (yet): the queries are lost
		default:
			rerr = e
			return true
		}
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	if err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("recvmmsg: %w", err)
	}
	for i := range n {
		b := l.rbufs[i][:l.rhdr[i].Len]
		if len(b) < 12 {
			l.mismatched++
			continue
		}
		id := binary.BigEndian.Uint16(b)
		if l.sentAt[id].IsZero() || b[2]&0x80 == 0 || b[3]&0x0f != dns.RcodeSuccess || !sameQuestion(b, l.queries[l.name[id]]) {
			l.mismatched++
			continue
		}
		l.sentAt[id] = time.Time{}
		l.flying--
		l.completed++
	}
	return nil
}

// sameQuestion reports whether answer a carries query q's question: QDCOUNT
// 1 and the same bytes after the header (the servers echo it as asked).
func sameQuestion(a, q []byte) bool {
	return len(a) >= len(q) && a[4] == 0 && a[5] == 1 && bytes.Equal(a[12:len(q)], q[12:])
}

// sweep counts the queries that waited longer than the timeout as lost and
// frees their IDs.
func (l *loader) sweep(now time.Time) {
	for id := range l.sentAt {
		if t := l.sentAt[id]; !t.IsZero() && now.Sub(t) > l.timeout {
			l.sentAt[id] = time.Time{}
			l.flying--
			l.lost++
		}
	}
}
