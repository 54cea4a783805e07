// Package etcdstore keeps the peer registry of a fleet of sluice gateways
// in etcd: a peers.Backend whose changes are single transactions that make
// names, public keys and addresses unique across every gateway without a
// lock, a follower that keeps a gateway's copy current from a watch and on
// disk as a snapshot, and the fleet's membership under leases. It is the
// only package of sluice that imports the etcd client.
//
// Layout under the prefix (default /sluice/):
//
//	peers/<user>/<device>   one peer (the peers.json record, keys included)
//	addrs/<address>         user/device holding the address (v4 and v6)
//	keys/<public key, hex>  user/device holding the public key
//	released/<address>      an address of a removed peer in quarantine
//	gateways/<name>         a gateway's registration (last seen, kept)
//	alive/<name>            present while the gateway's lease lives
//
// A change runs the registry's mutation on the writer's view of the peers,
// released, addrs and keys subtrees (every key with its mod revision) and
// commits the difference in one transaction guarded by the mod revision of
// every key it touches (create revision 0 for a key it creates; a change
// taking an address also needs no released/ key written after its view).
// Two gateways taking
// the same address, key or name therefore cannot both commit: the loser
// reads the subtrees again in one revision and retries, a bounded number of
// times. The view is the last such read with the writer's own commits
// applied: it may miss other writers' changes, which is safe because a
// change to a key the mutation touches fails the guard, and a mutation that
// fails or changes nothing on the view runs again on a fresh read before
// its answer counts. So a writer reads the whole registry on its first
// change and after losing a race, not on every change.
package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/sluice-vpn/sluice/peers"
)

// Defaults.
const (
	// DefaultPrefix is the key prefix of the registry.
	DefaultPrefix = "/sluice/"
	// DefaultRequestTimeout bounds one etcd request.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultMaxAttempts bounds how often a change is retried after losing
	// a race with another writer.
	DefaultMaxAttempts = 64
	// DefaultMaxTxnOps is etcd's default --max-txn-ops: a change with more
	// operations than this is refused before it is sent.
	DefaultMaxTxnOps = 128
	// reconnectMaxDelay bounds the wait between two attempts to reach the
	// cluster again after it went away.
	reconnectMaxDelay = 2 * time.Second
	// probeInterval is how often a following backend checks that the
	// cluster has quorum.
	probeInterval = 2 * time.Second
	// probeTimeout bounds one probe; probeFailures in a row mark the
	// cluster unreachable.
	probeTimeout  = 3 * time.Second
	probeFailures = 2
	// resyncBackoffMax bounds the wait between two failed resyncs.
	resyncBackoffMax = 2 * time.Second
)

// Config says how to reach the cluster.
type Config struct {
	Endpoints []string
	// Prefix is the key prefix of the registry; DefaultPrefix when "".
	Prefix string
	// TLS, when set, is used for every connection (mTLS: see LoadTLS).
	TLS *tls.Config
	// RequestTimeout bounds one request; DefaultRequestTimeout when 0.
	RequestTimeout time.Duration
	// Snapshot, when set, is a file (peers.json format, mode 0600) that a
	// following backend rewrites after every change it applies and starts
	// from when the cluster is unreachable.
	Snapshot string
	// MaxTxnOps is the cluster's --max-txn-ops; DefaultMaxTxnOps when 0.
	MaxTxnOps int
	// Log receives the follower's state changes; slog.Default when nil.
	Log *slog.Logger
}

// LoadTLS builds the client TLS configuration from PEM files: caFile
// verifies the servers, certFile and keyFile (both or neither) are this
// client's certificate for mTLS. All empty returns nil (plain http).
func LoadTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("etcd client certificate: cert_file and key_file go together")
	}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load etcd client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

