package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore/etcdtest"
)

func testPool() peers.Pool {
	return peers.Pool{
		V4:       netip.MustParsePrefix("10.20.0.0/24"),
		V6:       netip.MustParsePrefix("fd20::/64"),
		Reserved: []netip.Addr{netip.MustParseAddr("10.20.0.1"), netip.MustParseAddr("fd20::1"), netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("fd20::53")},
	}
}

func openStore(t *testing.T, cfg Config) (*peers.Store, *Backend) {
	t.Helper()
	be, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return peers.NewStore(be), be
}

// Two gateways (two clients, two stores) add 20 devices each at the same
// time: every add commits, and names, keys and addresses are unique
// fleet-wide. Repeated on fresh prefixes so that a lucky interleaving does
// not pass by chance.
func TestConcurrentAddsOnTwoStoresAreUnique(t *testing.T) {
	srv := etcdtest.Start(t)
	const perStore, rounds = 20, 3
	for round := range rounds {
		prefix := fmt.Sprintf("/t%d/", round)
		a, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}, Prefix: prefix})
		b, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}, Prefix: prefix})
		var wg sync.WaitGroup
		errs := make(chan error, 2*perStore)
		for i := range perStore {
			for gw, s := range map[string]*peers.Store{"a": a, "b": b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := s.Add(peers.AddRequest{User: fmt.Sprintf("u%s%d", gw, i)}, testPool())
					errs <- err
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: concurrent add: %v", round, err)
			}
		}
		list, err := a.List()
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2*perStore {
			t.Fatalf("round %d: %d peers after %d concurrent adds", round, len(list), 2*perStore)
		}
		v4, v6 := map[netip.Addr]string{}, map[netip.Addr]string{}
		for _, p := range list {
			if o, dup := v4[p.IPv4]; dup || !p.IPv4.IsValid() {
				t.Errorf("round %d: %s and %s share v4 %s", round, o, p.ID(), p.IPv4)
			}
			if o, dup := v6[p.IPv6]; dup || !p.IPv6.IsValid() {
				t.Errorf("round %d: %s and %s share v6 %s", round, o, p.ID(), p.IPv6)
			}
			v4[p.IPv4], v6[p.IPv6] = p.ID(), p.ID()
		}
		// The uniqueness keys match the peers exactly.
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}})
		if err != nil {
			t.Fatal(err)
		}
		for sub, want := range map[string]int{"peers/": 40, "addrs/": 80, "keys/": 40} {
			resp, err := cli.Get(context.Background(), prefix+sub, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			if resp.Count != int64(want) {
				t.Errorf("round %d: %d keys under %s, want %d", round, resp.Count, sub, want)
			}
		}
		cli.Close()
	}
}

