package peers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Backend persists the registry. It is the seam between the registry's
// logic (Store: allocation, quarantine, rename, rotation, groups, all pure
// functions over one State) and where the State lives: a file on this host
// (Open) or a cluster shared by a fleet of gateways (peers/etcdstore). The
// design notes call this seam peers.Registry; Store is the registry and
// Backend is the part that differs.
//
// Implementations are safe for concurrent use by goroutines; the file
// backend is also safe across processes (flock), the etcd one across hosts
// (transactions).
type Backend interface {
	// Load returns the whole current state. The caller owns the returned
	// slices. A state the backend cannot read safely is an error matching
	// ErrDamaged.
	Load() (State, error)
	// Update runs fn on the current state and stores what fn left in it,
	// atomically: either the whole change is stored or none of it, and no
	// other writer's change is lost. Nothing is stored when fn returns an
	// error, which Update then returns unchanged. fn may run more than
	// once (a backend that finds a concurrent writer runs it again on the
	// fresh state), so it must reset whatever it reports on each run.
	Update(fn func(*State) error) error
	// Version is a cheap token that differs whenever the state changed.
	Version() (string, error)
	// Where names the store in errors and status: a file path, or the
	// etcd endpoints and key prefix.
	Where() string
	// Close releases the backend's connections; the backend is not used
	// after Close.
	Close() error
}

// Notifier is implemented by a Backend that learns of changes as they
// happen (the etcd backend's watch): Changed is signalled after each
// change (coalesced, never blocking the sender), so that a consumer does
// not have to wait for its next poll of Version.
type Notifier interface {
	Changed() <-chan struct{}
}

// ErrUnavailable is matched (errors.Is) by errors of a backend that
// cannot reach its store: reads may still be served from the last known
// state, changes are refused.
var ErrUnavailable = errors.New("peer registry unavailable")

// NewStore returns a registry over be. Open is NewStore over the file
// backend.
func NewStore(be Backend) *Store {
	s := &Store{be: be, now: timeNow, quarantine: DefaultAddressQuarantine}
	if fb, ok := be.(*fileStore); ok {
		s.fileStore = fb
	}
	return s
}

// Backend returns the backend the store runs on.
func (s *Store) Backend() Backend { return s.be }

// Where names the backend in messages (see Backend.Where).
func (s *Store) Where() string { return s.be.Where() }

// Close closes the backend.
func (s *Store) Close() error { return s.be.Close() }

// EncodeState returns st in the peers.json format (a snapshot, an export).
func EncodeState(st State) ([]byte, error) {
	sortPeers(st.Peers)
	return encodeState(st)
}

// DecodeState parses and checks st in the peers.json format; the error
// matches ErrDamaged and names where.
func DecodeState(where string, data []byte) (State, error) {
	st, reason := decodeState(data)
	if reason != "" {
		return State{}, &DamagedError{Path: where, Reason: reason}
	}
	return st, nil
}

