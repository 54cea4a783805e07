package peers

import (
	"errors"
	"net/netip"
	"testing"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

// testPool is the DESIGN.md test network: gateway 10.20.0.1/fd20::1,
// resolvers 10.20.0.53/fd20::53.
func testPool() Pool {
	return Pool{
		V4:       mustPrefix("10.20.0.0/24"),
		V6:       mustPrefix("fd20::/64"),
		Reserved: []netip.Addr{mustAddr("10.20.0.1"), mustAddr("fd20::1"), mustAddr("10.20.0.53"), mustAddr("fd20::53")},
	}
}

func TestPoolCapacity(t *testing.T) {
	for _, tc := range []struct {
		name string
		pool Pool
		want int
	}{
		{"v4 /24 and v6 /64 minus gateway and resolver", testPool(), 252},
		{"v4 /30", Pool{V4: mustPrefix("10.20.0.0/30")}, 2},
		{"v4 /30 with gateway from prefix host bits", Pool{V4: mustPrefix("10.20.0.1/30")}, 1},
		{"v4 /31 point to point", Pool{V4: mustPrefix("10.20.0.0/31")}, 2},
		{"v4 /32", Pool{V4: mustPrefix("10.20.0.7/32")}, 0},
		{"v6 /128", Pool{V6: mustPrefix("fd20::7/128")}, 0},
		{"v6 /64 capped", Pool{V6: mustPrefix("fd20::/64")}, MaxV6Hosts},
		{"v6 /120", Pool{V6: mustPrefix("fd20::/120"), Reserved: []netip.Addr{mustAddr("fd20::1")}}, 254},
		{"v6 smaller than v4", Pool{V4: mustPrefix("10.20.0.0/24"), V6: mustPrefix("fd20::/126")}, 3},
		{"reserved outside prefix ignored", Pool{V4: mustPrefix("10.20.0.0/29"), Reserved: []netip.Addr{mustAddr("10.99.0.1"), mustAddr("10.20.0.0"), mustAddr("10.20.0.7")}}, 6},
		{"reserved duplicates counted once", Pool{V4: mustPrefix("10.20.0.0/29"), Reserved: []netip.Addr{mustAddr("10.20.0.1"), mustAddr("10.20.0.1"), mustAddr("::ffff:10.20.0.1")}}, 5},
		{"no prefix", Pool{}, 0},
		{"v6 prefix in v4 field", Pool{V4: mustPrefix("fd20::/64")}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.pool.Capacity(); got != tc.want {
				t.Errorf("Capacity() = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestPoolValidate(t *testing.T) {
	if err := testPool().Validate(); err != nil {
		t.Fatalf("Validate(test pool) = %v", err)
	}
	for _, p := range []Pool{
		{},
		{V4: mustPrefix("fd20::/64")},
		{V6: mustPrefix("10.20.0.0/24")},
		{V6: mustPrefix("::ffff:10.20.0.0/120")},
		{V4: mustPrefix("10.20.0.0/32")},
		{V4: mustPrefix("10.20.0.0/30"), Reserved: []netip.Addr{mustAddr("10.20.0.1"), mustAddr("10.20.0.2")}},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want error", p)
		}
	}
}

func TestAllocatorSkipsReservedAndNeverRepeats(t *testing.T) {
	pool := Pool{
		V4:       mustPrefix("10.20.0.1/29"), // gateway 10.20.0.1 from the host bits
		V6:       mustPrefix("fd20::/125"),
		Reserved: []netip.Addr{mustAddr("10.20.0.3"), mustAddr("fd20::1"), mustAddr("fd20::3")},
	}
	al, err := newAllocator(pool)
	if err != nil {
		t.Fatal(err)
	}
	// An existing peer holds .2 and ::2.
	if err := al.use(Peer{User: "old", Device: "default", IPv4: mustAddr("10.20.0.2"), IPv6: mustAddr("fd20::2")}); err != nil {
		t.Fatal(err)
	}
	wantV4 := []string{"10.20.0.4", "10.20.0.5", "10.20.0.6"}
	wantV6 := []string{"fd20::4", "fd20::5", "fd20::6"}
	for i := range wantV4 {
		v4, v6, err := al.take()
		if err != nil {
			t.Fatalf("take #%d: %v", i, err)
		}
		if v4.String() != wantV4[i] || v6.String() != wantV6[i] {
			t.Errorf("take #%d = %s %s, want %s %s", i, v4, v6, wantV4[i], wantV6[i])
		}
	}
	// .7 is the broadcast address; the v4 family is exhausted.
	if _, _, err := al.take(); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("take after exhaustion = %v, want ErrPoolExhausted", err)
	}
}

func TestAllocatorV6Only(t *testing.T) {
	al, err := newAllocator(Pool{V6: mustPrefix("2001:db8:0:1::/64"), Reserved: []netip.Addr{mustAddr("2001:db8:0:1::1")}})
	if err != nil {
		t.Fatal(err)
	}
	v4, v6, err := al.take()
	if err != nil {
		t.Fatal(err)
	}
	if v4.IsValid() || v6 != mustAddr("2001:db8:0:1::2") {
		t.Errorf("take = %v %v, want invalid and 2001:db8:0:1::2", v4, v6)
	}
}

func TestAllocatorWholeV4Pool(t *testing.T) {
	pool := testPool()
	al, err := newAllocator(pool)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for i := range pool.Capacity() {
		v4, v6, err := al.take()
		if err != nil {
			t.Fatalf("take #%d: %v", i, err)
		}
		for _, a := range []netip.Addr{v4, v6} {
			if seen[a] {
				t.Fatalf("address %s handed out twice", a)
			}
			seen[a] = true
			if !pool.Contains(a) {
				t.Fatalf("address %s not allocatable from the pool", a)
			}
			for _, r := range pool.Reserved {
				if a == r {
					t.Fatalf("reserved address %s handed out", a)
				}
			}
		}
		if v4 == mustAddr("10.20.0.0") || v4 == mustAddr("10.20.0.255") || v6 == mustAddr("fd20::") {
			t.Fatalf("network or broadcast address handed out: %s %s", v4, v6)
		}
	}
	if _, _, err := al.take(); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("take after %d = %v, want ErrPoolExhausted", pool.Capacity(), err)
	}
}

func TestAllocatorRejectsForeignPeer(t *testing.T) {
	al, err := newAllocator(testPool())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []Peer{
		{User: "a", Device: "x", IPv4: mustAddr("10.21.0.2")},
		{User: "a", Device: "y", IPv4: mustAddr("10.20.0.53")},
		{User: "a", Device: "z", IPv6: mustAddr("fd21::2")},
		{User: "a", Device: "w", IPv4: mustAddr("10.20.0.255")},
	} {
		if err := al.use(p); err == nil {
			t.Errorf("use(%v) = nil, want error", p)
		}
	}
}
