package peers

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestStoreGroup(t *testing.T) {
	s := openTestStore(t)
	pool := testPool()
	if _, err := s.Add(AddRequest{User: "alice", Device: "laptop"}, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add(AddRequest{User: "bob", Device: "laptop", Group: "contractors"}, pool); err != nil {
		t.Fatal(err)
	}
	a, _ := s.Get("alice", "laptop")
	b, _ := s.Get("bob", "laptop")
	if a.Group != "" || b.Group != "contractors" {
		t.Fatalf("groups after add = %q, %q; want \"\", contractors", a.Group, b.Group)
	}
	data, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), `"group"`); n != 1 {
		t.Errorf("peers.json has %d group keys, want 1 (omitted for the default group):\n%s", n, data)
	}
	before, err := s.SetGroup("alice", "laptop", "auditors")
	if err != nil {
		t.Fatal(err)
	}
	if before.Group != "" {
		t.Errorf("SetGroup returned the peer before as group %q", before.Group)
	}
	if a, _ = s.Get("alice", "laptop"); a.Group != "auditors" {
		t.Errorf("group after SetGroup = %q, want auditors", a.Group)
	}
	if _, err := s.SetGroup("bob", "laptop", ""); err != nil {
		t.Fatal(err)
	}
	if b, _ = s.Get("bob", "laptop"); b.Group != "" {
		t.Errorf("group after SetGroup to default = %q", b.Group)
	}
	if _, err := s.SetGroup("carol", "", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetGroup of a missing peer: %v, want ErrNotFound", err)
	}
	if _, err := s.SetGroup("alice", "laptop", "Bad Group"); err == nil {
		t.Error("SetGroup accepted an invalid group name")
	}
	if _, err := s.Add(AddRequest{User: "dave", Group: "-x"}, pool); err == nil {
		t.Error("Add accepted an invalid group name")
	}
}
