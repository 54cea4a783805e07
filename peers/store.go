package peers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Store file names and defaults.
const (
	// StoreFile is the peer registry inside the state directory.
	StoreFile = "peers.json"
	// LockFile is flocked exclusively around every read-modify-write.
	LockFile = "peers.lock"
	// StoreFormat is the format version this package reads and writes.
	StoreFormat = 1
	// DefaultLockTimeout bounds how long a writer waits for another
	// process holding the store lock.
	DefaultLockTimeout = 30 * time.Second

	tempPrefix = ".peers.json.tmp-"
)

// ErrDamaged is matched (errors.Is) by every error about a store file that
// sluice cannot read safely; such a file is never overwritten.
var ErrDamaged = errors.New("peer store damaged")

// DamagedError describes what is wrong with the store file.
type DamagedError struct {
	Path   string
	Reason string
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("peer store %s is damaged: %s; sluice will not modify it: repair the file by hand, restore it from a backup, or move it away to start with an empty registry (every device then needs a new config)", e.Path, e.Reason)
}

// Unwrap makes errors.Is(err, ErrDamaged) true.
func (e *DamagedError) Unwrap() error { return ErrDamaged }

// AddRequest asks for one new device. PublicKey is set when the user keeps
// their private key; otherwise a key pair is generated.
type AddRequest struct {
	User, Device string
	PublicKey    *wgtypes.Key
	// Expires, when not zero, is when the device stops being configured.
	Expires time.Time
	Group   string // "" = the default group
}

// Store is the peer registry. Its logic is pure functions over one State;
// where that state lives is its Backend. Over the file backend (Open) it
// is safe for concurrent use by goroutines and by processes: every change
// is one read-modify-write under an exclusive flock on <dir>/peers.lock,
// written to a temporary file that is fsynced and renamed over peers.json,
// and readers take no lock: the rename makes every read see one whole
// version. Over the etcd backend every change is one transaction.
type Store struct {
	be Backend
	// fileStore is be when the backend is the local file (tests reach
	// its hooks through it); nil otherwise.
	*fileStore
	now        func() time.Time
	quarantine time.Duration // how long a removed peer's addresses stay unused
}

// fileStore is the Backend of a single host: peers.json in the state
// directory.
type fileStore struct {
	dir, path, lockPath string
	tmpPrefix           string
	lockTimeout         time.Duration
	beforeRename        func() error // test hook: fail or observe a write midway
}

var timeNow = time.Now

// Open opens the registry in dir, creating dir (0700) when missing. An
// existing peers.json is read and checked now so that a damaged store is
// reported at start, and set back to mode 0600 if it was readable by others.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("open peer store: state directory not set")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create peer state directory %q: %w", dir, err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open peer state directory %q: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("open peer state directory %q: not a directory", dir)
	}
	s := NewStore(newFileStore(dir))
	if _, err := s.load(); err != nil {
		return nil, err
	}
	// The file holds private keys: tighten a mode someone loosened.
	if st, err := os.Stat(s.path); err == nil && st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(s.path, 0o600); err != nil {
			return nil, fmt.Errorf("restrict peer store %q to mode 0600: %w", s.path, err)
		}
	}
	return s, nil
}

func newFileStore(dir string) *fileStore {
	return &fileStore{
		dir:         dir,
		path:        filepath.Join(dir, StoreFile),
		lockPath:    filepath.Join(dir, LockFile),
		tmpPrefix:   tempPrefix,
		lockTimeout: DefaultLockTimeout,
	}
}

// Where is the store file, <dir>/peers.json.
func (fs *fileStore) Where() string { return fs.path }

// Close does nothing: the file backend holds nothing open between calls.
func (fs *fileStore) Close() error { return nil }

// Path is where the registry lives: the store file <dir>/peers.json for
// the file backend (see Backend.Where).
func (s *Store) Path() string { return s.be.Where() }

// Add registers one device, allocating its addresses from pool. Keys are
// generated unless req.PublicKey is set; a preshared key is always
// generated. ErrExists when the user/device or public key is taken,
// ErrPoolExhausted when no address is left.
func (s *Store) Add(req AddRequest, pool Pool) (Peer, error) {
	ps, err := s.AddMany([]AddRequest{req}, pool)
	if err != nil {
		return Peer{}, err
	}
	return ps[0], nil
}