// CheckState reports what would make st a damaged store (an invalid name
// or address, two peers with one name, key or address), or "" when it is
// consistent: the checks of reading peers.json, without encoding it.
func CheckState(st State) string {
	ids := make(map[string]int, len(st.Peers))
	pubs := make(map[wgtypes.Key]int, len(st.Peers))
	addrs := make(map[netip.Addr]int, 2*len(st.Peers))
	for i, p := range st.Peers {
		for _, n := range []struct{ kind, v string }{{"user", p.User}, {"device", p.Device}, {"group", p.Group}} {
			if n.kind == "group" && n.v == "" {
				continue
			}
			if err := ValidateName(n.kind, n.v); err != nil {
				return fmt.Sprintf("peer #%d (%s/%s): %v", i+1, p.User, p.Device, err)
			}
		}
		if p.IPv4.IsValid() && !p.IPv4.Is4() {
			return fmt.Sprintf("peer %s: ipv4 %s is not an IPv4 address", p.ID(), p.IPv4)
		}
		if p.IPv6.IsValid() && (!p.IPv6.Is6() || p.IPv6.Is4In6() || p.IPv6.Zone() != "") {
			return fmt.Sprintf("peer %s: ipv6 %s is not an IPv6 address", p.ID(), p.IPv6)
		}
		if !p.IPv4.IsValid() && !p.IPv6.IsValid() {
			return fmt.Sprintf("peer %s: no address", p.ID())
		}
		if j, dup := ids[p.ID()]; dup {
			return fmt.Sprintf("peer %s appears twice (#%d and #%d)", p.ID(), j+1, i+1)
		}
		ids[p.ID()] = i
		if j, dup := pubs[p.PublicKey]; dup {
			return fmt.Sprintf("peers #%d and #%d (%s) have the same public key", j+1, i+1, p.ID())
		}
		pubs[p.PublicKey] = i
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if !a.IsValid() {
				continue
			}
			if j, dup := addrs[a]; dup {
				return fmt.Sprintf("peers #%d and #%d (%s) have the same address %s", j+1, i+1, p.ID(), a)
			}
			addrs[a] = i
		}
	}
	for i, r := range st.Released {
		if !r.Addr.IsValid() || r.Addr.Zone() != "" || r.Addr.Is4In6() {
			return fmt.Sprintf("released address #%d %q is not an IP address", i+1, r.Addr)
		}
	}
	return ""
}

// WriteFileAtomic writes data to path with mode 0600 through a temporary
// file in the same directory that is fsynced and renamed over path; the
// directory is fsynced too. A reader sees the old or the new file whole.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	fs := &fileStore{dir: dir, path: path, tmpPrefix: "." + filepath.Base(path) + ".tmp-"}
	return fs.writeAtomic(data)
}

// ReadStateFile reads a file in the peers.json format; a missing file is
// os.ErrNotExist.
func ReadStateFile(path string) (State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return State{}, err
	}
	return DecodeState(path, data)
}

// MarshalPeer encodes one peer as the peers.json record (with its keys:
// the record is as secret as the store).
func MarshalPeer(p Peer) ([]byte, error) {
	return json.Marshal(recordOf(p))
}

// SamePeer reports whether a and b are stored alike (MarshalPeer would
// give the same record).
func SamePeer(a, b Peer) bool {
	sameKey := func(x, y *wgtypes.Key) bool { return x == nil && y == nil || x != nil && y != nil && *x == *y }
	return a.User == b.User && a.Device == b.Device && a.PublicKey == b.PublicKey && sameKey(a.PrivateKey, b.PrivateKey) &&
		sameKey(a.PresharedKey, b.PresharedKey) && a.IPv4 == b.IPv4 && a.IPv6 == b.IPv6 && a.Created.Equal(b.Created) &&
		a.Disabled == b.Disabled && a.Expires.Equal(b.Expires) && a.Group == b.Group
}

// UnmarshalPeer decodes and checks a record written by MarshalPeer.
func UnmarshalPeer(data []byte) (Peer, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r peerRecord
	if err := dec.Decode(&r); err != nil {
		return Peer{}, fmt.Errorf("invalid peer record: %w", err)
	}
	p, err := r.peer()
	if err != nil {
		return Peer{}, fmt.Errorf("peer %s/%s: %w", r.User, r.Device, err)
	}
	return p, nil
}

// MarshalReleased encodes one quarantine entry.
func MarshalReleased(r Released) ([]byte, error) {
	return json.Marshal(releasedRecord{Address: r.Addr.String(), Peer: r.Peer, Removed: r.Removed})
}

// UnmarshalReleased decodes a record written by MarshalReleased.
func UnmarshalReleased(data []byte) (Released, error) {
	var r releasedRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return Released{}, fmt.Errorf("invalid released address record: %w", err)
	}
	a, err := netip.ParseAddr(r.Address)
	if err != nil || a.Zone() != "" || a.Is4In6() {
		return Released{}, fmt.Errorf("released address %q is not an IP address", r.Address)
	}
	return Released{Addr: a, Peer: r.Peer, Removed: r.Removed}, nil
}
