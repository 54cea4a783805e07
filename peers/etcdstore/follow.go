package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluice-vpn/sluice/peers"
)

// ErrNoState is returned by Start when the cluster is unreachable and
// there is no snapshot to start from.
var ErrNoState = errors.New("no peer registry state: the cluster is unreachable and there is no local snapshot")

// Health is the follower's view of the cluster.
type Health struct {
	Where string
	// Online: the last request to the cluster succeeded (it has quorum).
	Online bool
	// Err is why it is offline.
	Err string
	// Since is when Online last changed.
	Since time.Time
	// Revision is the cluster revision of the state held; 0 when the
	// state came from the snapshot.
	Revision int64
	// FromSnapshot: the state held was read from the snapshot file and
	// not yet confirmed by the cluster.
	FromSnapshot bool
	// Synced is when the state was last read from the cluster.
	Synced time.Time
	Peers  int
}

// Health reports the follower's state.
func (b *Backend) Health() Health {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := Health{Where: b.Where(), Online: b.online, Since: b.since, Revision: b.stateRev, FromSnapshot: b.fromSnap, Synced: b.synced, Peers: len(b.state.Peers)}
	if b.lastErr != nil && !b.online {
		h.Err = b.lastErr.Error()
	}
	return h
}

// Start makes the backend a follower: it reads the registry once (or, when
// the cluster is unreachable, the snapshot file) and from then on Load and
// Version answer from that copy, which Run keeps current. ErrNoState when
// neither is available.
func (b *Backend) Start(ctx context.Context) error {
	b.mu.Lock()
	b.following = true
	b.mu.Unlock()
	err := b.resync(ctx)
	if err == nil {
		return nil
	}
	var d *peers.DamagedError
	if errors.As(err, &d) {
		return err
	}
	if b.snapshot != "" {
		st, serr := peers.ReadStateFile(b.snapshot)
		if serr == nil {
			b.mu.Lock()
			b.state, b.loaded, b.fromSnap, b.stateKV = st, true, true, false
			b.mu.Unlock()
			b.log.Warn("peer registry unreachable at start: serving the peers of the local snapshot; changes are refused until it is back",
				"store", b.Where(), "snapshot", b.snapshot, "peers", len(st.Peers), "err", err)
			return nil
		}
		if !errors.Is(serr, os.ErrNotExist) {
			return fmt.Errorf("peer registry %s unreachable (%v) and its snapshot unreadable: %w", b.Where(), err, serr)
		}
	}
	return fmt.Errorf("start peer registry %s: %w (%v)", b.Where(), ErrNoState, err)
}

// setOnline records the cluster's reachability.
func (b *Backend) setOnline(ok bool, err error) {
	b.mu.Lock()
	changed := b.online != ok
	b.online, b.lastErr = ok, err
	if changed {
		b.since = time.Now()
	}
	b.mu.Unlock()
	if !changed {
		return
	}
	if ok {
		b.log.Info("peer registry reachable", "store", b.Where())
	} else {
		b.log.Warn("peer registry unreachable: serving the last known peers, refusing changes", "store", b.Where(), "err", err)
	}
}

// resync replaces the copy with a fresh read of the cluster.
func (b *Backend) resync(ctx context.Context) error {
	s, err := b.fetch(ctx)
	if err != nil {
		b.setOnline(false, err)
		return err
	}
	b.mu.Lock()
	b.peersKV, b.released = s.peers, s.released
	b.rev = s.rev
	b.fromSnap = false
	b.synced = time.Now()
	b.mu.Unlock()
	b.setOnline(true, nil)
	b.publish()
	return nil
}

// publish rebuilds the state from the key view, writes the snapshot and
// then serves the state (so every state a gateway applies is on disk
// first), and signals Changed. Only Run's goroutine (and Start before it)
// publishes.
func (b *Backend) publish() {
	b.mu.Lock()
	st := stateOf(b.peersKV, b.released)
	rev := b.rev
	b.mu.Unlock()
	b.serve(st, rev)
}

// peerEvent is one peer the watch stored (or deleted, del).
type peerEvent struct {
	p   peers.Peer
	del bool
}

// publishEvents publishes the key view after the watch applied evs to it:
// the state served is already the key view before evs (sorted), so it is
// edited in place of sorting the whole registry again.
func (b *Backend) publishEvents(evs []peerEvent) {
	b.mu.Lock()
	if !b.stateKV {
		b.mu.Unlock()
		b.publish()
		return
	}
	list := slices.Clone(b.state.Peers)
	rel := releasedOf(b.released)
	rev := b.rev
	b.mu.Unlock()
	for _, ev := range evs {
		i, found := slices.BinarySearchFunc(list, ev.p, comparePeers)
		switch {
		case ev.del && found:
			list = slices.Delete(list, i, i+1)
		case ev.del:
		case found:
			list[i] = ev.p
		default:
			list = slices.Insert(list, i, ev.p)
		}
	}
	b.serve(peers.State{Peers: list, Released: rel}, rev)
}