// Backend is the etcd peers.Backend. Without Start it reads the cluster on
// every Load (the CLI); after Start it serves Load and Version from its
// followed copy (the gateway), which keeps working while the cluster is
// unreachable. Update always goes to the cluster.
type Backend struct {
	cli       *clientv3.Client
	endpoints []string
	prefix    string
	timeout   time.Duration
	maxOps    int
	snapshot  string
	log       *slog.Logger
	changed   chan struct{}
	// fetches, attempts and commits count Update's reads, transactions
	// sent and transactions committed (for the bench).
	fetches, attempts, commits atomicCounter

	// wmu serializes this process's changes and protects view: the
	// registry as last read by Update with its own commits applied (nil
	// until the first change, and after an error that leaves the outcome
	// of a transaction unknown).
	wmu  sync.Mutex
	view *snapshotOf

	mu sync.Mutex // protects the fields below
	// following is set by Start: Load and Version use the copy below.
	following bool
	loaded    bool // a state is held (from the cluster or the snapshot)
	fromSnap  bool // the state held came from the snapshot file
	peersKV   map[string]peers.Peer
	released  map[string]peers.Released
	rev       int64 // revision the key view is at (the watch position)
	state     peers.State
	stateRev  int64 // revision of state; Version reports it
	stateKV   bool  // state was built from peersKV and released (not the snapshot file)
	online    bool
	lastErr   error
	since     time.Time // when online last changed
	synced    time.Time // when the state was last read from or confirmed by the cluster
}

type atomicCounter struct {
	mu sync.Mutex
	n  uint64
}

func (c *atomicCounter) add() {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *atomicCounter) get() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Open creates the client. It does not contact the cluster: an unreachable
// cluster shows in the first request.
func Open(cfg Config) (*Backend, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("open etcd peer registry: no endpoints")
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	b := &Backend{
		endpoints: slices.Clone(cfg.Endpoints),
		prefix:    prefix,
		timeout:   cmp(cfg.RequestTimeout, DefaultRequestTimeout),
		maxOps:    cmp(cfg.MaxTxnOps, DefaultMaxTxnOps),
		snapshot:  cfg.Snapshot,
		log:       cfg.Log,
		changed:   make(chan struct{}, 1),
		peersKV:   map[string]peers.Peer{},
		released:  map[string]peers.Released{},
		since:     time.Now(),
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            b.endpoints,
		DialTimeout:          b.timeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		TLS:                  cfg.TLS,
		Logger:               zap.NewNop(),
		// gRPC's own reconnect backoff grows to two minutes: after an
		// outage of the cluster, a registry client (a gateway, a CLI
		// writer) could wait that long to try again and fail its requests
		// meanwhile. Reconnect at least every reconnectMaxDelay.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2,
				MaxDelay: reconnectMaxDelay},
			MinConnectTimeout: b.timeout,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("open etcd peer registry %s: %w", b.Where(), err)
	}
	b.cli = cli
	return b, nil
}

