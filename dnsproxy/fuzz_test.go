package dnsproxy

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// FuzzRequest feeds raw UDP payloads to the packet handler: the fast path
// and, when it defers, the slow path against a real fake upstream. Whatever
// the input, the proxy must not panic, must never answer a response, and
// any answer must carry the query's ID, have QR set, be well-formed and fit
// the client's UDP buffer.
func FuzzRequest(f *testing.F) {
	up := startFakeTB(f, answerA("10.30.0.53", 300))
	cfg := testConfig(up)
	cfg.UpstreamTimeout = 200 * time.Millisecond
	cfg.Deadline = 300 * time.Millisecond
	cfg.Zones = []Zone{{Name: "corp.example", Upstreams: MustParseUpstreams(up)}}
	p, err := New(cfg, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Close() })
	for _, s := range []string{"www.example.com.", "x.corp.example."} {
		m := new(dns.Msg)
		m.SetQuestion(s, dns.TypeA)
		wire, _ := m.Pack()
		f.Add(wire)
	}
	src := netip.MustParseAddrPort("127.0.0.1:53000")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		ls := newLoopState(0)
		resp, slow := p.handlePacket(ls, pkt, src)
		fast := resp != nil
		if slow {
			if resp != nil {
				t.Fatal("both an answer and slow")
			}
			resp = p.slowPacket(t.Context(), append([]byte(nil), pkt...), src, 0)
		}
		if resp == nil {
			return
		}
		if len(pkt) < headerLen {
			t.Fatalf("answered a %d-byte packet", len(pkt))
		}
		if pkt[2]&0x80 != 0 {
			t.Fatalf("answered a response")
		}
		if binary.BigEndian.Uint16(resp) != binary.BigEndian.Uint16(pkt) || resp[2]&0x80 == 0 {
			t.Fatalf("answer header %x for query header %x", resp[:4], pkt[:4])
		}
		r := new(dns.Msg)
		if err := r.Unpack(resp); err != nil {
			t.Fatalf("answer (fast=%v) does not unpack: %v\n%x", fast, err, resp)
		}
		req := new(dns.Msg)
		if req.Unpack(pkt) != nil {
			return
		}
		size := minEDNSBufferSize
		if opt := req.IsEdns0(); opt != nil {
			size = maxUDPSize(true, opt.UDPSize(), cfg.EDNSBufferSize)
		}
		if len(resp) > size && len(r.Question) <= 1 {
			t.Fatalf("answer of %d bytes for a client buffer of %d", len(resp), size)
		}
		if fast && (len(r.Question) != 1 || r.Question[0].Name != req.Question[0].Name) {
			t.Fatalf("fast path question %v, query %v", r.Question, req.Question)
		}
	})
}