// serve writes st (the key view at rev) to the snapshot, serves it and
// signals Changed.
func (b *Backend) serve(st peers.State, rev int64) {
	if b.snapshot != "" {
		if err := b.writeSnapshot(st); err != nil {
			b.log.Error("write peer registry snapshot", "snapshot", b.snapshot, "err", err)
		}
	}
	// The version and the state change together: a reader of Version
	// then Load never records a version with an older state.
	b.mu.Lock()
	b.state, b.stateRev, b.loaded, b.stateKV = st, rev, true, true
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
}

func (b *Backend) writeSnapshot(st peers.State) error {
	data, err := peers.EncodeState(cloneState(st))
	if err != nil {
		return err
	}
	return peers.WriteFileAtomic(b.snapshot, data)
}

// Run keeps the followed copy current until ctx is done: a watch on the
// prefix from the revision read; after a compaction, a broken watch or a
// lost leader it reads the whole registry again, retrying until the
// cluster answers. A probe every probeInterval keeps Health current.
func (b *Backend) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.probe(ctx)
	}()
	defer func() { <-done }()
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		b.mu.Lock()
		need := !b.loaded || b.fromSnap || !b.online
		rev := b.rev
		b.mu.Unlock()
		if need {
			if err := b.resync(ctx); err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				wait = min(2*wait, resyncBackoffMax)
				continue
			}
			b.mu.Lock()
			rev = b.rev
			b.mu.Unlock()
		}
		wait = 100 * time.Millisecond
		if err := b.watch(ctx, rev); err != nil && ctx.Err() == nil {
			b.log.Warn("peer registry watch ended: reading the registry again", "store", b.Where(), "err", err)
			if err := b.resync(ctx); err != nil {
				continue
			}
		}
	}
}

// watch applies events after rev until the watch ends; it returns why.
func (b *Backend) watch(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	peersP, relP := b.prefix+"peers/", b.prefix+"released/"
	wch := b.cli.Watch(wctx, b.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("watch compacted at revision %d", resp.CompactRevision)
		}
		if err := resp.Err(); err != nil {
			return err
		}
		changed := false
		var bad error
		var evs []peerEvent
		b.mu.Lock()
		for _, ev := range resp.Events {
			k := string(ev.Kv.Key)
			switch {
			case strings.HasPrefix(k, peersP):
				if ev.Type == clientv3.EventTypeDelete {
					if old, ok := b.peersKV[k]; ok {
						evs = append(evs, peerEvent{p: old, del: true})
					}
					delete(b.peersKV, k)
				} else if p, err := peers.UnmarshalPeer(ev.Kv.Value); err != nil {
					bad = &peers.DamagedError{Path: b.Where() + " key " + k, Reason: err.Error()}
				} else {
					b.peersKV[k] = p
					evs = append(evs, peerEvent{p: p})
				}
				changed = true
			case strings.HasPrefix(k, relP):
				if ev.Type == clientv3.EventTypeDelete {
					delete(b.released, k)
				} else if r, err := peers.UnmarshalReleased(ev.Kv.Value); err == nil {
					b.released[k] = r
				}
				changed = true
			}
		}
		if changed {
			b.rev = resp.Header.Revision
		}
		b.synced = time.Now()
		b.mu.Unlock()
		if bad != nil {
			// Keep serving what we had; the damage is in the cluster.
			b.log.Error("peer registry holds a damaged record: ignored", "err", bad)
		}
		if changed {
			b.publishEvents(evs)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("watch channel closed")
}

// probe checks quorum every probeInterval and keeps Health current:
// offline after probeFailures failures in a row (one slow answer on a busy
// host is not an outage), online again at the first success. It does not
// touch the watch: a member without a leader ends it (WithRequireLeader)
// and Run reads everything again; a watch that survives an outage resumes
// from its revision and misses nothing.
func (b *Backend) probe(ctx context.Context) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		_, err := b.cli.Get(pctx, b.prefix+"peers/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if failures++; failures >= probeFailures {
				b.setOnline(false, err)
			}
			continue
		}
		failures = 0
		b.mu.Lock()
		synced := b.loaded && !b.fromSnap
		b.mu.Unlock()
		if synced {
			b.setOnline(true, nil)
		}
	}
}
