package peers

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// DefaultAddressQuarantine is how long the addresses of a removed peer are
// kept out of allocation, so that a new device does not inherit the old
// one's address while logs, firewall counters and other systems still name
// the old one by it (peers.address_quarantine).
const DefaultAddressQuarantine = 7 * 24 * time.Hour

// ErrOwnKey: the peer brought its own key pair, so sluice cannot generate a
// new one for it without taking the private key away from the device.
var ErrOwnKey = errors.New("the device brought its own public key: give its new public key")

// State is the whole registry as a Backend stores it: the peers and the
// addresses of removed peers in quarantine. Every change to the registry is
// a pure function over one State (Store.updateState), so the allocation,
// quarantine, rename and group logic is the same for every backend.
type State struct {
	Peers    []Peer
	Released []Released
}

// Released is an address of a removed peer in quarantine.
type Released struct {
	Addr netip.Addr
	// Peer is the user/device that had it.
	Peer    string
	Removed time.Time
	// Until is when it may be handed out again; set by Store.Quarantined
	// only (the stored state keeps Removed).
	Until time.Time
}

// release puts p's addresses into quarantine.
func (st *State) release(p Peer, now time.Time) {
	now = now.UTC().Truncate(time.Second)
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			st.Released = append(st.Released, Released{Addr: a, Peer: p.ID(), Removed: now})
		}
	}
}

// prune drops quarantine entries older than q, and entries whose address
// a peer holds again (import assigns addresses explicitly).
func (st *State) prune(now time.Time, q time.Duration) {
	inUse := make(map[netip.Addr]bool, 2*len(st.Peers))
	for _, p := range st.Peers {
		inUse[p.IPv4], inUse[p.IPv6] = true, true
	}
	st.Released = slices.DeleteFunc(st.Released, func(r Released) bool {
		return inUse[r.Addr] || !now.Before(r.Removed.Add(q))
	})
	slices.SortStableFunc(st.Released, func(a, b Released) int { return a.Removed.Compare(b.Removed) })
}

// holdQuarantined marks the addresses still in quarantine as used in al and
// returns how many it held.
func (s *Store) holdQuarantined(st *State, al *allocator, now time.Time) int {
	n := 0
	for _, r := range st.Released {
		if now.Before(r.Removed.Add(s.quarantine)) && al.hold(r.Addr) {
			n++
		}
	}
	return n
}

// SetAddressQuarantine sets how long the addresses of removed peers are
// not handed out again; zero or less means DefaultAddressQuarantine. Call it
// before using the store from several goroutines.
func (s *Store) SetAddressQuarantine(d time.Duration) {
	if d <= 0 {
		d = DefaultAddressQuarantine
	}
	s.quarantine = d
}

// Quarantined lists the addresses of removed peers that are not handed out
// again yet, oldest first.
func (s *Store) Quarantined() ([]Released, error) {
	st, err := s.loadState()
	if err != nil {
		return nil, err
	}
	now := s.now()
	var out []Released
	for _, r := range st.Released {
		until := r.Removed.Add(s.quarantine)
		if now.Before(until) {
			out = append(out, Released{Addr: r.Addr, Peer: r.Peer, Removed: r.Removed, Until: until})
		}
	}
	return out, nil
}

// Active returns the peers that belong on the device at now (see
// Peer.Active) and when that set next changes by itself: the earliest
// expiry among them, or the zero time when none expires. The daemon calls
// it on every sync and syncs again at next even if the store did not change.
func (s *Store) Active(now time.Time) (active []Peer, next time.Time, err error) {
	list, err := s.load()
	if err != nil {
		return nil, time.Time{}, err
	}
	active = list[:0:0]
	for _, p := range list {
		if !p.Active(now) {
			continue
		}
		active = append(active, p)
		if !p.Expires.IsZero() && (next.IsZero() || p.Expires.Before(next)) {
			next = p.Expires
		}
	}
	return active, next, nil
}

// matches reports whether p is user/device, or any device of user when
// device is "".
func matches(p Peer, user, device string) bool {
	return p.User == user && (device == "" || p.Device == device)
}

func matchName(user, device string) string {
	if device == "" {
		return user + " (every device)"
	}
	return user + "/" + device
}

// Find returns the peers of user (every device when device is ""), sorted;
// ErrNotFound when there is none.
func (s *Store) Find(user, device string) ([]Peer, error) {
	list, err := s.load()
	if err != nil {
		return nil, err
	}
	var out []Peer
	for _, p := range list {
		if matches(p, user, device) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("find peer %s: %w", matchName(user, device), ErrNotFound)
	}
	return out, nil
}

// RemoveMatching removes user/device, or every device of user when device
// is "", in one write, and puts their addresses into quarantine.
// ErrNotFound when nothing matches.
func (s *Store) RemoveMatching(user, device string) ([]Peer, error) {
	var removed []Peer
	err := s.updateState(func(st *State) error {
		now := s.now()
		removed = nil
		st.Peers = slices.DeleteFunc(st.Peers, func(p Peer) bool {
			if !matches(p, user, device) {
				return false
			}
			removed = append(removed, p)
			st.release(p, now)
			return true
		})
		if len(removed) == 0 {
			return fmt.Errorf("remove peer %s: %w", matchName(user, device), ErrNotFound)
		}
		return nil
	})
	return removed, err
}

