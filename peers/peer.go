package peers

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// DefaultDevice is the device name used when a peer is added without one.
const DefaultDevice = "default"

// DefaultKeepalive is the PersistentKeepalive written into client configs
// when the configuration does not set one; it keeps NAT mappings open.
const DefaultKeepalive = 25 * time.Second

// Config is the `peers:` section of the sluice configuration, composed by
// the gateway from the YAML file.
type Config struct {
	// StateDir holds peers.json and peers.lock.
	StateDir string
	// Routes are the split-tunnel routes written into client configs; the
	// resolver addresses are always added (see AllowedIPs).
	Routes []netip.Prefix
	// PersistentKeepalive for clients; zero means DefaultKeepalive.
	PersistentKeepalive time.Duration
	// AddressQuarantine is how long the addresses of a removed peer are not
	// handed out again; zero means DefaultAddressQuarantine.
	AddressQuarantine time.Duration
}

// Sentinel errors; match them with errors.Is.
var (
	// ErrNotFound: no peer with that user/device.
	ErrNotFound = errors.New("peer not found")
	// ErrExists: the user/device (or the public key) is already registered.
	ErrExists = errors.New("peer already exists")
	// ErrPoolExhausted: no free address is left in the tunnel prefix.
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrInvalidName: a user or device name breaks the naming rule.
	ErrInvalidName = errors.New("invalid name")
)

// Peer is one device of one user.
type Peer struct {
	User, Device string
	PublicKey    wgtypes.Key
	// PrivateKey is nil when the user brought their own public key.
	PrivateKey *wgtypes.Key
	// PresharedKey is generated per device.
	PresharedKey *wgtypes.Key
	// IPv4 and IPv6 are the tunnel addresses (/32 and /128); one of them is
	// the zero Addr when the pool has no prefix of that family.
	IPv4, IPv6 netip.Addr
	Created    time.Time
	// Disabled peers stay in the store and keep their addresses, but are not
	// configured on the device (no tunnel, no DNS identity).
	Disabled bool
	// Expires, when not zero, is when the peer stops being configured on
	// the device; it then stays in the store, shown as expired.
	Expires time.Time
	// Group is the peer's group (see `groups:`); "" is the default group.
	Group string
}

// Peer states as State reports them.
const (
	StateActive   = "active"
	StateDisabled = "disabled"
	StateExpired  = "expired"
)

// Active reports whether p belongs on the device at now: not disabled and
// not expired.
func (p Peer) Active(now time.Time) bool {
	return !p.Disabled && (p.Expires.IsZero() || now.Before(p.Expires))
}

// State is StateDisabled, StateExpired or StateActive, in that order of
// precedence.
func (p Peer) State(now time.Time) string {
	switch {
	case p.Disabled:
		return StateDisabled
	case !p.Active(now):
		return StateExpired
	}
	return StateActive
}

// ID is "user/device".
func (p Peer) ID() string { return p.User + "/" + p.Device }

// AllowedIPs are the peer's addresses as the gateway's AllowedIPs for it
// (v4 /32 and v6 /128).
func (p Peer) AllowedIPs() []netip.Prefix {
	var out []netip.Prefix
	if p.IPv4.IsValid() {
		out = append(out, netip.PrefixFrom(p.IPv4, 32))
	}
	if p.IPv6.IsValid() {
		out = append(out, netip.PrefixFrom(p.IPv6, 128))
	}
	return out
}

// String never prints keys.
func (p Peer) String() string {
	return fmt.Sprintf("%s %s %s", p.ID(), p.IPv4, p.IPv6)
}

// nameError is a ValidateName error; it matches ErrInvalidName.
type nameError string

func (e nameError) Error() string { return string(e) }

// Is makes errors.Is(err, ErrInvalidName) true.
func (e nameError) Is(target error) bool { return target == ErrInvalidName }

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName checks a user or device name: [a-z0-9][a-z0-9._-]{0,62}.
func ValidateName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return nameError(fmt.Sprintf("invalid %s name %q: use 1 to 63 characters a-z 0-9 . _ - starting with a letter or digit", kind, name))
	}
	return nil
}

// ParseID parses "user" (device DefaultDevice) or "user/device".
func ParseID(s string) (user, device string, err error) {
	user, device, found := strings.Cut(s, "/")
	if !found {
		device = DefaultDevice
	}
	if err := ValidateName("user", user); err != nil {
		return "", "", fmt.Errorf("parse peer id %q: %w", s, err)
	}
	if err := ValidateName("device", device); err != nil {
		return "", "", fmt.Errorf("parse peer id %q: %w", s, err)
	}
	return user, device, nil
}
