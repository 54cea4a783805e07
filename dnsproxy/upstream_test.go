package dnsproxy

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// rawUDP runs a hand-written UDP responder on loopback: respond gets every
// query and writes whatever it wants back with send.
func rawUDP(t *testing.T, respond func(q *dns.Msg, send func([]byte))) string {
	t.Helper()
	return rawUDPFrom(t, func(q *dns.Msg, _ *net.UDPAddr, send func([]byte)) { respond(q, send) })
}

// rawUDPFrom is rawUDP with the query's source address.
func rawUDPFrom(t *testing.T, respond func(q *dns.Msg, from *net.UDPAddr, send func([]byte))) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			respond(q, from.(*net.UDPAddr), func(b []byte) { pc.WriteTo(b, from) })
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	return pc.LocalAddr().String()
}

func pack(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFailover injects one fault into the first upstream of a group and
// checks that the second upstream of the same group answers, and that the
// other group's server never sees the query.
func TestFailover(t *testing.T) {
	good := func(t *testing.T) *fakeServer { return startFake(t, answerA("10.30.0.54", 60)) }
	faults := map[string]func(t *testing.T) string{
		"down": closedPort,
		"slow": func(t *testing.T) string {
			return startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
				time.Sleep(500 * time.Millisecond)
				answerA("192.0.2.99", 60)(w, r)
			}).addr
		},
		"servfail": func(t *testing.T) string {
			return startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
				m := new(dns.Msg)
				m.SetRcode(r, dns.RcodeServerFailure)
				w.WriteMsg(m)
			}).addr
		},
		"garbage": func(t *testing.T) string {
			return rawUDP(t, func(q *dns.Msg, send func([]byte)) {
				send([]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3})
			})
		},
	}
	for name, fault := range faults {
		t.Run(name, func(t *testing.T) {
			bad := fault(t)
			g := good(t)
			other := startFake(t, answerA("198.51.100.1", 60))
			cfg := testConfig(other.addr)
			cfg.UpstreamTimeout = 250 * time.Millisecond
			cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(bad, g.addr)}}
			p, _ := startProxy(t, cfg, Options{})
			start := time.Now()
			r := ask(t, p, "udp", "app.corp.example.", dns.TypeA, 1232)
			if got := firstA(t, r); got != "10.30.0.54" {
				t.Errorf("answer %s, want 10.30.0.54 from the second upstream", got)
			}
			if d := time.Since(start); d > DefaultDeadline {
				t.Errorf("failover took %v", d)
			}
			if n := other.total.Load(); n != 0 {
				t.Errorf("other group's server received %d queries", n)
			}
		})
	}
}

// TestMismatchedAnswersDropped: answers with the wrong ID or question are
// ignored and the matching one that follows is used.
func TestMismatchedAnswersDropped(t *testing.T) {
	addr := rawUDP(t, func(q *dns.Msg, send func([]byte)) {
		wrongID := new(dns.Msg)
		wrongID.SetReply(q)
		wrongID.Id = q.Id + 1
		wrongID.Answer = []dns.RR{mustRR("%s 60 IN A 192.0.2.66", q.Question[0].Name)}
		send(pack(t, wrongID))
		wrongQ := new(dns.Msg)
		wrongQ.SetReply(q)
		wrongQ.Question[0].Name = "evil.example."
		wrongQ.Answer = []dns.RR{mustRR("evil.example. 60 IN A 192.0.2.67")}
		send(pack(t, wrongQ))
		right := new(dns.Msg)
		right.SetReply(q)
		right.Answer = []dns.RR{mustRR("%s 60 IN A 10.30.0.53", q.Question[0].Name)}
		send(pack(t, right))
	})
	p, _ := startProxy(t, testConfig(addr), Options{})
	r := ask(t, p, "udp", "www.example.com.", dns.TypeA, 0)
	if got := firstA(t, r); got != "10.30.0.53" {
		t.Fatalf("answer %s, want 10.30.0.53", got)
	}
}

// TestTruncatedRetriedOverTCP: a TC answer over UDP is retried over TCP.
func TestTruncatedRetriedOverTCP(t *testing.T) {
	up := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if w.LocalAddr().Network() == "udp" {
			m.Truncated = true
		} else {
			m.Answer = []dns.RR{mustRR("%s 60 IN A 10.30.0.53", r.Question[0].Name)}
		}
		w.WriteMsg(m)
	})
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	r := ask(t, p, "udp", "big.example.", dns.TypeA, 1232)
	if r.Truncated || firstA(t, r) != "10.30.0.53" {
		t.Fatalf("answer %v", r)
	}
	if n := up.count("big.example."); n != 2 {
		t.Errorf("upstream saw %d queries, want 2 (udp, then tcp)", n)
	}
}

