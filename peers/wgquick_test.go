package peers

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func newPub(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestParseServerNames(t *testing.T) {
	k1, k2, k3, k4, k5 := newPub(t), newPub(t), newPub(t), newPub(t), newPub(t)
	psk, _ := wgtypes.GenerateKey()
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = 10.20.0.1/24
ListenPort = 51820

# Name = Alice
[Peer]
PublicKey = %s
PresharedKey = %s
AllowedIPs = 10.20.0.7/32, fd20::7/128

[Peer]
# name: alice/Phone
PublicKey = %s
AllowedIPs = 10.20.0.8

[Peer]
PublicKey = %s
AllowedIPs = 10.20.0.9/32
# Name = alice

[Peer]
PublicKey = %s
AllowedIPs = 10.99.0.4/32

[Peer]
# Name = !!!
PublicKey = %s
AllowedIPs = 10.20.0.10/32
`, newPub(t), k1, psk, k2, k3, k4, k5)
	got, err := ParseServer([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		names = append(names, p.User+"/"+p.Device)
	}
	want := "alice/default alice/phone peer-3/default alice/default-2 peer-5/default" // a name between sections belongs to the next one
	if strings.Join(names, " ") != want {
		t.Errorf("names = %v, want %s", names, want)
	}
	if got[0].PublicKey != k1 || got[0].PresharedKey == nil || *got[0].PresharedKey != psk || len(got[0].AllowedIPs) != 2 {
		t.Errorf("first peer = %+v", got[0])
	}
	if got[1].PresharedKey != nil || got[1].AllowedIPs[0].String() != "10.20.0.8/32" {
		t.Errorf("second peer = %+v", got[1])
	}
	for _, bad := range []string{
		"[Peer]\nAllowedIPs = 10.20.0.2/32\n",
		"[Peer]\nPublicKey = nope\n",
		"[Peer]\nPublicKey = " + k1.String() + "\nAllowedIPs = 10.20.0.300/32\n",
		strings.Repeat("#", MaxImportSize+1),
	} {
		if _, err := ParseServer([]byte(bad)); err == nil {
			t.Errorf("ParseServer(%.40q) accepted", bad)
		}
	}
}

func TestImportKeepsAddressesAndIsIdempotent(t *testing.T) {
	s := openTestStore(t)
	ka, kb, kc := newPub(t), newPub(t), newPub(t)
	psk, _ := wgtypes.GenerateKey()
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
[Peer]
# Name = alice/laptop
PublicKey = %s
PresharedKey = %s
AllowedIPs = 10.20.0.7/32, fd20::7/128
[Peer]
# Name = bob
PublicKey = %s
AllowedIPs = 10.20.0.8/32
[Peer]
# Name = carol
PublicKey = %s
AllowedIPs = 192.168.77.5/32, fd20::9/128
`, newPub(t), ka, psk, kb, kc)
	in, err := ParseServer([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Import(in, testPool())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Added) != 3 || len(res.Unchanged) != 0 {
		t.Fatalf("Import = %+v", res)
	}
	a, _ := s.Get("alice", "laptop")
	if a.PublicKey != ka || a.PrivateKey != nil || a.PresharedKey == nil || *a.PresharedKey != psk ||
		a.IPv4 != mustAddr("10.20.0.7") || a.IPv6 != mustAddr("fd20::7") {
		t.Errorf("alice imported as %+v", a)
	}
	b, _ := s.Get("bob", "")
	if b.IPv4 != mustAddr("10.20.0.8") || !b.IPv6.IsValid() || b.PresharedKey != nil {
		t.Errorf("bob imported as %+v (keeps v4, gets a v6, no invented psk)", b)
	}
	c, _ := s.Get("carol", "")
	if c.IPv4 == mustAddr("192.168.77.5") || !testPool().Contains(c.IPv4) || c.IPv6 != mustAddr("fd20::9") {
		t.Errorf("carol imported as %+v (v4 outside the pool must be replaced)", c)
	}
	if strings.Join(res.Readdressed, ",") != "carol/default" {
		t.Errorf("Readdressed = %v", res.Readdressed)
	}
	v1, _ := s.Version()
	again, err := s.Import(in, testPool())
	if err != nil || len(again.Added) != 0 || len(again.Unchanged) != 3 {
		t.Fatalf("second Import = %+v, %v", again, err)
	}
	if v2, _ := s.Version(); v2 != v1 {
		t.Error("an idempotent import rewrote the store")
	}
}

func TestImportConflictsListedAndNothingWritten(t *testing.T) {
	s := openTestStore(t)
	existing := addPeers(t, s, "alice")[0] // 10.20.0.2
	k1, k2, k3 := newPub(t), newPub(t), newPub(t)
	conf := fmt.Sprintf(`[Peer]
# Name = dave
PublicKey = %s
AllowedIPs = %s/32
[Peer]
# Name = alice
PublicKey = %s
AllowedIPs = 10.20.0.30/32
[Peer]
# Name = erin
PublicKey = %s
AllowedIPs = 10.20.0.31/32, 192.168.1.0/24
[Peer]
# Name = frank
PublicKey = %s
AllowedIPs = 10.20.0.40/32
[Peer]
# Name = gina
PublicKey = %s
AllowedIPs = 10.20.0.41/32
`, k1, existing.IPv4, k2, k3, existing.PublicKey, newPub(t))
	in, err := ParseServer([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := s.Version()
	_, err = s.Import(in, testPool())
	var ce ImportConflicts
	if !errors.As(err, &ce) || !errors.Is(err, ErrImportConflict) {
		t.Fatalf("Import = %v, want ImportConflicts", err)
	}
	if len(ce) != 4 {
		t.Errorf("conflicts = %d, want 4:\n%v", len(ce), err)
	}
	for _, want := range []string{"10.20.0.2 is already used by alice/default", "name is taken", "192.168.1.0/24 routes a subnet", "already registered as alice/default"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("conflict list lacks %q:\n%v", want, err)
		}
	}
	if v2, _ := s.Version(); v2 != v1 {
		t.Error("a refused import wrote the store")
	}
	if list, _ := s.List(); len(list) != 1 {
		t.Errorf("a refused import added peers: %v", list)
	}
}

func TestExportRoundTrip(t *testing.T) {
	s := openTestStore(t)
	orig := addPeers(t, s, "alice/laptop", "bob")
	text := RenderServerPeers(orig)
	if strings.Contains(string(text), orig[0].PrivateKey.String()) {
		t.Fatal("export holds a private key")
	}
	if !strings.Contains(string(text), "# Name = alice/laptop") || !strings.Contains(string(text), "PresharedKey = "+orig[0].PresharedKey.String()) {
		t.Errorf("export:\n%s", text)
	}
	in, err := ParseServer(text)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Import(in, testPool())
	if err != nil || len(res.Unchanged) != 2 || len(res.Added) != 0 {
		t.Errorf("importing our own export into the same store = %+v, %v", res, err)
	}
	s2 := openTestStore(t)
	res, err = s2.Import(in, testPool())
	if err != nil || len(res.Added) != 2 {
		t.Fatalf("import into a new store = %+v, %v", res, err)
	}
	got, _ := s2.Get("alice", "laptop")
	if got.PublicKey != orig[0].PublicKey || got.IPv4 != orig[0].IPv4 || got.IPv6 != orig[0].IPv6 || *got.PresharedKey != *orig[0].PresharedKey {
		t.Errorf("round trip changed alice/laptop: %+v", got)
	}
}

func TestImportReclaimsQuarantinedAddressNamedInFile(t *testing.T) {
	s := openTestStore(t)
	a := addPeers(t, s, "alice")[0]
	if _, err := s.RemoveMatching("alice", ""); err != nil {
		t.Fatal(err)
	}
	in := []ServerPeer{{Line: 1, User: "alice", Device: DefaultDevice, PublicKey: a.PublicKey, AllowedIPs: a.AllowedIPs()}}
	res, err := s.Import(in, testPool())
	if err != nil || len(res.Added) != 1 || res.Added[0].IPv4 != a.IPv4 {
		t.Fatalf("Import of a quarantined address named in the file = %+v, %v", res, err)
	}
	if q, _ := s.Quarantined(); len(q) != 0 {
		t.Errorf("address still quarantined after being assigned: %v", q)
	}
}

func TestImportRefusesDuplicateNamesInInput(t *testing.T) {
	s := openTestStore(t)
	in := []ServerPeer{
		{Line: 1, User: "alice", Device: "default-2", PublicKey: newPub(t)},
		{Line: 5, User: "alice", Device: "default-2", PublicKey: newPub(t)},
	}
	if _, err := s.Import(in, testPool()); !errors.Is(err, ErrImportConflict) || !strings.Contains(err.Error(), "same name as the [Peer] on line 1") {
		t.Fatalf("Import of two peers with one name = %v", err)
	}
	if _, err := s.List(); err != nil {
		t.Errorf("store damaged after a refused import: %v", err)
	}
}
