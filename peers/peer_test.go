package peers

import (
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	for _, tc := range []struct{ in, user, device string }{
		{"alice", "alice", "default"},
		{"alice/phone", "alice", "phone"},
		{"a.b-c_d/x1", "a.b-c_d", "x1"},
		{"0/0", "0", "0"},
		{strings.Repeat("a", 63), strings.Repeat("a", 63), "default"},
	} {
		u, d, err := ParseID(tc.in)
		if err != nil || u != tc.user || d != tc.device {
			t.Errorf("ParseID(%q) = %q, %q, %v; want %q, %q", tc.in, u, d, err, tc.user, tc.device)
		}
	}
	for _, in := range []string{"", "/", "alice/", "/phone", "Alice", "alice/Phone", "al ice", "-alice", ".alice", "alice/phone/x", "alice\n", strings.Repeat("a", 64), "ü"} {
		if _, _, err := ParseID(in); err == nil {
			t.Errorf("ParseID(%q) accepted", in)
		}
	}
}

func TestPeerStringHasNoKeys(t *testing.T) {
	p := testParams(false).Peer
	s := p.String()
	for _, k := range []string{p.PrivateKey.String(), p.PresharedKey.String(), p.PublicKey.String()} {
		if strings.Contains(s, k) {
			t.Errorf("Peer.String() %q contains a key", s)
		}
	}
	if s != "alice/phone 10.20.0.2 fd20::2" {
		t.Errorf("Peer.String() = %q", s)
	}
	if got := joinPrefixes(p.AllowedIPs()); got != "10.20.0.2/32, fd20::2/128" {
		t.Errorf("Peer.AllowedIPs() = %s", got)
	}
}
