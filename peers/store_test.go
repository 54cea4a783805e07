package peers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func openTestStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC) }
	return s
}

func TestOpenCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode = %v, want 0700", st.Mode().Perm())
	}
	if s.Path() != filepath.Join(dir, "peers.json") {
		t.Errorf("Path() = %q", s.Path())
	}
	list, err := s.List()
	if err != nil || len(list) != 0 {
		t.Errorf("List() on a new store = %v, %v", list, err)
	}
	if v, err := s.Version(); err != nil || v != "absent" {
		t.Errorf("Version() on a new store = %q, %v", v, err)
	}
	if _, err := Open(""); err == nil {
		t.Error("Open(\"\") = nil error")
	}
}

func TestStoreRoundTrip(t *testing.T) {
	s := openTestStore(t)
	pool := testPool()
	alice, err := s.Add(AddRequest{User: "alice"}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if alice.Device != DefaultDevice || alice.ID() != "alice/default" {
		t.Errorf("device = %q, want default", alice.Device)
	}
	if alice.IPv4 != mustAddr("10.20.0.2") || alice.IPv6 != mustAddr("fd20::2") {
		t.Errorf("alice addresses = %s %s, want 10.20.0.2 fd20::2", alice.IPv4, alice.IPv6)
	}
	if alice.PrivateKey == nil || alice.PrivateKey.PublicKey() != alice.PublicKey {
		t.Fatal("alice has no private key matching her public key")
	}
	if alice.PresharedKey == nil || *alice.PresharedKey == (wgtypes.Key{}) {
		t.Fatal("alice has no preshared key")
	}
	if !alice.Created.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("Created = %v", alice.Created)
	}

	own, _ := wgtypes.GeneratePrivateKey()
	ownPub := own.PublicKey()
	bob, err := s.Add(AddRequest{User: "bob", Device: "phone", PublicKey: &ownPub}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if bob.PrivateKey != nil || bob.PublicKey != ownPub {
		t.Errorf("bob: private key stored or public key changed")
	}
	if bob.IPv4 != mustAddr("10.20.0.3") || bob.IPv6 != mustAddr("fd20::3") {
		t.Errorf("bob addresses = %s %s", bob.IPv4, bob.IPv6)
	}

	// A second Store on the same directory (another process) sees both.
	s2, err := Open(filepath.Dir(s.Path()))
	if err != nil {
		t.Fatal(err)
	}
	list, err := s2.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID() != "alice/default" || list[1].ID() != "bob/phone" {
		t.Fatalf("List() = %v", list)
	}
	got := list[0]
	if got.PublicKey != alice.PublicKey || *got.PrivateKey != *alice.PrivateKey || *got.PresharedKey != *alice.PresharedKey ||
		got.IPv4 != alice.IPv4 || got.IPv6 != alice.IPv6 || !got.Created.Equal(alice.Created) {
		t.Errorf("round trip changed alice: %+v vs %+v", got, alice)
	}
	if list[1].PrivateKey != nil {
		t.Error("bob's private key appeared after round trip")
	}

	if g, err := s2.Get("bob", "phone"); err != nil || g.PublicKey != ownPub {
		t.Errorf("Get(bob/phone) = %v, %v", g, err)
	}
	if _, err := s2.Get("bob", "laptop"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(bob/laptop) error = %v, want ErrNotFound", err)
	}
	if _, err := s.Add(AddRequest{User: "alice"}, pool); !errors.Is(err, ErrExists) {
		t.Errorf("second Add(alice) = %v, want ErrExists", err)
	}
	if _, err := s.Add(AddRequest{User: "carol", PublicKey: &ownPub}, pool); !errors.Is(err, ErrExists) {
		t.Errorf("Add with bob's public key = %v, want ErrExists", err)
	}
	if _, err := s.Add(AddRequest{User: "Carol"}, pool); err == nil {
		t.Error("Add(Carol) accepted an upper-case name")
	}
	zero := wgtypes.Key{}
	if _, err := s.Add(AddRequest{User: "carol", PublicKey: &zero}, pool); err == nil {
		t.Error("Add with an all-zero public key accepted")
	}

	removed, err := s.Remove("alice", "")
	if err != nil || removed.PublicKey != alice.PublicKey {
		t.Fatalf("Remove(alice) = %v, %v", removed, err)
	}
	if _, err := s.Remove("alice", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove(alice) = %v, want ErrNotFound", err)
	}
	// The freed address is quarantined: the next device gets a new one.
	carol, err := s.Add(AddRequest{User: "carol"}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if carol.IPv4 != mustAddr("10.20.0.4") || carol.IPv6 != mustAddr("fd20::4") {
		t.Errorf("carol addresses = %s %s, want 10.20.0.4 fd20::4 (alice's are in quarantine)", carol.IPv4, carol.IPv6)
	}
	// After the quarantine the freed address is reused.
	later := s.now().Add(DefaultAddressQuarantine)
	s.now = func() time.Time { return later }
	dave, err := s.Add(AddRequest{User: "dave"}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if dave.IPv4 != mustAddr("10.20.0.2") || dave.IPv6 != mustAddr("fd20::2") {
		t.Errorf("dave addresses = %s %s, want the freed 10.20.0.2 fd20::2", dave.IPv4, dave.IPv6)
	}
}

func TestStoreFileModeFormatAndVersion(t *testing.T) {
	s := openTestStore(t)
	v0, _ := s.Version()
	p, err := s.Add(AddRequest{User: "alice", Device: "laptop"}, testPool())
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("peers.json mode = %v, want 0600", st.Mode().Perm())
	}
	data, _ := os.ReadFile(s.Path())
	var f map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if f["version"] != float64(1) {
		t.Errorf("version field = %v, want 1", f["version"])
	}
	rec := f["peers"].([]any)[0].(map[string]any)
	want := map[string]any{
		"user": "alice", "device": "laptop", "public_key": p.PublicKey.String(),
		"private_key": p.PrivateKey.String(), "preshared_key": p.PresharedKey.String(),
		"ipv4": "10.20.0.2", "ipv6": "fd20::2", "created": "2026-01-02T03:04:05Z",
	}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("peers[0].%s = %v, want %v", k, rec[k], v)
		}
	}
	v1, _ := s.Version()
	if v1 == v0 {
		t.Error("Version unchanged after Add")
	}
	if v, _ := s.Version(); v != v1 {
		t.Error("Version changed without a write")
	}
	if _, err := s.Add(AddRequest{User: "bob"}, testPool()); err != nil {
		t.Fatal(err)
	}
	if v2, _ := s.Version(); v2 == v1 {
		t.Error("Version unchanged after second Add")
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(filepath.Dir(s.Path()))
	for _, e := range ents {
		if e.Name() != StoreFile && e.Name() != LockFile {
			t.Errorf("unexpected file %s in state dir", e.Name())
		}
	}
}

func TestStoreWriteIsAtomic(t *testing.T) {
	s := openTestStore(t)
	if _, err := s.Add(AddRequest{User: "alice"}, testPool()); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(s.Path())
	dir := filepath.Dir(s.Path())
	var tmpSeen string
	s.beforeRename = func() error {
		// The new content is complete, private and in the same directory
		// before the rename; the old file is still intact.
		m, _ := filepath.Glob(filepath.Join(dir, tempPrefix+"*"))
		if len(m) != 1 {
			return fmt.Errorf("temp files = %v", m)
		}
		tmpSeen = m[0]
		st, _ := os.Stat(m[0])
		if st.Mode().Perm() != 0o600 {
			return fmt.Errorf("temp file mode %v", st.Mode().Perm())
		}
		data, _ := os.ReadFile(m[0])
		if !bytes.Contains(data, []byte(`"user": "bob"`)) {
			return fmt.Errorf("temp file lacks bob")
		}
		if cur, _ := os.ReadFile(s.Path()); !bytes.Equal(cur, before) {
			return fmt.Errorf("store changed before rename")
		}
		return errors.New("simulated crash before rename")
	}
	if _, err := s.Add(AddRequest{User: "bob"}, testPool()); err == nil || !strings.Contains(err.Error(), "simulated crash") {
		t.Fatalf("Add with failing write = %v", err)
	}
	if tmpSeen == "" {
		t.Fatal("hook did not run")
	}
	after, _ := os.ReadFile(s.Path())
	if !bytes.Equal(before, after) {
		t.Error("failed write changed peers.json")
	}
	if _, err := os.Stat(tmpSeen); !os.IsNotExist(err) {
		t.Errorf("temp file %s left after failure", tmpSeen)
	}
	// A temp file left by a writer that died is cleaned by the next writer.
	stale := filepath.Join(dir, tempPrefix+"123")
	if err := os.WriteFile(stale, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.beforeRename = nil
	if _, err := s.Add(AddRequest{User: "bob"}, testPool()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Error("stale temp file not removed")
	}
}

func TestAddManyAllOrNothing(t *testing.T) {
	s := openTestStore(t)
	pool := Pool{V4: mustPrefix("10.20.0.0/29"), V6: mustPrefix("fd20::/64"), Reserved: []netip.Addr{mustAddr("10.20.0.1")}}
	if _, err := s.Add(AddRequest{User: "alice"}, pool); err != nil {
		t.Fatal(err)
	}
	// 5 usable v4 addresses, one taken: 5 more do not fit.
	reqs := []AddRequest{{User: "u1"}, {User: "u2"}, {User: "u3"}, {User: "u4"}, {User: "u5"}}
	if _, err := s.AddMany(reqs, pool); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("AddMany over capacity = %v, want ErrPoolExhausted", err)
	}
	if list, _ := s.List(); len(list) != 1 {
		t.Fatalf("failed batch left %d peers, want 1", len(list))
	}
	if _, err := s.AddMany([]AddRequest{{User: "u1"}, {User: "u1"}}, pool); !errors.Is(err, ErrExists) {
		t.Fatalf("AddMany with a duplicate = %v, want ErrExists", err)
	}
	got, err := s.AddMany(reqs[:4], pool)
	if err != nil {
		t.Fatal(err)
	}
	if reqs[0].Device != "" {
		t.Error("AddMany modified the caller's requests")
	}
	for i, p := range got {
		want := netip.AddrFrom4([4]byte{10, 20, 0, byte(3 + i)})
		if p.IPv4 != want {
			t.Errorf("peer %d IPv4 = %s, want %s", i, p.IPv4, want)
		}
	}
	if _, err := s.Add(AddRequest{User: "u9"}, pool); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("Add to full pool = %v, want ErrPoolExhausted", err)
	}
}

