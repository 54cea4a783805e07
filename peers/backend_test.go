package peers

import (
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// retryingBackend runs every Update's fn twice on fresh states and keeps
// only the second run, as a fleet backend does after losing a race.
type retryingBackend struct {
	Backend
	runs int
}

func (b *retryingBackend) Update(fn func(*State) error) error {
	st, err := b.Backend.Load()
	if err != nil {
		return err
	}
	b.runs++
	if err := fn(&st); err != nil {
		return err
	}
	return b.Backend.Update(func(st *State) error {
		b.runs++
		return fn(st)
	})
}

func TestStoreMutationsSurviveARetry(t *testing.T) {
	be := &retryingBackend{Backend: newFileStore(t.TempDir())}
	s := NewStore(be)
	added, err := s.AddMany([]AddRequest{{User: "alice"}, {User: "bob"}}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	if be.runs != 2 {
		t.Fatalf("fn ran %d times, want 2", be.runs)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || len(added) != 2 {
		t.Fatalf("after a retried add: stored %d peers, reported %d, want 2 and 2", len(list), len(added))
	}
	seen := map[netip.Addr]bool{}
	for i, p := range list {
		if p.PublicKey != added[i].PublicKey || p.IPv4 != added[i].IPv4 {
			t.Errorf("reported %s %s, stored %s %s: the report is from a discarded run", added[i].PublicKey, added[i].IPv4, p.PublicKey, p.IPv4)
		}
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if seen[a] {
				t.Errorf("address %s given twice", a)
			}
			seen[a] = true
		}
	}
	if removed, err := s.RemoveMatching("alice", ""); err != nil || len(removed) != 1 {
		t.Fatalf("RemoveMatching after retry = %v, %v", removed, err)
	}
	if q, err := s.Quarantined(); err != nil || len(q) != 2 {
		t.Errorf("quarantine after a retried remove = %v, %v; want alice's two addresses once", q, err)
	}
}

func TestAllocatorSpreadStaysInPoolAndUnique(t *testing.T) {
	al, err := newAllocator(testPool())
	if err != nil {
		t.Fatal(err)
	}
	al.spread(10)
	seen := map[netip.Addr]bool{}
	for range 100 {
		v4, v6, err := al.take()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{v4, v6} {
			if seen[a] || !testPool().Contains(a) {
				t.Fatalf("spread allocation gave %s (seen before: %v)", a, seen[a])
			}
			seen[a] = true
		}
	}
}

func TestCheckStateFindsWhatReadingWould(t *testing.T) {
	s := openTestStore(t)
	if _, err := s.AddMany([]AddRequest{{User: "alice"}, {User: "bob"}}, testPool()); err != nil {
		t.Fatal(err)
	}
	good, err := s.loadState()
	if err != nil {
		t.Fatal(err)
	}
	if r := CheckState(good); r != "" {
		t.Fatalf("CheckState(valid) = %q", r)
	}
	for name, damage := range map[string]func(st *State){
		"same address":    func(st *State) { st.Peers[1].IPv6 = st.Peers[0].IPv6 },
		"same public key": func(st *State) { st.Peers[1].PublicKey = st.Peers[0].PublicKey },
		"same name":       func(st *State) { st.Peers[1].User = st.Peers[0].User },
		"bad user":        func(st *State) { st.Peers[0].User = "a b" },
		"no address":      func(st *State) { st.Peers[0].IPv4, st.Peers[0].IPv6 = netip.Addr{}, netip.Addr{} },
		"v6 as v4":        func(st *State) { st.Peers[0].IPv4 = st.Peers[0].IPv6 },
	} {
		st := State{Peers: append([]Peer(nil), good.Peers...)}
		damage(&st)
		reason := CheckState(st)
		data, err := encodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		_, readReason := decodeState(data)
		if reason == "" || readReason == "" {
			t.Errorf("%s: CheckState %q, reading the file %q: both must refuse", name, reason, readReason)
		}
	}
}

func TestSamePeerCoversEveryField(t *testing.T) {
	// A field added to Peer must be compared by SamePeer (the etcd backend
	// skips writing peers it finds the same) and stored by MarshalPeer.
	if n := reflect.TypeOf(Peer{}).NumField(); n != 11 {
		t.Fatalf("Peer has %d fields: update SamePeer, recordOf and this count", n)
	}
	s := openTestStore(t)
	p, err := s.Add(AddRequest{User: "alice"}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	data, err := MarshalPeer(p)
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalPeer(data)
	if err != nil || !SamePeer(p, back) {
		t.Fatalf("MarshalPeer/UnmarshalPeer round trip: %+v, %v", back, err)
	}
	other := *p.PresharedKey
	other[0] ^= 1
	for name, change := range map[string]func(q *Peer){
		"device": func(q *Peer) { q.Device = "phone" }, "group": func(q *Peer) { q.Group = "g" },
		"disabled": func(q *Peer) { q.Disabled = true }, "expires": func(q *Peer) { q.Expires = q.Created.Add(time.Hour) },
		"psk": func(q *Peer) { q.PresharedKey = &other }, "private key": func(q *Peer) { q.PrivateKey = nil },
		"ipv6": func(q *Peer) { q.IPv6 = netip.MustParseAddr("fd20::99") },
	} {
		q := p
		change(&q)
		if SamePeer(p, q) {
			t.Errorf("SamePeer misses a change of %s", name)
		}
	}
}