func cmp[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Where names the cluster and prefix.
func (b *Backend) Where() string {
	return fmt.Sprintf("etcd %s prefix %s", strings.Join(b.endpoints, ","), b.prefix)
}

// Prefix is the key prefix.
func (b *Backend) Prefix() string { return b.prefix }

// Close closes the client.
func (b *Backend) Close() error { return b.cli.Close() }

// Changed implements peers.Notifier: signalled after every change the
// follower applies.
func (b *Backend) Changed() <-chan struct{} { return b.changed }

func (b *Backend) unavailable(op string, err error) error {
	return fmt.Errorf("%s: peer registry %s is unreachable (%v): %w; changes are refused until the cluster has quorum again, and every gateway keeps serving the peers it last knew", op, b.Where(), err, peers.ErrUnavailable)
}

// Key layout.
func (b *Backend) peerKey(p peers.Peer) string { return b.prefix + "peers/" + p.User + "/" + p.Device }
func (b *Backend) addrKey(a netip.Addr) string { return b.prefix + "addrs/" + a.String() }
func (b *Backend) pubKey(p peers.Peer) string {
	return b.prefix + "keys/" + hex.EncodeToString(p.PublicKey[:])
}
func (b *Backend) releasedKey(a netip.Addr) string { return b.prefix + "released/" + a.String() }

// snapshotOf is one read of the registry with every key's mod revision.
type snapshotOf struct {
	// state is peers and released as a sorted State, when known.
	state *peers.State
	// rev is the revision of the read; in the writer's view, the last
	// revision up to which it holds every change.
	rev      int64
	modRev   map[string]int64 // every key read: peers, released, addrs, keys
	peers    map[string]peers.Peer
	released map[string]peers.Released
}

// fetch reads the registry in one revision (a read-only transaction of
// four ranges); it needs quorum.
func (b *Backend) fetch(ctx context.Context) (*snapshotOf, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	resp, err := b.cli.Txn(ctx).Then(
		clientv3.OpGet(b.prefix+"peers/", clientv3.WithPrefix()),
		clientv3.OpGet(b.prefix+"released/", clientv3.WithPrefix()),
		clientv3.OpGet(b.prefix+"addrs/", clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(b.prefix+"keys/", clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, err
	}
	s := &snapshotOf{rev: resp.Header.Revision, modRev: map[string]int64{}, peers: map[string]peers.Peer{}, released: map[string]peers.Released{}}
	for i, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			k := string(kv.Key)
			s.modRev[k] = kv.ModRevision
			switch i {
			case 0:
				p, err := peers.UnmarshalPeer(kv.Value)
				if err != nil {
					return nil, &peers.DamagedError{Path: b.Where() + " key " + k, Reason: err.Error()}
				}
				s.peers[k] = p
			case 1:
				r, err := peers.UnmarshalReleased(kv.Value)
				if err != nil {
					return nil, &peers.DamagedError{Path: b.Where() + " key " + k, Reason: err.Error()}
				}
				s.released[k] = r
			}
		}
	}
	return s, nil
}

// stateOf builds the sorted State of a key→value view.
func stateOf(ps map[string]peers.Peer, rs map[string]peers.Released) peers.State {
	st := peers.State{Peers: make([]peers.Peer, 0, len(ps)), Released: releasedOf(rs)}
	for _, p := range ps {
		st.Peers = append(st.Peers, p)
	}
	slices.SortFunc(st.Peers, comparePeers)
	return st
}

// comparePeers orders peers by user, then device (the order of Load).
func comparePeers(a, b peers.Peer) int {
	if c := strings.Compare(a.User, b.User); c != 0 {
		return c
	}
	return strings.Compare(a.Device, b.Device)
}

// releasedOf is the sorted quarantine of a key→value view.
func releasedOf(rs map[string]peers.Released) []peers.Released {
	var list []peers.Released
	for _, r := range rs {
		list = append(list, r)
	}
	slices.SortFunc(list, func(a, b peers.Released) int {
		if c := a.Removed.Compare(b.Removed); c != 0 {
			return c
		}
		return a.Addr.Compare(b.Addr)
	})
	return list
}

func cloneState(st peers.State) peers.State {
	return peers.State{Peers: slices.Clone(st.Peers), Released: slices.Clone(st.Released)}
}

// Load returns the state: the followed copy after Start, else a fresh read
// (falling back to the snapshot file, when configured, if the cluster is
// unreachable).
func (b *Backend) Load() (peers.State, error) {
	b.mu.Lock()
	if b.following {
		defer b.mu.Unlock()
		if !b.loaded {
			return peers.State{}, b.unavailable("read peers", b.lastErr)
		}
		return cloneState(b.state), nil
	}
	b.mu.Unlock()
	s, err := b.fetch(context.Background())
	if err != nil {
		var d *peers.DamagedError
		if errors.As(err, &d) {
			return peers.State{}, err
		}
		if b.snapshot != "" {
			if st, serr := peers.ReadStateFile(b.snapshot); serr == nil {
				b.log.Warn("peer registry unreachable: reading the local snapshot", "store", b.Where(), "snapshot", b.snapshot, "err", err)
				return st, nil
			}
		}
		return peers.State{}, b.unavailable("read peers", err)
	}
	return stateOf(s.peers, s.released), nil
}

// Version is the revision of the followed copy after Start (no request),
// else the cluster's current revision.
func (b *Backend) Version() (string, error) {
	b.mu.Lock()
	if b.following {
		defer b.mu.Unlock()
		if !b.loaded {
			return "", b.unavailable("read peer registry version", b.lastErr)
		}
		if b.fromSnap {
			return "snapshot", nil
		}
		return strconv.FormatInt(b.stateRev, 10), nil
	}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	resp, err := b.cli.Get(ctx, b.prefix+"peers/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return "", b.unavailable("read peer registry version", err)
	}
	return strconv.FormatInt(resp.Header.Revision, 10), nil
}

// Update implements peers.Backend: run fn on the writer's view (a fresh
// read on the first change), commit the difference in one transaction
// guarded by every touched key's revision; when the guard fails, read
// again and run fn again, at most DefaultMaxAttempts times. An error from
// fn, or a change that changes nothing, counts only on a fresh read: on the
// view it may come from another writer's change the view has not seen.
func (b *Backend) Update(fn func(*peers.State) error) error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	wait := 2 * time.Millisecond
	for attempt := 1; attempt <= DefaultMaxAttempts; attempt++ {
		cached := b.view != nil
		if !cached {
			b.fetches.add()
			s, err := b.fetch(context.Background())
			if err != nil {
				var d *peers.DamagedError
				if errors.As(err, &d) {
					return err
				}
				return b.unavailable("change peers", err)
			}
			b.view = s
		}
		s := b.view
		if s.state == nil {
			st := stateOf(s.peers, s.released)
			s.state = &st
		}
		st := cloneState(*s.state)
		err := fn(&st)
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		var delta []viewChange
		if err == nil {
			cmps, ops, delta, err = b.diff(s, st)
		}
		if cached && (err != nil || len(ops) == 0) {
			b.view = nil // decide on a fresh read
			continue
		}
		if err != nil {
			return err
		}
		if len(ops) == 0 {
			return nil
		}
		if len(ops) > b.maxOps || len(cmps) > b.maxOps {
			return fmt.Errorf("change peers in %s: the change needs %d operations, more than etcd's --max-txn-ops %d: make it in smaller steps", b.Where(), len(ops), b.maxOps)
		}
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		b.attempts.add()
		resp, err := b.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		cancel()
		if err != nil {
			b.view = nil // the transaction may or may not have committed
			return b.unavailable("change peers", err)
		}
		if resp.Succeeded {
			b.commits.add()
			s.apply(delta, resp.Header.Revision, st)
			return nil
		}
		// Another writer changed a key this change depends on: read again,
		// back off with jitter and run fn again on the new state.
		b.view = nil
		time.Sleep(wait/2 + rand.N(wait))
		wait = min(2*wait, 100*time.Millisecond)
	}
	return fmt.Errorf("change peers in %s: still conflicting with other writers after %d attempts", b.Where(), DefaultMaxAttempts)
}