func TestDamagedStoreIsReportedAndKept(t *testing.T) {
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	rec := func(user, pub, v4, v6 string) string {
		return fmt.Sprintf(`{"user":%q,"device":"default","public_key":%q,"ipv4":%q,"ipv6":%q,"created":"2026-01-02T03:04:05Z"}`, user, pub, v4, v6)
	}
	p1, p2 := k1.PublicKey().String(), k2.PublicKey().String()
	for _, tc := range []struct{ name, content, reason string }{
		{"not json", `{"version":1,"peers":[`, "invalid JSON"},
		{"empty", "", "the file is empty"},
		{"no version", `{"peers":[]}`, `no "version" field`},
		{"newer version", `{"version":2,"peers":[]}`, "written by a newer sluice"},
		{"unknown field", `{"version":1,"peers":[],"extra":1}`, "unknown field"},
		{"trailing data", `{"version":1,"peers":[]} {}`, "unexpected data"},
		{"duplicate id", `{"version":1,"peers":[` + rec("a", p1, "10.20.0.2", "fd20::2") + "," + rec("a", p2, "10.20.0.3", "fd20::3") + `]}`, "peer a/default appears twice"},
		{"duplicate key", `{"version":1,"peers":[` + rec("a", p1, "10.20.0.2", "fd20::2") + "," + rec("b", p1, "10.20.0.3", "fd20::3") + `]}`, "same public key"},
		{"duplicate v4", `{"version":1,"peers":[` + rec("a", p1, "10.20.0.2", "fd20::2") + "," + rec("b", p2, "10.20.0.2", "fd20::3") + `]}`, "same address 10.20.0.2"},
		{"duplicate v6", `{"version":1,"peers":[` + rec("a", p1, "10.20.0.2", "fd20::2") + "," + rec("b", p2, "10.20.0.3", "fd20::2") + `]}`, "same address fd20::2"},
		{"bad key", `{"version":1,"peers":[` + rec("a", "nope", "10.20.0.2", "fd20::2") + `]}`, "public_key"},
		{"bad address", `{"version":1,"peers":[` + rec("a", p1, "fd20::9", "fd20::2") + `]}`, "is not an IPv4 address"},
		{"bad name", `{"version":1,"peers":[` + rec("A B", p1, "10.20.0.2", "fd20::2") + `]}`, "invalid user name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, StoreFile)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir)
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("Open = %v, want ErrDamaged", err)
			}
			for _, want := range []string{path, tc.reason, "will not modify it", "restore it from a backup"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			// A store opened before the damage refuses to write over it.
			s := NewStore(&fileStore{dir: dir, path: path, lockPath: filepath.Join(dir, LockFile), tmpPrefix: tempPrefix, lockTimeout: time.Second})
			if _, err := s.Add(AddRequest{User: "zed"}, testPool()); !errors.Is(err, ErrDamaged) {
				t.Errorf("Add on damaged store = %v, want ErrDamaged", err)
			}
			if _, err := s.Remove("a", "default"); !errors.Is(err, ErrDamaged) {
				t.Errorf("Remove on damaged store = %v, want ErrDamaged", err)
			}
			if got, _ := os.ReadFile(path); string(got) != tc.content {
				t.Error("damaged store was overwritten")
			}
		})
	}
}

