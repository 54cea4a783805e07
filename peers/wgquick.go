package peers

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// MaxImportSize bounds the wg-quick server file ImportServer reads.
const MaxImportSize = 4 << 20

// ErrImportConflict is matched (errors.Is) by an ImportConflicts error.
var ErrImportConflict = errors.New("import conflicts")

// ImportConflicts lists every reason an import was refused; nothing was
// written.
type ImportConflicts []string

func (c ImportConflicts) Error() string {
	return fmt.Sprintf("import refused, nothing was changed (%d conflicts):\n  %s", len(c), strings.Join(c, "\n  "))
}

// Unwrap makes errors.Is(err, ErrImportConflict) true.
func (c ImportConflicts) Unwrap() error { return ErrImportConflict }

// ServerPeer is one [Peer] section of a wg-quick server configuration.
type ServerPeer struct {
	// Line is the line of the [Peer] header.
	Line int
	// User and Device come from a "# Name = user[/device]" comment, or are
	// "peer-N" (N counting [Peer] sections from 1) and DefaultDevice.
	User, Device string
	PublicKey    wgtypes.Key
	PresharedKey *wgtypes.Key
	// AllowedIPs as written (host routes masked).
	AllowedIPs []netip.Prefix
}

var nameCommentRE = regexp.MustCompile(`(?i)^#\s*(?:name|friendly_name)\s*[=:]\s*(\S.*?)\s*$`)

// importName turns a free-form name into user and device, or reports false.
func importName(s string) (user, device string, ok bool) {
	clean := func(x string) string {
		x = strings.ToLower(strings.TrimSpace(x))
		b := []byte(x)
		for i, c := range b {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				b[i] = '-'
			}
		}
		x = strings.TrimLeft(string(b), "._-")
		if len(x) > 63 {
			x = x[:63]
		}
		return x
	}
	u, d, found := strings.Cut(s, "/")
	user, device = clean(u), DefaultDevice
	if found {
		device = clean(d)
	}
	if ValidateName("user", user) != nil || ValidateName("device", device) != nil {
		return "", "", false
	}
	return user, device, true
}

// ParseServer reads the [Peer] sections of a wg-quick server configuration
// (the [Interface] section, which holds the server's private key, is
// skipped). Names come from "# Name = alice" (or "# Name = alice/laptop")
// comments inside the section or right before its header. Two sections with
// the same name get devices "default", "default-2", ...
func ParseServer(data []byte) ([]ServerPeer, error) {
	if len(data) > MaxImportSize {
		return nil, fmt.Errorf("parse server config: larger than %d bytes", MaxImportSize)
	}
	secs, err := parseWgQuick(data)
	if err != nil {
		return nil, fmt.Errorf("parse server config: %w", err)
	}
	names := commentNames(data)
	var out []ServerPeer
	seen := make(map[string]int)
	n := 0
	for _, sec := range secs {
		if sec.name != "peer" {
			continue
		}
		n++
		sp := ServerPeer{Line: sec.line, User: "peer-" + strconv.Itoa(n), Device: DefaultDevice}
		if name, ok := names[sec.line]; ok {
			if u, d, ok := importName(name); ok {
				sp.User, sp.Device = u, d
			}
		}
		if k := sp.User + "/" + sp.Device; seen[k] > 0 {
			seen[k]++
			sp.Device = fmt.Sprintf("%s-%d", sp.Device, seen[k])
		} else {
			seen[k] = 1
		}
		var havePub bool
		for _, l := range sec.lines {
			switch l.key {
			case "publickey":
				k, err := wgtypes.ParseKey(l.value)
				if err != nil {
					return nil, fmt.Errorf("parse server config line %d: PublicKey is not a WireGuard key", l.line)
				}
				sp.PublicKey, havePub = k, true
			case "presharedkey":
				k, err := wgtypes.ParseKey(l.value)
				if err != nil {
					return nil, fmt.Errorf("parse server config line %d: PresharedKey is not a WireGuard key", l.line)
				}
				sp.PresharedKey = &k
			case "allowedips":
				for _, f := range splitList(l.value) {
					p, err := parsePrefixOrAddr(f)
					if err != nil {
						return nil, fmt.Errorf("parse server config line %d: AllowedIPs %q: %v", l.line, f, err)
					}
					sp.AllowedIPs = append(sp.AllowedIPs, p)
				}
			}
		}
		if !havePub {
			return nil, fmt.Errorf("parse server config line %d: [Peer] without PublicKey", sec.line)
		}
		out = append(out, sp)
	}
	return out, nil
}