// viewChange is one key a committed change wrote (peer or rel set) or
// deleted (del), applied to the writer's view.
type viewChange struct {
	key  string
	del  bool
	peer *peers.Peer
	rel  *peers.Released
}

// apply records a committed change at revision rev in the view; st is the
// state the change was made from, which becomes the view's state (with
// the peers as stored) so that the next change need not sort the registry
// again.
func (s *snapshotOf) apply(delta []viewChange, rev int64, st peers.State) {
	s.state = nil
	defer func() {
		// st's peers are what was committed: sort them (a no-op for the
		// registry's mutations, which keep them sorted), put in the
		// stored form of each one written, and keep them if they are
		// exactly the view's peers. The quarantine is small: rebuilt.
		slices.SortFunc(st.Peers, comparePeers)
		if len(st.Peers) != len(s.peers) {
			return
		}
		for _, c := range delta {
			if c.peer == nil {
				continue
			}
			i, ok := slices.BinarySearchFunc(st.Peers, *c.peer, comparePeers)
			if !ok {
				return
			}
			st.Peers[i] = *c.peer
		}
		// The state is kept; its slices are the view's own from now on.
		st.Peers = slices.Clone(st.Peers)
		st.Released = releasedOf(s.released)
		s.state = &st
	}()
	for _, c := range delta {
		if c.del {
			delete(s.modRev, c.key)
			delete(s.peers, c.key)
			delete(s.released, c.key)
			continue
		}
		s.modRev[c.key] = rev
		if c.peer != nil {
			s.peers[c.key] = *c.peer
		}
		if c.rel != nil {
			s.released[c.key] = *c.rel
		}
	}
	// rev is the revision the view has seen everything up to: it moves
	// only when no other write came between (the released/ guard of diff
	// relies on it).
	if rev == s.rev+1 {
		s.rev = rev
	}
}

// Stats reports how many reads and transactions Update sent and how many
// transactions committed.
func (b *Backend) Stats() (fetches, attempts, commits uint64) {
	return b.fetches.get(), b.attempts.get(), b.commits.get()
}