func TestStoreOutsidePool(t *testing.T) {
	s := openTestStore(t)
	if _, err := s.Add(AddRequest{User: "alice"}, testPool()); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(s.Path())
	moved := Pool{V4: mustPrefix("10.21.0.0/24"), V6: mustPrefix("fd21::/64")}
	_, err := s.Add(AddRequest{User: "bob"}, moved)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "outside the pool 10.21.0.0/24") {
		t.Fatalf("Add with renumbered pool = %v", err)
	}
	if err := s.Check(moved); !errors.Is(err, ErrDamaged) {
		t.Errorf("Check(renumbered pool) = %v", err)
	}
	if err := s.Check(testPool()); err != nil {
		t.Errorf("Check(pool) = %v", err)
	}
	if after, _ := os.ReadFile(s.Path()); !bytes.Equal(before, after) {
		t.Error("store changed")
	}
}

func TestStoreLockTimeout(t *testing.T) {
	s := openTestStore(t)
	unlock, err := s.lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	s2, _ := Open(filepath.Dir(s.Path()))
	s2.lockTimeout = 100 * time.Millisecond
	start := time.Now()
	if _, err := s2.Add(AddRequest{User: "alice"}, testPool()); err == nil || !strings.Contains(err.Error(), "still held") {
		t.Fatalf("Add while locked = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("lock wait took %s", d)
	}
}

// Multi-process concurrency: every helper process adds its own peers one
// Add at a time, all at once against the same directory.
const (
	helperEnvDir  = "SLUICE_PEERS_HELPER_DIR"
	helperEnvID   = "SLUICE_PEERS_HELPER_ID"
	helperProcs   = 6
	helperPerProc = 8
)

func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnvDir)
	if dir == "" {
		return // only a helper when re-executed by TestConcurrentProcesses
	}
	id := os.Getenv(helperEnvID)
	s, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := range helperPerProc {
		req := AddRequest{User: "proc" + id, Device: "dev" + strconv.Itoa(i)}
		if i%3 == 2 { // some devices bring their own key
			k, _ := wgtypes.GeneratePrivateKey()
			pub := k.PublicKey()
			req.PublicKey = &pub
		}
		if _, err := s.Add(req, testPool()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
	os.Exit(0)
}

func TestConcurrentProcesses(t *testing.T) {
	dir := t.TempDir()
	cmds := make([]*exec.Cmd, helperProcs)
	outs := make([]*bytes.Buffer, helperProcs)
	for i := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnvDir+"="+dir, helperEnvID+"="+strconv.Itoa(i))
		outs[i] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = outs[i], outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper %d: %v\n%s", i, err, outs[i])
		}
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != helperProcs*helperPerProc {
		t.Fatalf("store has %d peers, want %d", len(list), helperProcs*helperPerProc)
	}
	ids, keys, addrs := map[string]bool{}, map[wgtypes.Key]bool{}, map[netip.Addr]bool{}
	for _, p := range list {
		if ids[p.ID()] || keys[p.PublicKey] || addrs[p.IPv4] || addrs[p.IPv6] {
			t.Errorf("duplicate in %v", p)
		}
		ids[p.ID()], keys[p.PublicKey], addrs[p.IPv4], addrs[p.IPv6] = true, true, true, true
		if !testPool().Contains(p.IPv4) || !testPool().Contains(p.IPv6) {
			t.Errorf("%v has an address outside the pool", p)
		}
	}
	for i := range helperProcs {
		for j := range helperPerProc {
			if id := fmt.Sprintf("proc%d/dev%d", i, j); !ids[id] {
				t.Errorf("peer %s missing", id)
			}
		}
	}
	// Lowest-first allocation with no loss: exactly .2 .. .49 (.53 is
	// reserved but beyond the range used).
	for i := 2; i < 2+helperProcs*helperPerProc; i++ {
		if a := netip.AddrFrom4([4]byte{10, 20, 0, byte(i)}); !addrs[a] {
			t.Errorf("address %s not allocated: a gap means a lost write", a)
		}
	}
}

