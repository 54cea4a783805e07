package peers

import (
	"net/netip"
	"testing"
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
