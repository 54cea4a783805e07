package peers

import (
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
)

// MaxV6Hosts caps how many addresses of an IPv6 prefix the pool considers,
// so that a /64 does not make Capacity or allocation unbounded. IPv4 pools
// are smaller than this anyway, and the pool hands out the lowest free
// addresses first.
const MaxV6Hosts = 1 << 24

// Pool allocates one IPv4 /32 and one IPv6 /128 per device from the tunnel
// interface prefixes. It never hands out the network address, the IPv4
// broadcast address, an address in Reserved (gateway address, resolver
// addresses) or an address already in use. Either prefix may be the zero
// Prefix when the tunnel has no address of that family, but not both.
//
// Host bits in V4 and V6 are ignored (10.20.0.1/24 means 10.20.0.0/24); the
// address such a prefix carries is treated as reserved, since it is the
// gateway's own interface address.
type Pool struct {
	V4, V6   netip.Prefix
	Reserved []netip.Addr
}

// family is the allocatable range of one address family: offsets first..last
// from the network address.
type family struct {
	prefix      netip.Prefix // masked
	first, last uint64
	reserved    map[netip.Addr]struct{}
}

func (p Pool) families() ([]*family, error) {
	if !p.V4.IsValid() && !p.V6.IsValid() {
		return nil, fmt.Errorf("address pool has no prefix: configure an IPv4 and an IPv6 interface address")
	}
	var fams []*family
	if p.V4.IsValid() {
		if !p.V4.Addr().Is4() {
			return nil, fmt.Errorf("address pool v4 prefix %s is not IPv4", p.V4)
		}
		f := &family{prefix: p.V4.Masked()}
		host := 32 - p.V4.Bits()
		switch {
		case host >= 2: // skip network and broadcast
			f.first, f.last = 1, 1<<host-2
		case host == 1: // RFC 3021 point-to-point: both usable
			f.first, f.last = 0, 1
		default: // a /32 is the gateway's own address: nothing to hand out
			f.first, f.last = 1, 0
		}
		fams = append(fams, f)
	}
	if p.V6.IsValid() {
		if !p.V6.Addr().Is6() || p.V6.Addr().Is4In6() {
			return nil, fmt.Errorf("address pool v6 prefix %s is not IPv6", p.V6)
		}
		f := &family{prefix: p.V6.Masked()}
		host := 128 - p.V6.Bits()
		switch {
		case host == 0: // the gateway's own address: nothing to hand out
			f.first, f.last = 1, 0
		case host >= 25:
			f.first, f.last = 1, MaxV6Hosts
		default: // skip the subnet-router anycast (network) address
			f.first, f.last = 1, 1<<host-1
			if f.last > MaxV6Hosts {
				f.last = MaxV6Hosts
			}
		}
		fams = append(fams, f)
	}
	for _, f := range fams {
		f.reserved = make(map[netip.Addr]struct{})
		for _, a := range p.Reserved {
			a = a.Unmap().WithZone("")
			if f.usable(a) {
				f.reserved[a] = struct{}{}
			}
		}
	}
	// The prefix's own address is the gateway's interface address.
	for _, pr := range []netip.Prefix{p.V4, p.V6} {
		if !pr.IsValid() || pr.Addr() == pr.Masked().Addr() {
			continue
		}
		for _, f := range fams {
			if f.usable(pr.Addr()) {
				f.reserved[pr.Addr()] = struct{}{}
			}
		}
	}
	return fams, nil
}

// addr is the address at offset o from the network address.
func (f *family) addr(o uint64) netip.Addr {
	if f.prefix.Addr().Is4() {
		b := f.prefix.Addr().As4()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(o))
		return netip.AddrFrom4(b)
	}
	b := f.prefix.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])+o)
	return netip.AddrFrom16(b)
}

// offset is a's distance from the network address, ok=false when a is
// outside the prefix or too far away to be allocatable.
func (f *family) offset(a netip.Addr) (uint64, bool) {
	if !f.prefix.Contains(a) {
		return 0, false
	}
	if a.Is4() {
		x, n := a.As4(), f.prefix.Addr().As4()
		return uint64(binary.BigEndian.Uint32(x[:]) - binary.BigEndian.Uint32(n[:])), true
	}
	x, n := a.As16(), f.prefix.Addr().As16()
	if binary.BigEndian.Uint64(x[:8]) != binary.BigEndian.Uint64(n[:8]) {
		return 0, false
	}
	return binary.BigEndian.Uint64(x[8:]) - binary.BigEndian.Uint64(n[8:]), true
}

// usable reports whether a lies in the allocatable range (ignoring
// reservations).
func (f *family) usable(a netip.Addr) bool {
	o, ok := f.offset(a)
	return ok && o >= f.first && o <= f.last
}

func (f *family) count() uint64 {
	return f.last - f.first + 1 - uint64(len(f.reserved))
}

// Capacity is the number of devices the pool can hold: the smaller of the
// IPv4 and IPv6 usable address counts (IPv6 capped at MaxV6Hosts). It is 0
// for an invalid pool.
func (p Pool) Capacity() int {
	fams, err := p.families()
	if err != nil {
		return 0
	}
	n := uint64(MaxV6Hosts)
	for _, f := range fams {
		n = min(n, f.count())
	}
	return int(n)
}