// modify applies fn to every matching peer in one write and returns them
// as written.
func (s *Store) modify(op, user, device string, fn func(*Peer) error) ([]Peer, error) {
	var out []Peer
	err := s.update(func(list []Peer) ([]Peer, error) {
		out = nil
		for i := range list {
			if !matches(list[i], user, device) {
				continue
			}
			if err := fn(&list[i]); err != nil {
				return nil, fmt.Errorf("%s peer %s: %w", op, list[i].ID(), err)
			}
			out = append(out, list[i])
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%s peer %s: %w", op, matchName(user, device), ErrNotFound)
		}
		return list, nil
	})
	return out, err
}

// SetDisabled disables or enables user/device (every device of user when
// device is ""). A disabled peer keeps its addresses and keys but is not
// configured on the device.
func (s *Store) SetDisabled(user, device string, disabled bool) ([]Peer, error) {
	op := "enable"
	if disabled {
		op = "disable"
	}
	return s.modify(op, user, device, func(p *Peer) error {
		p.Disabled = disabled
		return nil
	})
}

// SetExpires sets when user/device (every device of user when device is
// "") expires; the zero time means never.
func (s *Store) SetExpires(user, device string, t time.Time) ([]Peer, error) {
	if !t.IsZero() {
		t = t.UTC().Truncate(time.Second)
	}
	return s.modify("set expiry of", user, device, func(p *Peer) error {
		p.Expires = t
		return nil
	})
}

// Rename renames one device (fromDevice set: to toUser/toDevice, toDevice ""
// keeping the device name) or a whole user (fromDevice and toDevice "":
// every device moves to toUser). Keys and addresses stay, so client configs
// keep working. ErrNotFound when nothing matches, ErrExists when a new name
// is taken.
func (s *Store) Rename(fromUser, fromDevice, toUser, toDevice string) ([]Peer, error) {
	if err := ValidateName("user", toUser); err != nil {
		return nil, fmt.Errorf("rename peer: %w", err)
	}
	if toDevice != "" {
		if fromDevice == "" {
			return nil, fmt.Errorf("rename peer: a whole user (%s) is renamed to a user, not to a device", fromUser)
		}
		if err := ValidateName("device", toDevice); err != nil {
			return nil, fmt.Errorf("rename peer: %w", err)
		}
	}
	var out []Peer
	err := s.update(func(list []Peer) ([]Peer, error) {
		out = nil
		ids := make(map[string]bool, len(list))
		for _, p := range list {
			ids[p.ID()] = true
		}
		var idx []int
		for i, p := range list {
			if matches(p, fromUser, fromDevice) {
				idx = append(idx, i)
				delete(ids, p.ID())
			}
		}
		if len(idx) == 0 {
			return nil, fmt.Errorf("rename peer %s: %w", matchName(fromUser, fromDevice), ErrNotFound)
		}
		for _, i := range idx {
			p := &list[i]
			old := p.ID()
			p.User = toUser
			if toDevice != "" {
				p.Device = toDevice
			}
			if ids[p.ID()] {
				return nil, fmt.Errorf("rename peer %s to %s: %w", old, p.ID(), ErrExists)
			}
			ids[p.ID()] = true
			out = append(out, *p)
		}
		return list, nil
	})
	return out, err
}

// Rotate gives user/device a new key pair and a new preshared key; the old
// public key is no longer in the store, so the daemon removes it from the
// device at its next sync. newPublic, when set, is a key pair the device
// made itself (sluice then holds no private key for it); it is required
// for a device that brought its own key (ErrOwnKey).
func (s *Store) Rotate(user, device string, newPublic *wgtypes.Key) (Peer, error) {
	if device == "" {
		device = DefaultDevice
	}
	if newPublic != nil && *newPublic == (wgtypes.Key{}) {
		return Peer{}, fmt.Errorf("rotate keys of %s/%s: public key is all zeros", user, device)
	}
	var out Peer
	err := s.update(func(list []Peer) ([]Peer, error) {
		i := slices.IndexFunc(list, func(p Peer) bool { return p.User == user && p.Device == device })
		if i < 0 {
			return nil, fmt.Errorf("rotate keys of %s/%s: %w", user, device, ErrNotFound)
		}
		p := &list[i]
		if newPublic == nil && p.PrivateKey == nil {
			return nil, fmt.Errorf("rotate keys of %s: %w", p.ID(), ErrOwnKey)
		}
		if newPublic != nil {
			for _, q := range list {
				if q.PublicKey == *newPublic {
					return nil, fmt.Errorf("rotate keys of %s: public key already used by %s: %w", p.ID(), q.ID(), ErrExists)
				}
			}
			p.PrivateKey, p.PublicKey = nil, *newPublic
		} else {
			priv, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				return nil, fmt.Errorf("generate private key for %s: %w", p.ID(), err)
			}
			p.PrivateKey, p.PublicKey = &priv, priv.PublicKey()
		}
		psk, err := wgtypes.GenerateKey()
		if err != nil {
			return nil, fmt.Errorf("generate preshared key for %s: %w", p.ID(), err)
		}
		p.PresharedKey = &psk
		out = *p
		return list, nil
	})
	return out, err
}
