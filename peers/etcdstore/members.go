package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultMemberInterval is how often a gateway refreshes its registration;
// its lease lives three intervals.
const DefaultMemberInterval = 5 * time.Second

// Member is one gateway's registration.
type Member struct {
	Name      string    `json:"name"`
	Endpoint  string    `json:"endpoint"`
	PublicKey string    `json:"public_key"`
	Addresses []string  `json:"addresses"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	LastSeen  time.Time `json:"last_seen"`
	// Peers is how many peers the gateway has configured, Handshaking
	// how many of them completed a handshake in the last 3 minutes.
	Peers       int `json:"peers"`
	Handshaking int `json:"handshaking"`
	// Alive is not stored: Members sets it when the gateway's lease lives.
	Alive bool `json:"-"`
}

func (b *Backend) memberKey(name string) string { return b.prefix + "gateways/" + name }
func (b *Backend) aliveKey(name string) string  { return b.prefix + "alive/" + name }

// Register keeps this gateway's registration until ctx is done: the record
// under gateways/<name> (kept after the gateway stops, so that status can
// list it as dead) and alive/<name> under a lease of three intervals.
// info is called before every refresh. Errors are retried at the next
// interval; the record is deleted from alive/ when ctx ends.
func (b *Backend) Register(ctx context.Context, interval time.Duration, info func() Member) {
	if interval <= 0 {
		interval = DefaultMemberInterval
	}
	var lease clientv3.LeaseID
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m := info()
		m.LastSeen = time.Now().UTC().Truncate(time.Second)
		if err := b.refresh(ctx, &lease, interval, m); err != nil && ctx.Err() == nil {
			b.log.Debug("refresh gateway registration", "name", m.Name, "err", err)
			lease = 0
		}
		select {
		case <-ctx.Done():
			if lease != 0 {
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				b.cli.Revoke(rctx, lease)
				cancel()
			}
			return
		case <-t.C:
		}
	}
}

func (b *Backend) refresh(ctx context.Context, lease *clientv3.LeaseID, interval time.Duration, m Member) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if *lease != 0 {
		if _, err := b.cli.KeepAliveOnce(ctx, *lease); err != nil {
			*lease = 0
		}
	}
	if *lease == 0 {
		g, err := b.cli.Grant(ctx, int64((3*interval+time.Second-1)/time.Second))
		if err != nil {
			return err
		}
		*lease = g.ID
	}
	val, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = b.cli.Txn(ctx).Then(
		clientv3.OpPut(b.memberKey(m.Name), string(val)),
		clientv3.OpPut(b.aliveKey(m.Name), m.LastSeen.Format(time.RFC3339), clientv3.WithLease(*lease)),
	).Commit()
	return err
}

// Members lists every gateway that ever registered, sorted by name, with
// Alive set for those whose lease lives.
func (b *Backend) Members(ctx context.Context) ([]Member, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	resp, err := b.cli.Txn(ctx).Then(
		clientv3.OpGet(b.prefix+"gateways/", clientv3.WithPrefix()),
		clientv3.OpGet(b.prefix+"alive/", clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, b.unavailable("list gateways", err)
	}
	alive := map[string]bool{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		alive[strings.TrimPrefix(string(kv.Key), b.prefix+"alive/")] = true
	}
	var out []Member
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var m Member
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			return nil, fmt.Errorf("gateway record %s: %w", kv.Key, err)
		}
		m.Alive = alive[m.Name]
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Member returns one gateway's registration.
func (b *Backend) Member(ctx context.Context, name string) (Member, error) {
	ms, err := b.Members(ctx)
	if err != nil {
		return Member{}, err
	}
	for _, m := range ms {
		if m.Name == name {
			return m, nil
		}
	}
	names := make([]string, 0, len(ms))
	for _, m := range ms {
		names = append(names, m.Name)
	}
	return Member{}, fmt.Errorf("no gateway %q registered in %s (registered: %s)", name, b.Where(), strings.Join(names, ", "))
}