// The registry's logic runs unchanged on etcd: duplicate names and keys
// are refused, removal quarantines the addresses, rename keeps them.
func TestRegistryOperationsOnEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	s, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}})
	alice, err := s.Add(peers.AddRequest{User: "alice"}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add(peers.AddRequest{User: "alice"}, testPool()); !errors.Is(err, peers.ErrExists) {
		t.Errorf("second alice = %v, want ErrExists", err)
	}
	pub := alice.PublicKey
	if _, err := s.Add(peers.AddRequest{User: "mallory", PublicKey: &pub}, testPool()); !errors.Is(err, peers.ErrExists) {
		t.Errorf("add with alice's key = %v, want ErrExists", err)
	}
	if _, err := s.Remove("alice", ""); err != nil {
		t.Fatal(err)
	}
	q, err := s.Quarantined()
	if err != nil || len(q) != 2 {
		t.Fatalf("quarantine after remove = %v, %v", q, err)
	}
	bob, err := s.Add(peers.AddRequest{User: "bob"}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	if bob.IPv4 == alice.IPv4 || bob.IPv6 == alice.IPv6 {
		t.Errorf("bob got alice's quarantined address %s/%s", bob.IPv4, bob.IPv6)
	}
	if _, err := s.Rename("bob", "", "carol", ""); err != nil {
		t.Fatal(err)
	}
	c, err := s.Get("carol", "")
	if err != nil || c.IPv4 != bob.IPv4 || c.PublicKey != bob.PublicKey {
		t.Errorf("carol = %+v, %v; want bob's key and address", c, err)
	}
	if _, err := s.Get("bob", ""); !errors.Is(err, peers.ErrNotFound) {
		t.Errorf("bob after rename = %v", err)
	}
	if _, err := s.SetDisabled("carol", "", true); err != nil {
		t.Fatal(err)
	}
	if act, _, err := s.Active(time.Now()); err != nil || len(act) != 0 {
		t.Errorf("active after disable = %v, %v", act, err)
	}
}

// A follower sees another writer's change through its watch and writes it
// to its snapshot; a follower started while the cluster is unreachable
// serves the snapshot and refuses changes with an error naming the store.
func TestFollowerWatchSnapshotAndOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	snap := filepath.Join(t.TempDir(), "fleet-snapshot.json")
	_, fb := openStore(t, Config{Endpoints: []string{srv.Endpoint}, Snapshot: snap})
	ctx, cancel := context.WithCancel(context.Background())
	if err := fb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { fb.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	follower := peers.NewStore(fb)

	writer, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}})
	p, err := writer.Add(peers.AddRequest{User: "dave"}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		if got, err := follower.Get("dave", ""); err == nil && got.PublicKey == p.PublicKey {
			break
		}
		select {
		case <-fb.Changed():
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("follower did not see dave within 20s")
		}
	}
	st, err := peers.ReadStateFile(snap)
	if err != nil || len(st.Peers) != 1 || st.Peers[0].ID() != "dave/default" {
		t.Fatalf("snapshot = %+v, %v", st, err)
	}
	if h := fb.Health(); !h.Online || h.Peers != 1 {
		t.Errorf("health = %+v", h)
	}

	// A gateway whose cluster is unreachable (nothing listens there)
	// comes up from the snapshot.
	dead := "http://127.0.0.1:1"
	off, err := Open(Config{Endpoints: []string{dead}, Snapshot: snap, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	if err := off.Start(context.Background()); err != nil {
		t.Fatalf("start from snapshot: %v", err)
	}
	os := peers.NewStore(off)
	if got, err := os.Get("dave", ""); err != nil || got.PublicKey != p.PublicKey {
		t.Errorf("dave from the snapshot = %v, %v", got, err)
	}
	_, err = os.Add(peers.AddRequest{User: "erin"}, testPool())
	if !errors.Is(err, peers.ErrUnavailable) || !strings.Contains(err.Error(), dead) {
		t.Errorf("add while unreachable = %v, want ErrUnavailable naming %s", err, dead)
	}
	if h := off.Health(); h.Online || !h.FromSnapshot {
		t.Errorf("health while unreachable = %+v", h)
	}
	// Without a snapshot there is nothing to serve.
	none, err := Open(Config{Endpoints: []string{dead}, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer none.Close()
	if err := none.Start(context.Background()); !errors.Is(err, ErrNoState) {
		t.Errorf("start without cluster or snapshot = %v, want ErrNoState", err)
	}
}

// Pruning the quarantine never makes a change too large for one
// transaction: after many removals have served their quarantine, the next
// changes still commit and delete the expired entries a few at a time.
func TestExpiredQuarantineIsPrunedWithinTxnLimit(t *testing.T) {
	srv := etcdtest.Start(t)
	s, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}, MaxTxnOps: 8})
	// Long enough that the first removal's entries are still in
	// quarantine when the sixth is counted, also on a slow machine under
	// the race detector (CI once took over a second for the twelve changes
	// and counted 8).
	const quarantine = 3 * time.Second
	s.SetAddressQuarantine(quarantine)
	for i := range 6 {
		if _, err := s.Add(peers.AddRequest{User: fmt.Sprintf("p%d", i)}, testPool()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		if _, err := s.Remove(fmt.Sprintf("p%d", i), ""); err != nil {
			t.Fatal(err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	count := func() int64 {
		resp, err := cli.Get(context.Background(), DefaultPrefix+"released/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if n := count(); n != 12 {
		t.Fatalf("%d quarantine entries after removing 6 peers, want 12", n)
	}
	time.Sleep(quarantine + 100*time.Millisecond)
	last := count()
	for i := range 6 {
		if _, err := s.Add(peers.AddRequest{User: fmt.Sprintf("q%d", i)}, testPool()); err != nil {
			t.Fatalf("add after the quarantine expired: %v", err)
		}
		n := count()
		if n > last {
			t.Fatalf("quarantine entries grew from %d to %d", last, n)
		}
		last = n
	}
	if last != 0 {
		t.Errorf("%d expired quarantine entries left after 6 changes", last)
	}
}

// A writer decides on its view of the registry, which misses the other
// writers' changes since its last read: every such change it would
// contradict makes its transaction fail, and it reads again. Gateway b
// changes the registry behind gateway a's view each time before a adds: a
// still gets free addresses (not one b holds, nor one b has just put in
// quarantine), is refused a name b took, and may take a name b gave up.
func TestStaleViewStillAllocatesCorrectly(t *testing.T) {
	srv := etcdtest.Start(t)
	a, abe := openStore(t, Config{Endpoints: []string{srv.Endpoint}})
	b, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}})
	add := func(s *peers.Store, user string) peers.Peer {
		t.Helper()
		p, err := s.Add(peers.AddRequest{User: user}, testPool())
		if err != nil {
			t.Fatalf("add %s: %v", user, err)
		}
		return p
	}
	taken := map[netip.Addr]string{}
	own := func(p peers.Peer) {
		t.Helper()
		for _, addr := range []netip.Addr{p.IPv4, p.IPv6} {
			if o, dup := taken[addr]; dup {
				t.Errorf("%s got %s, which %s holds or held", p.ID(), addr, o)
			}
			taken[addr] = p.ID()
		}
	}
	own(add(a, "a0"))
	own(add(a, "gone"))
	if fetches, _, _ := abe.Stats(); fetches != 1 {
		t.Fatalf("a read the registry %d times for two adds, want once (its view serves the second)", fetches)
	}

	// b quarantines the lowest free address (as a sees it), then takes the
	// next: a's view offers the first, then the second.
	own(add(b, "b1"))
	if _, err := b.Remove("b1", ""); err != nil {
		t.Fatal(err)
	}
	own(add(b, "b0"))
	own(add(a, "a1"))
	own(add(b, "b2"))
	own(add(a, "a2"))

	// b adds and removes a peer a never saw; a then commits a change
	// that takes no address (its view stays stale) and adds: the
	// address a's view offers first is in b's quarantine.
	own(add(b, "b3"))
	if _, err := b.Remove("b3", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetDisabled("a0", "", true); err != nil {
		t.Fatal(err)
	}
	own(add(a, "a3"))

	add(b, "d")
	if _, err := a.Add(peers.AddRequest{User: "d"}, testPool()); !errors.Is(err, peers.ErrExists) {
		t.Errorf("add d on a after b added it = %v, want ErrExists", err)
	}
	if _, err := b.Remove("gone", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add(peers.AddRequest{User: "gone"}, testPool()); err != nil {
		t.Errorf("add gone on a after b removed it = %v", err)
	}
	list, err := b.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a0/default", "a1/default", "a2/default", "a3/default", "b0/default", "b2/default", "d/default", "gone/default"}
	var ids []string
	for _, p := range list {
		ids = append(ids, p.ID())
	}
	if strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Errorf("registry holds %v, want %v", ids, want)
	}
}

// A follower edits the state it serves event by event (no full sort per
// change): after adds, a rename, a removal and a change of a peer, its
// state is exactly what a fresh read of the cluster returns.
func TestFollowerStateMatchesFreshRead(t *testing.T) {
	srv := etcdtest.Start(t)
	writer, wbe := openStore(t, Config{Endpoints: []string{srv.Endpoint}})
	for _, u := range []string{"m", "c", "x", "a"} {
		if _, err := writer.Add(peers.AddRequest{User: u}, testPool()); err != nil {
			t.Fatal(err)
		}
	}
	_, fb := openStore(t, Config{Endpoints: []string{srv.Endpoint}})
	ctx, cancel := context.WithCancel(context.Background())
	if err := fb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { fb.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	for _, u := range []string{"b", "z", "d"} {
		if _, err := writer.Add(peers.AddRequest{User: u}, testPool()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := writer.Rename("m", "", "n", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Remove("c", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.SetDisabled("x", "", true); err != nil {
		t.Fatal(err)
	}
	last, err := writer.Add(peers.AddRequest{User: "last"}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for !holds(fb, last) {
		select {
		case <-fb.Changed():
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("follower did not see the last add within 20s")
		}
	}
	got, err := fb.Load()
	if err != nil {
		t.Fatal(err)
	}
	want, err := wbe.Load() // not following: a fresh read
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Peers) != len(want.Peers) || len(got.Released) != len(want.Released) {
		t.Fatalf("follower holds %d peers, %d released; a fresh read %d, %d", len(got.Peers), len(got.Released), len(want.Peers), len(want.Released))
	}
	for i := range want.Peers {
		if !peers.SamePeer(got.Peers[i], want.Peers[i]) {
			t.Errorf("peer %d: follower %s (disabled %v), fresh read %s (disabled %v)", i, got.Peers[i].ID(), got.Peers[i].Disabled, want.Peers[i].ID(), want.Peers[i].Disabled)
		}
	}
	for i := range want.Released {
		if got.Released[i].Addr != want.Released[i].Addr || got.Released[i].Peer != want.Released[i].Peer {
			t.Errorf("released %d: follower %+v, fresh read %+v", i, got.Released[i], want.Released[i])
		}
	}
}

// One change adding 25 peers (`sluice fleet import`'s chunk) fits etcd's
// default --max-txn-ops in both operations and compares, on a fresh read
// and on the writer's view.
func TestTwentyFivePeersFitOneTransaction(t *testing.T) {
	srv := etcdtest.Start(t)
	s, _ := openStore(t, Config{Endpoints: []string{srv.Endpoint}})
	for round := range 2 {
		var reqs []peers.AddRequest
		for i := range 25 {
			reqs = append(reqs, peers.AddRequest{User: fmt.Sprintf("r%du%d", round, i)})
		}
		if _, err := s.AddMany(reqs, testPool()); err != nil {
			t.Fatalf("round %d: add 25 peers in one change: %v", round, err)
		}
	}
	if list, err := s.List(); err != nil || len(list) != 50 {
		t.Fatalf("%d peers after two changes of 25: %v", len(list), err)
	}
}