// commentNames maps the header line of each [Peer] section to the name
// comment that belongs to it: a name comment belongs to the section whose
// key line follows it, or to the next [Peer] header when a header comes
// first.
func commentNames(data []byte) map[int]string {
	out := make(map[int]string)
	pending, cur := "", 0 // cur: header line of the current [Peer] section
	for i, raw := range strings.Split(string(data), "\n") {
		s := strings.TrimSpace(raw)
		switch {
		case s == "":
		case strings.HasPrefix(s, "#"):
			if m := nameCommentRE.FindStringSubmatch(s); m != nil {
				pending = m[1]
			}
		case strings.HasPrefix(s, "["):
			cur = 0
			if strings.EqualFold(strings.TrimSpace(strings.Trim(strings.SplitN(s, "#", 2)[0], " \t[]")), "peer") {
				cur = i + 1
				if pending != "" {
					out[cur] = pending
				}
			}
			pending = ""
		default:
			if pending != "" && cur != 0 {
				if _, named := out[cur]; !named {
					out[cur] = pending
				}
			}
			pending = ""
		}
	}
	return out
}

// ImportResult says what Import did.
type ImportResult struct {
	// Added peers, with the addresses they got.
	Added []Peer
	// Unchanged peers were already in the store with the same key and
	// addresses (an import is idempotent).
	Unchanged []Peer
	// Readdressed names added peers that got an address the file did not
	// give them (outside the pool, or a family the file had none of): their
	// clients need a new config.
	Readdressed []string
}