// AddMany registers several devices in one locked read-modify-write: either
// all are added or none is.
func (s *Store) AddMany(reqs []AddRequest, pool Pool) ([]Peer, error) {
	reqs = slices.Clone(reqs)
	for i := range reqs {
		if reqs[i].Device == "" {
			reqs[i].Device = DefaultDevice
		}
		if err := ValidateName("user", reqs[i].User); err != nil {
			return nil, fmt.Errorf("add peer: %w", err)
		}
		if err := ValidateName("device", reqs[i].Device); err != nil {
			return nil, fmt.Errorf("add peer: %w", err)
		}
		if reqs[i].Group != "" {
			if err := ValidateName("group", reqs[i].Group); err != nil {
				return nil, fmt.Errorf("add peer: %w", err)
			}
		}
		if reqs[i].PublicKey != nil && *reqs[i].PublicKey == (wgtypes.Key{}) {
			return nil, fmt.Errorf("add peer %s/%s: public key is all zeros", reqs[i].User, reqs[i].Device)
		}
	}
	if _, err := newAllocator(pool); err != nil {
		return nil, fmt.Errorf("add peer: %w", err)
	}
	var added []Peer
	runs := 0
	err := s.updateState(func(st *State) error {
		// A fresh allocator per run: a backend runs fn again after a
		// concurrent writer took an address; from the second run on, the
		// allocator spreads over the lowest free addresses so that
		// concurrent adders stop colliding on the same one.
		runs++
		al, err := newAllocator(pool)
		if err != nil {
			return fmt.Errorf("add peer: %w", err)
		}
		al.spread(runs - 1)
		list := st.Peers
		ids := make(map[string]struct{}, len(list)+len(reqs))
		keys := make(map[wgtypes.Key]string, len(list)+len(reqs))
		for _, p := range list {
			if err := al.use(p); err != nil {
				return &DamagedError{Path: s.Where(), Reason: err.Error()}
			}
			ids[p.ID()] = struct{}{}
			keys[p.PublicKey] = p.ID()
		}
		now := s.now().UTC().Truncate(time.Second)
		held := s.holdQuarantined(st, al, now)
		added = make([]Peer, 0, len(reqs))
		for _, r := range reqs {
			p := Peer{User: r.User, Device: r.Device, Created: now, Expires: r.Expires, Group: r.Group}
			if _, dup := ids[p.ID()]; dup {
				return fmt.Errorf("add peer %s: %w", p.ID(), ErrExists)
			}
			if r.PublicKey != nil {
				p.PublicKey = *r.PublicKey
			} else {
				priv, err := wgtypes.GeneratePrivateKey()
				if err != nil {
					return fmt.Errorf("generate private key for %s: %w", p.ID(), err)
				}
				p.PrivateKey, p.PublicKey = &priv, priv.PublicKey()
			}
			if other, dup := keys[p.PublicKey]; dup {
				return fmt.Errorf("add peer %s: public key already used by %s: %w", p.ID(), other, ErrExists)
			}
			psk, err := wgtypes.GenerateKey()
			if err != nil {
				return fmt.Errorf("generate preshared key for %s: %w", p.ID(), err)
			}
			p.PresharedKey = &psk
			if p.IPv4, p.IPv6, err = al.take(); err != nil {
				if held > 0 {
					return fmt.Errorf("add peer %s: %w (%d addresses of removed peers are held back for %s, peers.address_quarantine)", p.ID(), err, held, s.quarantine)
				}
				return fmt.Errorf("add peer %s: %w", p.ID(), err)
			}
			ids[p.ID()] = struct{}{}
			keys[p.PublicKey] = p.ID()
			added = append(added, p)
		}
		st.Peers = append(list, added...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return added, nil
}

// Remove deletes a device and returns what it was; ErrNotFound if absent.
func (s *Store) Remove(user, device string) (Peer, error) {
	if device == "" {
		device = DefaultDevice
	}
	var removed Peer
	err := s.updateState(func(st *State) error {
		i := slices.IndexFunc(st.Peers, func(p Peer) bool { return p.User == user && p.Device == device })
		if i < 0 {
			return fmt.Errorf("remove peer %s/%s: %w", user, device, ErrNotFound)
		}
		removed = st.Peers[i]
		st.release(removed, s.now())
		st.Peers = slices.Delete(st.Peers, i, i+1)
		return nil
	})
	return removed, err
}

// Get returns one device; ErrNotFound if absent.
func (s *Store) Get(user, device string) (Peer, error) {
	if device == "" {
		device = DefaultDevice
	}
	list, err := s.load()
	if err != nil {
		return Peer{}, err
	}
	for _, p := range list {
		if p.User == user && p.Device == device {
			return p, nil
		}
	}
	return Peer{}, fmt.Errorf("get peer %s/%s: %w", user, device, ErrNotFound)
}

// List returns every device, sorted by user then device.
func (s *Store) List() ([]Peer, error) {
	return s.load()
}

// Check verifies what loading does not, because it costs a curve25519
// multiplication per peer: that every stored private key belongs to its
// public key; and that every stored address lies in pool and is not
// reserved, e.g. after the interface addresses were changed.
func (s *Store) Check(pool Pool) error {
	list, err := s.load()
	if err != nil {
		return err
	}
	al, err := newAllocator(pool)
	if err != nil {
		return fmt.Errorf("check peer store %s: %w", s.Where(), err)
	}
	for _, p := range list {
		if p.PrivateKey != nil && p.PrivateKey.PublicKey() != p.PublicKey {
			return &DamagedError{Path: s.Where(), Reason: fmt.Sprintf("peer %s: private_key does not belong to public_key %s", p.ID(), p.PublicKey)}
		}
		if err := al.use(p); err != nil {
			return &DamagedError{Path: s.Where(), Reason: err.Error()}
		}
	}
	return nil
}

// Version is a cheap change token (Backend.Version). For the file
// backend it differs whenever peers.json was replaced (inode, modification
// time and size), and is "absent" before the first peer is added. The
// daemon polls it to apply changes made by the CLI.
func (s *Store) Version() (string, error) { return s.be.Version() }

// Version implements Backend.
func (fs *fileStore) Version() (string, error) {
	st, err := os.Stat(fs.path)
	if errors.Is(err, iofs.ErrNotExist) {
		return "absent", nil
	}
	if err != nil {
		return "", fmt.Errorf("stat peer store %q: %w", fs.path, err)
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return fmt.Sprintf("%d-%d-%d", ino, st.ModTime().UnixNano(), st.Size()), nil
}

// update runs fn on the current list under the exclusive lock and writes
// the result atomically. Nothing is written when fn or the read fails.
func (s *Store) update(fn func([]Peer) ([]Peer, error)) error {
	return s.updateState(func(st *State) error {
		list, err := fn(st.Peers)
		st.Peers = list
		return err
	})
}

// updateState runs fn on the whole state (peers and the addresses in
// quarantine) through the backend, which stores the result atomically.
// Quarantine entries that have served their time are dropped on every
// write, and a state the next read would call damaged is never stored.
// fn may run more than once (Backend.Update).
func (s *Store) updateState(fn func(*State) error) error {
	return s.be.Update(func(st *State) error {
		if err := fn(st); err != nil {
			return err
		}
		st.prune(s.now(), s.quarantine)
		sortPeers(st.Peers)
		if reason := CheckState(*st); reason != "" {
			return fmt.Errorf("update peer store %q: refusing to write an inconsistent registry: %s", s.Where(), reason)
		}
		return nil
	})
}

// Update implements Backend: fn runs under the exclusive lock and the
// result is written atomically. Nothing is written when fn or the read
// fails.
func (fs *fileStore) Update(fn func(*State) error) error {
	unlock, err := fs.lock()
	if err != nil {
		return err
	}
	defer unlock()
	fs.removeStaleTemps()
	st, err := fs.Load()
	if err != nil {
		return err
	}
	if err := fn(&st); err != nil {
		return err
	}
	data, err := encodeState(st)
	if err != nil {
		return fmt.Errorf("encode peer store %q: %w", fs.path, err)
	}
	return fs.writeAtomic(data)
}

// lock takes the exclusive flock, polling so that the wait is bounded.
func (s *fileStore) lock() (unlock func(), err error) {
	f, err := os.OpenFile(s.lockPath, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open peer store lock %q: %w", s.lockPath, err)
	}
	deadline := time.Now().Add(s.lockTimeout)
	wait := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the flock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock peer store %q: %w", s.lockPath, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock peer store %q: still held by another sluice process after %s", s.lockPath, s.lockTimeout)
		}
		time.Sleep(wait)
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// removeStaleTemps deletes temporary files left by a writer that died
// before its rename; called with the lock held, so none is in progress.
func (s *fileStore) removeStaleTemps() {
	matches, _ := filepath.Glob(filepath.Join(s.dir, s.tmpPrefix+"*"))
	for _, m := range matches {
		os.Remove(m)
	}
}

// writeAtomic writes data to a temporary file in the store directory,
// fsyncs it, renames it over peers.json and fsyncs the directory.
func (s *fileStore) writeAtomic(data []byte) (err error) {
	tmp, err := os.CreateTemp(s.dir, s.tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("write peer store %q: %w", s.path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("write peer store %q: %w", s.path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write peer store %q: %w", s.path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync peer store %q: %w", s.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write peer store %q: %w", s.path, err)
	}
	if s.beforeRename != nil {
		if err := s.beforeRename(); err != nil {
			return fmt.Errorf("write peer store %q: %w", s.path, err)
		}
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("replace peer store %q: %w", s.path, err)
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("sync peer state directory %q: %w", s.dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync peer state directory %q: %w", s.dir, err)
	}
	return nil
}

// load reads and checks the store; a missing file is an empty registry.
func (s *Store) load() ([]Peer, error) {
	st, err := s.loadState()
	return st.Peers, err
}

// loadState reads the whole state through the backend.
func (s *Store) loadState() (State, error) { return s.be.Load() }

// Load implements Backend: it reads and checks the whole store file; a
// missing file is an empty registry.
func (fs *fileStore) Load() (State, error) {
	data, err := os.ReadFile(fs.path)
	if errors.Is(err, iofs.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("read peer store %q: %w", fs.path, err)
	}
	st, reason := decodeState(data)
	if reason != "" {
		return State{}, &DamagedError{Path: fs.path, Reason: reason}
	}
	return st, nil
}

// storeFile is the JSON layout of peers.json.
type storeFile struct {
	Version int          `json:"version"`
	Peers   []peerRecord `json:"peers"`
	// Released are addresses of removed peers, kept out of allocation for
	// the quarantine period.
	Released []releasedRecord `json:"released,omitempty"`
}

// releasedRecord is one address of a removed peer.
type releasedRecord struct {
	Address string    `json:"address"`
	Peer    string    `json:"peer"`
	Removed time.Time `json:"removed"`
}

type peerRecord struct {
	User         string    `json:"user"`
	Device       string    `json:"device"`
	PublicKey    string    `json:"public_key"`
	PrivateKey   string    `json:"private_key,omitempty"`
	PresharedKey string    `json:"preshared_key,omitempty"`
	IPv4         string    `json:"ipv4,omitempty"`
	IPv6         string    `json:"ipv6,omitempty"`
	Created      time.Time `json:"created"`
	Disabled     bool      `json:"disabled,omitempty"`
	Expires      time.Time `json:"expires,omitzero"`
	Group        string    `json:"group,omitempty"` // "" = the default group
}

// recordOf is p as peers.json stores it.
func recordOf(p Peer) peerRecord {
	r := peerRecord{User: p.User, Device: p.Device, PublicKey: p.PublicKey.String(), Created: p.Created,
		Disabled: p.Disabled, Expires: p.Expires, Group: p.Group}
	if p.PrivateKey != nil {
		r.PrivateKey = p.PrivateKey.String()
	}
	if p.PresharedKey != nil {
		r.PresharedKey = p.PresharedKey.String()
	}
	if p.IPv4.IsValid() {
		r.IPv4 = p.IPv4.String()
	}
	if p.IPv6.IsValid() {
		r.IPv6 = p.IPv6.String()
	}
	return r
}

func sortPeers(list []Peer) {
	slices.SortFunc(list, func(a, b Peer) int {
		if c := strings.Compare(a.User, b.User); c != 0 {
			return c
		}
		return strings.Compare(a.Device, b.Device)
	})
}

func encodeStore(list []Peer) ([]byte, error) {
	return encodeState(State{Peers: list})
}

func encodeState(st State) ([]byte, error) {
	list := st.Peers
	f := storeFile{Version: StoreFormat, Peers: make([]peerRecord, len(list))}
	for _, r := range st.Released {
		f.Released = append(f.Released, releasedRecord{Address: r.Addr.String(), Peer: r.Peer, Removed: r.Removed})
	}
	for i, p := range list {
		f.Peers[i] = recordOf(p)
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// decodeStore parses and checks peers.json; reason is non-empty when the
// file is damaged.
func decodeStore(data []byte) (list []Peer, reason string) {
	st, reason := decodeState(data)
	return st.Peers, reason
}

// decodeState is decodeStore with the quarantine list.
func decodeState(data []byte) (st State, reason string) {
	if len(bytes.TrimSpace(data)) == 0 {
		return st, "the file is empty"
	}
	list, reason := decodePeers(data)
	if reason != "" {
		return st, reason
	}
	st.Peers = list
	var f storeFile
	_ = json.Unmarshal(data, &f) // decodePeers parsed it strictly already
	for i, r := range f.Released {
		a, err := netip.ParseAddr(r.Address)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return State{}, fmt.Sprintf("released address #%d %q is not an IP address", i+1, r.Address)
		}
		st.Released = append(st.Released, Released{Addr: a, Peer: r.Peer, Removed: r.Removed})
	}
	return st, ""
}

func decodePeers(data []byte) (list []Peer, reason string) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f storeFile
	if err := dec.Decode(&f); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n")) + 1
			return nil, fmt.Sprintf("invalid JSON at line %d: %v", line, err)
		}
		return nil, fmt.Sprintf("invalid JSON: %v", err)
	}
	if dec.More() {
		return nil, "unexpected data after the JSON document"
	}
	switch {
	case f.Version == 0:
		return nil, `no "version" field`
	case f.Version > StoreFormat:
		return nil, fmt.Sprintf("format version %d was written by a newer sluice (this one reads version %d)", f.Version, StoreFormat)
	case f.Version < 0:
		return nil, fmt.Sprintf("invalid format version %d", f.Version)
	}
	ids := make(map[string]int, len(f.Peers))
	pubs := make(map[wgtypes.Key]int, len(f.Peers))
	addrs := make(map[netip.Addr]int, 2*len(f.Peers))
	list = make([]Peer, 0, len(f.Peers))
	for i, r := range f.Peers {
		p, err := r.peer()
		if err != nil {
			return nil, fmt.Sprintf("peer #%d (%s/%s): %v", i+1, r.User, r.Device, err)
		}
		if j, dup := ids[p.ID()]; dup {
			return nil, fmt.Sprintf("peer %s appears twice (#%d and #%d)", p.ID(), j+1, i+1)
		}
		ids[p.ID()] = i
		if j, dup := pubs[p.PublicKey]; dup {
			return nil, fmt.Sprintf("peers #%d and #%d (%s) have the same public key", j+1, i+1, p.ID())
		}
		pubs[p.PublicKey] = i
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if !a.IsValid() {
				continue
			}
			if j, dup := addrs[a]; dup {
				return nil, fmt.Sprintf("peers #%d and #%d (%s) have the same address %s", j+1, i+1, p.ID(), a)
			}
			addrs[a] = i
		}
		list = append(list, p)
	}
	sortPeers(list)
	return list, ""
}

func (r peerRecord) peer() (Peer, error) {
	p := Peer{User: r.User, Device: r.Device, Created: r.Created, Disabled: r.Disabled, Expires: r.Expires, Group: r.Group}
	if err := ValidateName("user", r.User); err != nil {
		return p, err
	}
	if r.Group != "" {
		if err := ValidateName("group", r.Group); err != nil {
			return p, err
		}
	}
	if err := ValidateName("device", r.Device); err != nil {
		return p, err
	}
	var err error
	if p.PublicKey, err = wgtypes.ParseKey(r.PublicKey); err != nil {
		return p, fmt.Errorf("public_key: %w", err)
	}
	if r.PrivateKey != "" {
		k, err := wgtypes.ParseKey(r.PrivateKey)
		if err != nil {
			return p, fmt.Errorf("private_key: invalid key")
		}
		p.PrivateKey = &k
	}
	if r.PresharedKey != "" {
		k, err := wgtypes.ParseKey(r.PresharedKey)
		if err != nil {
			return p, fmt.Errorf("preshared_key: invalid key")
		}
		p.PresharedKey = &k
	}
	if r.IPv4 != "" {
		if p.IPv4, err = netip.ParseAddr(r.IPv4); err != nil || !p.IPv4.Is4() {
			return p, fmt.Errorf("ipv4 %q is not an IPv4 address", r.IPv4)
		}
	}
	if r.IPv6 != "" {
		if p.IPv6, err = netip.ParseAddr(r.IPv6); err != nil || !p.IPv6.Is6() || p.IPv6.Is4In6() || p.IPv6.Zone() != "" {
			return p, fmt.Errorf("ipv6 %q is not an IPv6 address", r.IPv6)
		}
	}
	if !p.IPv4.IsValid() && !p.IPv6.IsValid() {
		return p, fmt.Errorf("no address")
	}
	return p, nil
}