// TestAllDown: a group whose upstreams are all down or slow answers SERVFAIL
// with an EDE naming the group within the deadline, and never asks the
// default group.
func TestAllDown(t *testing.T) {
	slow := startFake(t, func(w dns.ResponseWriter, r *dns.Msg) {
		time.Sleep(1500 * time.Millisecond)
	})
	other := startFake(t, answerA("198.51.100.1", 60))
	cfg := testConfig(other.addr)
	cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(closedPort(t), slow.addr, "tcp://"+closedPort(t))}}
	p, _ := startProxy(t, cfg, Options{})
	for _, network := range []string{"udp", "tcp"} {
		start := time.Now()
		r := ask(t, p, network, "app.corp.example.", dns.TypeA, 1232)
		d := time.Since(start)
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s: rcode %s, want SERVFAIL", network, dns.RcodeToString[r.Rcode])
		}
		if d >= 2*time.Second {
			t.Errorf("%s: SERVFAIL after %v, want < 2s", network, d)
		}
		e := ede(r)
		if e == nil || (e.InfoCode != dns.ExtendedErrorCodeNoReachableAuthority && e.InfoCode != dns.ExtendedErrorCodeNetworkError) {
			t.Errorf("%s: EDE %v, want 22 or 23", network, e)
		} else if want := `"corp.example"`; !strings.Contains(e.ExtraText, want) {
			t.Errorf("%s: EDE text %q does not name group %s", network, e.ExtraText, want)
		}
	}
	if n := other.total.Load(); n != 0 {
		t.Errorf("default group's server received %d queries", n)
	}
	// All down by network errors only: EDE 23, and fast.
	cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(closedPort(t))}}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := ask(t, p, "udp", "app2.corp.example.", dns.TypeA, 1232)
	if e := ede(r); r.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeNetworkError {
		t.Errorf("closed port only: %v", r)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("closed port only took %v", d)
	}
}

// TestQueryIDs: upstream queries carry fresh random IDs, not the client's.
func TestQueryIDs(t *testing.T) {
	up := startFake(t, answerA("10.30.0.53", 0))
	cfg := testConfig(up.addr)
	p, _ := startProxy(t, cfg, Options{})
	for i := range 8 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.example.", i), dns.TypeA)
		m.Id = 4242
		askMsg(t, p, "udp", m)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	seen := map[uint16]bool{}
	for _, id := range up.ids {
		if id == 4242 {
			t.Errorf("client ID forwarded upstream")
		}
		seen[id] = true
	}
	if len(seen) < 7 {
		t.Errorf("upstream IDs not random: %v", up.ids)
	}
}

// TestUpstreamSourcePorts: upstream queries leave from random ports that
// each carry at most spareMaxUses queries, so a stream of misses is spread
// over many ports and no port serves for long (see spareSockets).
func TestUpstreamSourcePorts(t *testing.T) {
	addr, ports := portCountingUpstream(t)
	p, _ := startProxy(t, testConfig(addr), Options{})
	const n = 3*spareMaxUses + 10 // at least four ports
	for i := range n {
		if r := ask(t, p, "udp", fmt.Sprintf("port%d.example.", i), dns.TypeA, 0); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("query %d: %s", i, dns.RcodeToString[r.Rcode])
		}
	}
	if got := ports(); len(got) < n/spareMaxUses {
		t.Errorf("%d upstream queries came from only %d source ports: %v", n, len(got), got)
	}
}

// portCountingUpstream is an upstream answering every query with an A
// record, and a function returning how many queries came from each
// source port so far, which fails the test for a port that carried more
// than spareMaxUses.
func portCountingUpstream(t *testing.T) (string, func() map[int]int) {
	var mu sync.Mutex
	ports := map[int]int{}
	addr := rawUDPFrom(t, func(q *dns.Msg, from *net.UDPAddr, send func([]byte)) {
		mu.Lock()
		ports[from.Port]++
		mu.Unlock()
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, mustRR("%s 60 IN A 192.0.2.7", q.Question[0].Name))
		b, _ := r.Pack()
		send(b)
	})
	return addr, func() map[int]int {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		for port, k := range ports {
			if k > spareMaxUses {
				t.Errorf("source port %d carried %d queries, want at most %d", port, k, spareMaxUses)
			}
		}
		return maps.Clone(ports)
	}
}

// TestUpstreamPortRetiredAfterForgery: a socket that received an answer
// not matching its query (a forgery aimed at its port, or garbage) is
// closed after its try, so its port never carries another query.
func TestUpstreamPortRetiredAfterForgery(t *testing.T) {
	var mu sync.Mutex
	var order []int         // source port of each query, in arrival order
	forged := map[int]int{} // port -> index in order of its forged query
	addr := rawUDPFrom(t, func(q *dns.Msg, from *net.UDPAddr, send func([]byte)) {
		mu.Lock()
		order = append(order, from.Port)
		mu.Unlock()
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, mustRR("%s 60 IN A 192.0.2.7", q.Question[0].Name))
		if strings.HasPrefix(q.Question[0].Name, "forged") {
			mu.Lock()
			forged[from.Port] = len(order) - 1
			mu.Unlock()
			bad := r.Copy()
			bad.Id = q.Id + 1
			b, _ := bad.Pack()
			send(b)
		}
		b, _ := r.Pack()
		send(b)
	})
	p, _ := startProxy(t, testConfig(addr), Options{})
	for i := range 40 {
		name := fmt.Sprintf("plain%d.example.", i)
		if i%10 == 3 {
			name = fmt.Sprintf("forged%d.example.", i)
		}
		r := ask(t, p, "udp", name, dns.TypeA, 0)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("query %s: %v", name, r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	reused := 0
	for i, port := range order {
		if at, ok := forged[port]; ok && i > at {
			t.Errorf("port %d got a forged answer at query %d yet carried query %d", port, at, i)
		}
		if i > 0 && slices.Contains(order[:i], port) {
			reused++
		}
	}
	if reused == 0 {
		t.Errorf("no port carried two queries: %v", order) // the pool is not reusing answered sockets
	}
	if len(forged) != 4 {
		t.Errorf("%d ports saw forged answers, want 4", len(forged))
	}
}