// Import adds the peers of a wg-quick server configuration in one write,
// keeping their public and preshared keys (sluice holds no private key for
// them) and their addresses when those lie in pool. Addresses of removed
// peers in quarantine are given back when the file names them. Every
// conflict (a key or name already used otherwise, an address taken, a
// routed subnet in AllowedIPs) is listed in one ImportConflicts error and
// nothing is written. A peer already imported (same key, same addresses)
// is reported unchanged.
func (s *Store) Import(in []ServerPeer, pool Pool) (ImportResult, error) {
	if _, err := newAllocator(pool); err != nil {
		return ImportResult{}, fmt.Errorf("import peers: %w", err)
	}
	var res ImportResult
	err := s.updateState(func(st *State) error {
		res = ImportResult{}
		al, err := newAllocator(pool) // fresh on every run of fn
		if err != nil {
			return fmt.Errorf("import peers: %w", err)
		}
		byKey := make(map[wgtypes.Key]Peer, len(st.Peers))
		byID := make(map[string]Peer, len(st.Peers))
		for _, p := range st.Peers {
			if err := al.use(p); err != nil {
				return &DamagedError{Path: s.path, Reason: err.Error()}
			}
			byKey[p.PublicKey], byID[p.ID()] = p, p
		}
		var conflicts ImportConflicts
		bad := func(sp ServerPeer, format string, args ...any) {
			conflicts = append(conflicts, fmt.Sprintf("line %d (%s/%s, %s): %s", sp.Line, sp.User, sp.Device, sp.PublicKey, fmt.Sprintf(format, args...)))
		}
		type pending struct {
			sp        ServerPeer
			v4, v6    netip.Addr
			readdress bool
		}
		var todo []pending
		fileKeys := make(map[wgtypes.Key]int)
		fileIDs := make(map[string]int)
		for _, sp := range in {
			if l, dup := fileKeys[sp.PublicKey]; dup {
				bad(sp, "the same PublicKey as the [Peer] on line %d", l)
				continue
			}
			fileKeys[sp.PublicKey] = sp.Line
			var v4, v6 netip.Addr
			ok := true
			for _, a := range sp.AllowedIPs {
				if !a.IsSingleIP() {
					bad(sp, "AllowedIPs %s routes a subnet to the peer; a sluice peer has one /32 and one /128 (remove the subnet or keep this peer on its old server)", a)
					ok = false
					continue
				}
				if a.Addr().Is4() && !v4.IsValid() {
					v4 = a.Addr()
				} else if a.Addr().Is6() && !v6.IsValid() {
					v6 = a.Addr()
				} else {
					bad(sp, "more than one address of a family (%s)", a)
					ok = false
				}
			}
			if !ok {
				continue
			}
			if old, exists := byKey[sp.PublicKey]; exists {
				// An address outside the pool was replaced at the first
				// import; one inside it must be the one registered.
				moved := func(a, had netip.Addr) bool { return a.IsValid() && pool.Contains(a) && a != had }
				if moved(v4, old.IPv4) || moved(v6, old.IPv6) {
					bad(sp, "this key is already registered as %s with addresses %s %s", old.ID(), old.IPv4, old.IPv6)
					continue
				}
				res.Unchanged = append(res.Unchanged, old)
				continue
			}
			if other, taken := byID[sp.User+"/"+sp.Device]; taken {
				bad(sp, "the name is taken by another key (%s): name the peer with a \"# Name = user/device\" comment", other.PublicKey)
				continue
			}
			if l, dup := fileIDs[sp.User+"/"+sp.Device]; dup {
				bad(sp, "the same name as the [Peer] on line %d", l)
				continue
			}
			fileIDs[sp.User+"/"+sp.Device] = sp.Line
			pd := pending{sp: sp}
			for _, a := range []netip.Addr{v4, v6} {
				if !a.IsValid() {
					continue
				}
				if !pool.Contains(a) {
					pd.readdress = true
					continue
				}
				if !al.free(a) {
					owner := "another peer in this file"
					for _, p := range st.Peers {
						if p.IPv4 == a || p.IPv6 == a {
							owner = p.ID()
						}
					}
					bad(sp, "address %s is already used by %s", a, owner)
					ok = false
					continue
				}
				al.hold(a)
				if a.Is4() {
					pd.v4 = a
				} else {
					pd.v6 = a
				}
			}
			if ok {
				todo = append(todo, pd)
			}
		}
		if len(conflicts) > 0 {
			return conflicts
		}
		now := s.now().UTC().Truncate(time.Second)
		s.holdQuarantined(st, al, now)
		for _, pd := range todo {
			p := Peer{User: pd.sp.User, Device: pd.sp.Device, PublicKey: pd.sp.PublicKey, PresharedKey: pd.sp.PresharedKey,
				IPv4: pd.v4, IPv6: pd.v6, Created: now}
			if al.v4 != nil && !p.IPv4.IsValid() {
				a, err := al.v4.take()
				if err != nil {
					return fmt.Errorf("import peer %s: %w", p.ID(), err)
				}
				p.IPv4 = a
				pd.readdress = pd.readdress || hasFamily(pd.sp.AllowedIPs, true)
			}
			if al.v6 != nil && !p.IPv6.IsValid() {
				a, err := al.v6.take()
				if err != nil {
					return fmt.Errorf("import peer %s: %w", p.ID(), err)
				}
				p.IPv6 = a
				pd.readdress = pd.readdress || hasFamily(pd.sp.AllowedIPs, false)
			}
			if pd.readdress {
				res.Readdressed = append(res.Readdressed, p.ID())
			}
			res.Added = append(res.Added, p)
			st.Peers = append(st.Peers, p)
		}
		if len(res.Added) == 0 {
			return errNothingToWrite
		}
		return nil
	})
	if errors.Is(err, errNothingToWrite) {
		err = nil
	}
	if err != nil {
		return ImportResult{}, err
	}
	return res, nil
}

// errNothingToWrite aborts an update that would not change anything.
var errNothingToWrite = errors.New("nothing to write")

func hasFamily(ps []netip.Prefix, v4 bool) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().Is4() == v4 })
}

// RenderServerPeers writes list as the [Peer] sections of a wg-quick server
// configuration, each named with a "# Name = user/device" comment that
// Import reads back. It never contains a private key, but it does contain
// the preshared keys.
func RenderServerPeers(list []Peer) []byte {
	var b strings.Builder
	b.WriteString("# sluice peers as wg-quick server [Peer] sections (no private keys; preshared keys included).\n")
	b.WriteString("# Paste them under the [Interface] section of the server's config.\n")
	for _, p := range list {
		fmt.Fprintf(&b, "\n[Peer]\n# Name = %s\nPublicKey = %s\n", p.ID(), p.PublicKey)
		if p.PresharedKey != nil {
			fmt.Fprintf(&b, "PresharedKey = %s\n", p.PresharedKey)
		}
		fmt.Fprintf(&b, "AllowedIPs = %s\n", joinPrefixes(p.AllowedIPs()))
	}
	return []byte(b.String())
}
