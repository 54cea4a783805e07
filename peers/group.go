package peers

import (
	"fmt"
	"slices"
)

// SetGroup moves a device to group ("" = the default group) and returns the
// peer as it was before the change; ErrNotFound if absent. Whether the group
// exists is the caller's to check (the store does not know the config).
func (s *Store) SetGroup(user, device, group string) (Peer, error) {
	if device == "" {
		device = DefaultDevice
	}
	if group != "" {
		if err := ValidateName("group", group); err != nil {
			return Peer{}, fmt.Errorf("set group of peer %s/%s: %w", user, device, err)
		}
	}
	var before Peer
	err := s.update(func(list []Peer) ([]Peer, error) {
		i := slices.IndexFunc(list, func(p Peer) bool { return p.User == user && p.Device == device })
		if i < 0 {
			return nil, fmt.Errorf("set group of peer %s/%s: %w", user, device, ErrNotFound)
		}
		before = list[i]
		list[i].Group = group
		return list, nil
	})
	return before, err
}