// diff turns old → new into guarded operations and the change they make
// to the view.
func (b *Backend) diff(old *snapshotOf, st peers.State) ([]clientv3.Cmp, []clientv3.Op, []viewChange, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	var delta []viewChange
	put := func(k, v string) {
		ops = append(ops, clientv3.OpPut(k, v))
		delta = append(delta, viewChange{key: k})
	}
	del := func(k string) {
		ops = append(ops, clientv3.OpDelete(k))
		delta = append(delta, viewChange{key: k, del: true})
	}
	// guard makes the transaction fail if k changed since old was read
	// (or, for a key old did not have, if it now exists).
	guard := func(k string) {
		if rev, ok := old.modRev[k]; ok {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		}
	}
	// Peers. Only the peers that changed (added, removed, modified) touch
	// keys: an unchanged peer's address and key entries stay as they are.
	newPeers := make(map[string]peers.Peer, len(st.Peers))
	for _, p := range st.Peers {
		newPeers[b.peerKey(p)] = p
	}
	var before, after []peers.Peer // the changed peers as they were and as they are
	for k, p := range newPeers {
		op, had := old.peers[k]
		if had && peers.SamePeer(op, p) {
			continue
		}
		if had {
			before = append(before, op)
		}
		after = append(after, p)
		val, err := peers.MarshalPeer(p)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("encode peer %s: %w", p.ID(), err)
		}
		// The view holds the peer as a read would decode it.
		stored, err := peers.UnmarshalPeer(val)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("encode peer %s: %w", p.ID(), err)
		}
		guard(k)
		put(k, string(val))
		delta[len(delta)-1].peer = &stored
	}
	for k, op := range old.peers {
		if _, ok := newPeers[k]; !ok {
			before = append(before, op)
			guard(k)
			del(k)
		}
	}
	owners := func(list []peers.Peer) map[string]string { // addrs/ and keys/ key → peer ID
		m := make(map[string]string, 3*len(list))
		for _, p := range list {
			for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
				if a.IsValid() {
					m[b.addrKey(a)] = p.ID()
				}
			}
			m[b.pubKey(p)] = p.ID()
		}
		return m
	}
	oldOwner, newOwner := owners(before), owners(after)
	newAddr := false
	// Uniqueness keys: an address or public key new to the registry must
	// not exist yet (or is an orphan this change takes over, guarded by
	// its revision); one that moved between peers is rewritten, guarded by
	// the peers' own keys above.
	for k, id := range newOwner {
		if was, ok := oldOwner[k]; ok {
			if was != id {
				put(k, id)
			}
			continue
		}
		guard(k)
		put(k, id)
		if strings.HasPrefix(k, b.prefix+"addrs/") {
			newAddr = true
		}
	}
	if newAddr {
		// An address new to a peer must not be in a quarantine the view
		// has not seen: another writer's removal deletes the address's
		// addrs/ key (which the guard above then finds absent) and
		// creates its released/ key. One compare for all of them: no
		// released/ key was written after the view's revision.
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(b.prefix+"released/"), "<", old.rev+1).WithPrefix())
	}
	for k := range oldOwner {
		if _, ok := newOwner[k]; !ok {
			del(k)
		}
	}
	// Quarantine.
	newRel := make(map[string]peers.Released, len(st.Released))
	for _, r := range st.Released {
		r.Until = time.Time{}
		newRel[b.releasedKey(r.Addr)] = r
	}
	for k, r := range newRel {
		if o, ok := old.released[k]; ok && o.Peer == r.Peer && o.Removed.Equal(r.Removed) {
			continue
		}
		val, err := peers.MarshalReleased(r)
		if err != nil {
			return nil, nil, nil, err
		}
		guard(k)
		put(k, string(val))
		delta[len(delta)-1].rel = &r
	}
	// Entries that left the quarantine: the mutation's prune drops every
	// expired one, which after a mass removal can be more than a
	// transaction holds. An expired entry holds no address, so only as
	// many as fit are deleted now; later changes delete the rest. An entry
	// that went because its address was given back is always deleted.
	inUse := make(map[netip.Addr]bool, 2*len(st.Peers))
	for _, p := range st.Peers {
		inUse[p.IPv4], inUse[p.IPv6] = true, true
	}
	var expired []string
	for k, r := range old.released {
		if _, ok := newRel[k]; ok {
			continue
		}
		if inUse[r.Addr] {
			guard(k)
			del(k)
			continue
		}
		expired = append(expired, k)
	}
	slices.Sort(expired)
	for _, k := range expired {
		if len(ops) >= b.maxOps || len(cmps) >= b.maxOps {
			break
		}
		guard(k)
		del(k)
	}
	return cmps, ops, delta, nil
}
