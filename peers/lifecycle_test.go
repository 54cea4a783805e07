package peers

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func addPeers(t *testing.T, s *Store, ids ...string) []Peer {
	t.Helper()
	var out []Peer
	for _, id := range ids {
		u, d, err := ParseID(id)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Add(AddRequest{User: u, Device: d}, testPool())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func ids(list []Peer) string {
	s := make([]string, len(list))
	for i, p := range list {
		s[i] = p.ID()
	}
	return strings.Join(s, ",")
}

func TestFindAndRemoveEveryDevice(t *testing.T) {
	s := openTestStore(t)
	addPeers(t, s, "alice/laptop", "alice/phone", "bob/laptop")
	got, err := s.Find("alice", "")
	if err != nil || ids(got) != "alice/laptop,alice/phone" {
		t.Fatalf("Find(alice) = %s, %v", ids(got), err)
	}
	if got, err := s.Find("alice", "phone"); err != nil || ids(got) != "alice/phone" {
		t.Errorf("Find(alice/phone) = %s, %v", ids(got), err)
	}
	if _, err := s.Find("carol", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("Find(carol) = %v, want ErrNotFound", err)
	}
	removed, err := s.RemoveMatching("alice", "")
	if err != nil || ids(removed) != "alice/laptop,alice/phone" {
		t.Fatalf("RemoveMatching(alice) = %s, %v", ids(removed), err)
	}
	list, _ := s.List()
	if ids(list) != "bob/laptop" {
		t.Errorf("after removing alice: %s", ids(list))
	}
	if _, err := s.RemoveMatching("alice", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("second RemoveMatching(alice) = %v, want ErrNotFound", err)
	}
	q, err := s.Quarantined()
	if err != nil || len(q) != 4 {
		t.Fatalf("Quarantined() = %v, %v; want alice's 4 addresses", q, err)
	}
	if q[0].Peer != "alice/laptop" || !q[0].Until.Equal(q[0].Removed.Add(DefaultAddressQuarantine)) {
		t.Errorf("quarantine entry = %+v", q[0])
	}
}

func TestQuarantineConfigurableAndPruned(t *testing.T) {
	s := openTestStore(t)
	s.SetAddressQuarantine(time.Hour)
	p := addPeers(t, s, "alice")[0]
	if _, err := s.RemoveMatching("alice", ""); err != nil {
		t.Fatal(err)
	}
	b := addPeers(t, s, "bob")[0]
	if b.IPv4 == p.IPv4 || b.IPv6 == p.IPv6 {
		t.Fatalf("bob got alice's quarantined address %s %s", b.IPv4, b.IPv6)
	}
	base := s.now()
	s.now = func() time.Time { return base.Add(time.Hour) }
	c := addPeers(t, s, "carol")[0]
	if c.IPv4 != p.IPv4 || c.IPv6 != p.IPv6 {
		t.Errorf("carol = %s %s, want alice's old %s %s after the 1h quarantine", c.IPv4, c.IPv6, p.IPv4, p.IPv6)
	}
	data, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), `"released"`) {
		t.Errorf("served quarantine entries stay in the file:\n%s", data)
	}
}

func TestQuarantineExhaustionSaysWhy(t *testing.T) {
	s := openTestStore(t)
	pool := Pool{V4: mustPrefix("10.20.0.0/29"), Reserved: []netip.Addr{mustAddr("10.20.0.1")}} // .2-.6
	for _, u := range []string{"a", "b", "c", "d", "e"} {
		if _, err := s.Add(AddRequest{User: u}, pool); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RemoveMatching("a", ""); err != nil {
		t.Fatal(err)
	}
	_, err := s.Add(AddRequest{User: "f"}, pool)
	if !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), "address_quarantine") {
		t.Errorf("Add into a pool held by quarantine = %v", err)
	}
}

func TestDisableEnableAndActive(t *testing.T) {
	s := openTestStore(t)
	addPeers(t, s, "alice/laptop", "alice/phone", "bob")
	now := s.now()
	got, err := s.SetDisabled("alice", "", true)
	if err != nil || ids(got) != "alice/laptop,alice/phone" || !got[0].Disabled {
		t.Fatalf("SetDisabled(alice) = %v, %v", got, err)
	}
	active, next, err := s.Active(now)
	if err != nil || ids(active) != "bob/default" || !next.IsZero() {
		t.Fatalf("Active = %s, %v, %v", ids(active), next, err)
	}
	list, _ := s.List()
	if len(list) != 3 || list[0].State(now) != StateDisabled {
		t.Errorf("disabled peers must stay in the store: %v", list)
	}
	if _, err := s.SetDisabled("alice", "phone", false); err != nil {
		t.Fatal(err)
	}
	active, _, _ = s.Active(now)
	if ids(active) != "alice/phone,bob/default" {
		t.Errorf("Active after enabling alice/phone = %s", ids(active))
	}
	if _, err := s.SetDisabled("carol", "", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetDisabled(carol) = %v, want ErrNotFound", err)
	}
}

