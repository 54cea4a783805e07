package peers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
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

// CheckState reports what would make st a damaged store (two peers with
// one name, key or address), or "" when it is consistent.
func CheckState(st State) string {
	data, err := encodeState(st)
	if err != nil {
		return err.Error()
	}
	_, reason := decodeState(data)
	return reason
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
	st := State{Peers: []Peer{p}}
	data, err := encodeState(st)
	if err != nil {
		return nil, err
	}
	var f storeFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	return json.Marshal(f.Peers[0])
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
