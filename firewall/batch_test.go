package firewall

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// recorder fakes the nftables netlink socket: it records every request,
// acknowledges batches and answers read requests with an empty dump.
type recorder struct {
	mu    sync.Mutex
	sends [][]netlink.Message
}

func (r *recorder) dial(req []netlink.Message) ([]netlink.Message, error) {
	if len(req) == 0 {
		return nil, nil
	}
	r.mu.Lock()
	r.sends = append(r.sends, append([]netlink.Message(nil), req...))
	r.mu.Unlock()
	var out []netlink.Message
	for _, m := range req {
		if m.Header.Flags&netlink.Dump != 0 {
			out = append(out, netlink.Message{
				Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: m.Header.Sequence, PID: m.Header.PID},
				Data:   []byte{0, 0, 0, 0},
			})
			continue
		}
		if m.Header.Flags&netlink.Acknowledge != 0 {
			out = append(out, netlink.Message{
				Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence, PID: m.Header.PID},
				Data:   []byte{0, 0, 0, 0},
			})
		}
	}
	return out, nil
}

func (r *recorder) batches() [][]netlink.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]netlink.Message
	for _, s := range r.sends {
		if len(s) > 0 && s[0].Header.Type == netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
			out = append(out, s)
		}
	}
	return out
}

func (r *recorder) writes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.sends {
		for _, m := range s {
			if m.Header.Flags&netlink.Dump == 0 {
				n++
			}
		}
	}
	return n
}

func fakeFirewall(t *testing.T) (*Firewall, *recorder) {
	t.Helper()
	f, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	f.dial = rec.dial
	f.cleanFlows = nil // never touch this host's conntrack
	t.Cleanup(func() { f.Close() })
	return f, rec
}

// tableAttr returns the table name every nf_tables message carries as
// attribute 1 (NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,
// SET_ELEM_LIST_TABLE,OBJ_TABLE}).
func tableAttr(t *testing.T, m netlink.Message) (string, byte) {
	t.Helper()
	if len(m.Data) < 4 {
		t.Fatalf("short message %v", m.Header)
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		if ad.Type() == 1 {
			return string(bytes.TrimRight(ad.Bytes(), "\x00")), m.Data[0]
		}
	}
	return "", m.Data[0]
}

func TestApplySendsOneBatch(t *testing.T) {
	f, rec := fakeFirewall(t)
	spec := testSpec("wg0")
	spec.Table = "sluicebytes"
	// Big enough to need several element messages; every other address so
	// that entries stay separate ranges.
	spec.DoHSet = append(spec.DoHSet, manyPrefixes(3000)...)
	if err := f.Apply(spec); err != nil {
		t.Fatal(err)
	}
	batches := rec.batches()
	if len(batches) != 1 {
		t.Fatalf("Apply sent %d batches, want exactly 1", len(batches))
	}
	b := batches[0]
	if got := rec.writes(); got != len(b) {
		t.Errorf("%d non-dump messages sent, but the batch has %d: something was written outside the batch", got, len(b))
	}
	if b[len(b)-1].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
		t.Fatalf("batch does not end with NFNL_MSG_BATCH_END")
	}
	types := map[int]int{}
	var order []int
	for _, m := range b[1 : len(b)-1] {
		if sub := int(m.Header.Type >> 8); sub != unix.NFNL_SUBSYS_NFTABLES {
			t.Fatalf("message of subsystem %d in the batch", sub)
		}
		typ := int(m.Header.Type & 0xff)
		types[typ]++
		order = append(order, typ)
		name, fam := tableAttr(t, m)
		if name != "sluicebytes" || fam != unix.NFPROTO_INET {
			t.Errorf("message type %d touches table %q family %d, want only inet sluicebytes", typ, name, fam)
		}
	}
	if len(order) < 3 || order[0] != unix.NFT_MSG_NEWTABLE || order[1] != unix.NFT_MSG_DELTABLE || order[2] != unix.NFT_MSG_NEWTABLE {
		t.Errorf("batch starts %v, want add, delete, add table", order[:min(3, len(order))])
	}
	if types[unix.NFT_MSG_DELTABLE] != 1 || types[unix.NFT_MSG_NEWTABLE] != 2 {
		t.Errorf("table messages: %d new, %d del", types[unix.NFT_MSG_NEWTABLE], types[unix.NFT_MSG_DELTABLE])
	}
	if got, want := types[unix.NFT_MSG_NEWRULE], f.desired.ruleCount(); got != want {
		t.Errorf("%d rules sent, want %d", got, want)
	}
	if got, want := types[unix.NFT_MSG_NEWOBJ], len(Reasons()); got != want {
		t.Errorf("%d counters sent, want %d", got, want)
	}
	if got := types[unix.NFT_MSG_NEWSETELEM]; got < 12 {
		t.Errorf("%d element messages for 6000 DoH entries, want them chunked (>= 12)", got)
	}
	for _, m := range b {
		if len(m.Data) > 0xffff {
			t.Errorf("message of %d bytes exceeds a netlink attribute", len(m.Data))
		}
	}
	// 17 verdict rules plus 24 per-peer accounting rules; the DoH entries
	// themselves must not add any.
	if f.desired.ruleCount() > 60 {
		t.Errorf("%d rules for 6000 DoH entries: entries must live in sets", f.desired.ruleCount())
	}
}

func TestRemoveAndCloseBatches(t *testing.T) {
	f, rec := fakeFirewall(t)
	spec := testSpec("wg0")
	if err := f.Apply(spec); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	batches := rec.batches()
	if len(batches) != 2 {
		t.Fatalf("apply + close sent %d batches, want 2", len(batches))
	}
	del := batches[1]
	var types []int
	for _, m := range del[1 : len(del)-1] {
		types = append(types, int(m.Header.Type&0xff))
		if name, _ := tableAttr(t, m); name != spec.Table {
			t.Errorf("close touched table %q", name)
		}
	}
	if len(types) != 2 || types[0] != unix.NFT_MSG_NEWTABLE || types[1] != unix.NFT_MSG_DELTABLE {
		t.Errorf("close batch = %v, want add+delete table", types)
	}
	if err := f.Apply(spec); err != ErrClosed {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
}

func TestKeepOnStop(t *testing.T) {
	f, rec := fakeFirewall(t)
	spec := testSpec("wg0")
	spec.KeepOnStop = true
	if err := f.Apply(spec); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.batches()); n != 1 {
		t.Errorf("KeepOnStop: %d batches, want only the apply", n)
	}
}

// manyPrefixes returns n IPv4 and n IPv6 non-adjacent host prefixes.
func manyPrefixes(n int) []netip.Prefix {
	out := make([]netip.Prefix, 0, 2*n)
	for i := range n {
		k := 2 * i
		out = append(out,
			netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(k>>16), byte(k >> 8), byte(k)}), 32),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 13: byte(k >> 16), 14: byte(k >> 8), 15: byte(k)}), 128))
	}
	return out
}