func TestExpiry(t *testing.T) {
	s := openTestStore(t)
	now := s.now().Truncate(time.Second)
	exp := now.Add(90 * 24 * time.Hour).Truncate(time.Second)
	p, err := s.Add(AddRequest{User: "alice", Expires: exp}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	addPeers(t, s, "bob")
	if got, _ := s.Get("alice", ""); !got.Expires.Equal(exp) || got.Expires != p.Expires {
		t.Errorf("expiry not stored: %v", got.Expires)
	}
	active, next, _ := s.Active(now)
	if ids(active) != "alice/default,bob/default" || !next.Equal(exp) {
		t.Errorf("Active before expiry = %s, next %v (want %v)", ids(active), next, exp)
	}
	active, next, _ = s.Active(exp)
	if ids(active) != "bob/default" || !next.IsZero() {
		t.Errorf("Active at expiry = %s, next %v", ids(active), next)
	}
	if p.State(exp) != StateExpired || p.State(now) != StateActive {
		t.Errorf("State = %s / %s", p.State(now), p.State(exp))
	}
	// Expiry on existing peers, and cleared again.
	soon := now.Add(time.Hour)
	if got, err := s.SetExpires("bob", "", soon); err != nil || !got[0].Expires.Equal(soon) {
		t.Fatalf("SetExpires(bob) = %v, %v", got, err)
	}
	if _, next, _ := s.Active(now); !next.Equal(soon) {
		t.Errorf("next change = %v, want bob's %v", next, soon)
	}
	if _, err := s.SetExpires("alice", "", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if active, _, _ := s.Active(exp); ids(active) != "alice/default" {
		t.Errorf("Active after clearing alice's expiry = %s", ids(active))
	}
}

func TestRename(t *testing.T) {
	s := openTestStore(t)
	orig := addPeers(t, s, "alice/laptop", "alice/phone", "bob/laptop")
	got, err := s.Rename("alice", "laptop", "alice", "work")
	if err != nil || ids(got) != "alice/work" || got[0].PublicKey != orig[0].PublicKey || got[0].IPv4 != orig[0].IPv4 {
		t.Fatalf("Rename(alice/laptop → alice/work) = %v, %v", got, err)
	}
	if _, err := s.Rename("alice", "phone", "bob", "laptop"); !errors.Is(err, ErrExists) {
		t.Errorf("rename onto bob/laptop = %v, want ErrExists", err)
	}
	got, err = s.Rename("alice", "", "alice.smith", "")
	if err != nil || ids(got) != "alice.smith/phone,alice.smith/work" {
		t.Fatalf("Rename(alice → alice.smith) = %s, %v", ids(got), err)
	}
	list, _ := s.List()
	if ids(list) != "alice.smith/phone,alice.smith/work,bob/laptop" {
		t.Errorf("after renames: %s", ids(list))
	}
	if _, err := s.Rename("alice", "", "x", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("rename of a gone user = %v, want ErrNotFound", err)
	}
	if _, err := s.Rename("bob", "", "Bad", ""); err == nil {
		t.Error("rename to an invalid name accepted")
	}
	if _, err := s.Rename("bob", "", "alice.smith", ""); err != nil {
		t.Errorf("merging bob into alice.smith with distinct devices: %v", err)
	}
	if _, err := s.Rename("alice.smith", "", "carol", "x"); err == nil {
		t.Error("renaming a whole user to a device accepted")
	}
}

func TestRotate(t *testing.T) {
	s := openTestStore(t)
	old := addPeers(t, s, "alice/laptop")[0]
	p, err := s.Rotate("alice", "laptop", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.PublicKey == old.PublicKey || *p.PrivateKey == *old.PrivateKey || *p.PresharedKey == *old.PresharedKey {
		t.Error("rotate kept a key")
	}
	if p.PrivateKey.PublicKey() != p.PublicKey {
		t.Error("new private key does not match the new public key")
	}
	if p.IPv4 != old.IPv4 || p.IPv6 != old.IPv6 || p.ID() != old.ID() {
		t.Errorf("rotate changed addresses or name: %v vs %v", p, old)
	}
	if got, _ := s.Get("alice", "laptop"); got.PublicKey != p.PublicKey {
		t.Error("rotation not stored")
	}
	// A device with its own key pair gives its new public key.
	own, _ := wgtypes.GeneratePrivateKey()
	pub := own.PublicKey()
	bob, err := s.Add(AddRequest{User: "bob", PublicKey: &pub}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate("bob", "", nil); !errors.Is(err, ErrOwnKey) {
		t.Errorf("Rotate(bob) without a key = %v, want ErrOwnKey", err)
	}
	if _, err := s.Rotate("bob", "", &p.PublicKey); !errors.Is(err, ErrExists) {
		t.Errorf("Rotate(bob) to alice's key = %v, want ErrExists", err)
	}
	own2, _ := wgtypes.GeneratePrivateKey()
	pub2 := own2.PublicKey()
	got, err := s.Rotate("bob", "", &pub2)
	if err != nil || got.PublicKey != pub2 || got.PrivateKey != nil || *got.PresharedKey == *bob.PresharedKey {
		t.Errorf("Rotate(bob, new key) = %v, %v", got, err)
	}
	if _, err := s.Rotate("carol", "", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Rotate(carol) = %v, want ErrNotFound", err)
	}
}

func TestStoreKeepsNewFieldsOut(t *testing.T) {
	// A store without disabled, expiring or removed peers is written exactly
	// as before: older sluice versions keep reading it.
	s := openTestStore(t)
	addPeers(t, s, "alice")
	data, _ := os.ReadFile(s.Path())
	for _, k := range []string{"disabled", "expires", "released"} {
		if strings.Contains(string(data), k) {
			t.Errorf("store mentions %q without using it:\n%s", k, data)
		}
	}
}