func BenchmarkAddMany10k(b *testing.B) {
	pool := Pool{V4: mustPrefix("10.20.0.0/16"), V6: mustPrefix("fd20::/64"), Reserved: []netip.Addr{mustAddr("10.20.0.1"), mustAddr("fd20::1")}}
	reqs := make([]AddRequest, 10000)
	for i := range reqs {
		reqs[i] = AddRequest{User: fmt.Sprintf("user%05d", i)}
	}
	for b.Loop() {
		b.StopTimer()
		s, err := Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := s.AddMany(reqs, pool); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAddTo10k(b *testing.B) {
	pool := Pool{V4: mustPrefix("10.20.0.0/16"), V6: mustPrefix("fd20::/64"), Reserved: []netip.Addr{mustAddr("10.20.0.1"), mustAddr("fd20::1")}}
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]AddRequest, 10000)
	for i := range reqs {
		reqs[i] = AddRequest{User: fmt.Sprintf("user%05d", i)}
	}
	if _, err := s.AddMany(reqs, pool); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if _, err := s.Add(AddRequest{User: fmt.Sprintf("extra%06d", i)}, pool); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func TestCheckFindsMismatchedKeyPair(t *testing.T) {
	s := openTestStore(t)
	if _, err := s.Add(AddRequest{User: "alice"}, testPool()); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(s.Path())
	other, _ := wgtypes.GeneratePrivateKey()
	var f storeFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	f.Peers[0].PrivateKey = other.String()
	data, _ = json.Marshal(f)
	if err := os.WriteFile(s.Path(), data, 0o600); err != nil {
		t.Fatal(err)
	}
	err := s.Check(testPool())
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "private_key does not belong to public_key") {
		t.Fatalf("Check = %v", err)
	}
}

func TestOpenTightensLooseStoreMode(t *testing.T) {
	s := openTestStore(t)
	if _, err := s.Add(AddRequest{User: "alice"}, testPool()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.Path(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Dir(s.Path())); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(s.Path())
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode after Open = %v, want 0600", st.Mode().Perm())
	}
}