// Validate reports a pool that cannot hold a single device or whose
// prefixes are of the wrong family.
func (p Pool) Validate() error {
	fams, err := p.families()
	if err != nil {
		return err
	}
	for _, f := range fams {
		if f.count() == 0 {
			return fmt.Errorf("address pool %s has no address left for peers after the network, broadcast and reserved addresses: use a larger prefix (e.g. /24 and /64)", f.prefix)
		}
	}
	return nil
}

// Contains reports whether a may be assigned to a peer by this pool: inside
// a prefix, not the network or broadcast address and not reserved.
func (p Pool) Contains(a netip.Addr) bool {
	fams, err := p.families()
	if err != nil {
		return false
	}
	for _, f := range fams {
		if f.usable(a) {
			_, res := f.reserved[a]
			return !res
		}
	}
	return false
}

// allocator hands out the lowest free address of each family. Allocation
// of n addresses costs O(n + used) map lookups in total, because the cursor
// only moves forward within one allocator.
type allocator struct {
	v4, v6 *famAlloc
}

type famAlloc struct {
	*family
	used map[netip.Addr]struct{}
	next uint64
	// among > 1 makes take pick at random among the lowest among free
	// addresses instead of the lowest (see allocator.spread).
	among int
}

// maxSpread bounds how far allocator.spread scatters allocations.
const maxSpread = 64

// spread makes the allocator pick among the lowest few free addresses at
// random, more of them the more retries a writer needed: concurrent
// writers of a fleet then stop all taking the same lowest address and
// conflicting again. retries 0 keeps the lowest-free order.
func (al *allocator) spread(retries int) {
	if retries <= 0 {
		return
	}
	n := min(maxSpread, 4*retries)
	for _, fa := range []*famAlloc{al.v4, al.v6} {
		if fa != nil {
			fa.among = n
		}
	}
}

func newAllocator(p Pool) (*allocator, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	fams, err := p.families()
	if err != nil {
		return nil, err
	}
	al := &allocator{}
	for _, f := range fams {
		fa := &famAlloc{family: f, used: make(map[netip.Addr]struct{}, len(f.reserved)), next: f.first}
		for a := range f.reserved {
			fa.used[a] = struct{}{}
		}
		if f.prefix.Addr().Is4() {
			al.v4 = fa
		} else {
			al.v6 = fa
		}
	}
	return al, nil
}

// check verifies an existing peer's addresses fit the pool and marks them used.
func (al *allocator) use(p Peer) error {
	for _, x := range []struct {
		a  netip.Addr
		fa *famAlloc
	}{{p.IPv4, al.v4}, {p.IPv6, al.v6}} {
		if !x.a.IsValid() {
			continue
		}
		if x.fa == nil {
			return fmt.Errorf("peer %s has address %s but the tunnel has no prefix of that family", p.ID(), x.a)
		}
		if !x.fa.usable(x.a) {
			return fmt.Errorf("peer %s has address %s outside the pool %s (were the interface addresses changed?)", p.ID(), x.a, x.fa.prefix)
		}
		if _, res := x.fa.reserved[x.a]; res {
			return fmt.Errorf("peer %s has address %s which is reserved for the gateway or a resolver", p.ID(), x.a)
		}
		x.fa.used[x.a] = struct{}{}
	}
	return nil
}

func (fa *famAlloc) take() (netip.Addr, error) {
	if fa.among > 1 {
		// Choose the k-th free address from the cursor; the cursor stays,
		// so the addresses skipped remain available.
		k := mrand.IntN(fa.among)
		var first netip.Addr
		for i := fa.next; i <= fa.last; i++ {
			a := fa.addr(i)
			if _, u := fa.used[a]; u {
				continue
			}
			if !first.IsValid() {
				first = a
			}
			if k == 0 {
				fa.used[a] = struct{}{}
				return a, nil
			}
			k--
		}
		if first.IsValid() {
			fa.used[first] = struct{}{}
			return first, nil
		}
	}
	for ; fa.next <= fa.last; fa.next++ {
		a := fa.addr(fa.next)
		if _, u := fa.used[a]; !u {
			fa.used[a] = struct{}{}
			fa.next++
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate address in %s: %w", fa.prefix, ErrPoolExhausted)
}

// take allocates one address per configured family.
func (al *allocator) take() (v4, v6 netip.Addr, err error) {
	if al.v4 != nil {
		if v4, err = al.v4.take(); err != nil {
			return netip.Addr{}, netip.Addr{}, err
		}
	}
	if al.v6 != nil {
		if v6, err = al.v6.take(); err != nil {
			return netip.Addr{}, netip.Addr{}, err
		}
	}
	return v4, v6, nil
}

// hold marks a as in use without checks, so that it is not handed out; an
// address outside the pool is ignored. It reports whether a was free.
func (al *allocator) hold(a netip.Addr) bool {
	for _, fa := range []*famAlloc{al.v4, al.v6} {
		if fa == nil || !fa.usable(a) {
			continue
		}
		if _, u := fa.used[a]; u {
			return false
		}
		fa.used[a] = struct{}{}
		return true
	}
	return false
}

// free reports whether a is in the pool and not in use.
func (al *allocator) free(a netip.Addr) bool {
	for _, fa := range []*famAlloc{al.v4, al.v6} {
		if fa == nil || !fa.usable(a) {
			continue
		}
		_, u := fa.used[a]
		return !u
	}
	return false
}
