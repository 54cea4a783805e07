package firewall

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := parsePrefixOrAddr(s)
		if err != nil {
			panic(err)
		}
		out = append(out, p)
	}
	return out
}

func TestNormalizePrefixes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		in, minus []string
		want      []string
	}{
		{"empty", nil, nil, nil},
		{"duplicates", []string{"192.0.2.1", "192.0.2.1/32"}, nil, []string{"192.0.2.1/32"}},
		{"overlap", []string{"10.30.0.0/16", "10.30.5.0/24", "10.30.0.0/17"}, nil, []string{"10.30.0.0/16"}},
		{"adjacent merge", []string{"198.51.100.0/25", "198.51.100.128/25"}, nil, []string{"198.51.100.0/24"}},
		{"adjacent unaligned", []string{"192.0.2.1", "192.0.2.2"}, nil, []string{"192.0.2.1/32", "192.0.2.2/32"}},
		{"families sorted v4 first", []string{"2001:db8::1", "203.0.113.9", "10.0.0.0/8"}, nil,
			[]string{"10.0.0.0/8", "203.0.113.9/32", "2001:db8::1/128"}},
		{"mapped v4", []string{"::ffff:192.0.2.7/128"}, nil, []string{"192.0.2.7/32"}},
		{"unmasked", []string{"192.0.2.77/24"}, nil, []string{"192.0.2.0/24"}},
		{"subtract host", []string{"203.0.113.0/30"}, []string{"203.0.113.1"}, []string{"203.0.113.0/32", "203.0.113.2/31"}},
		{"subtract all", []string{"203.0.113.0/30"}, []string{"203.0.113.0/24"}, nil},
		{"subtract other family", []string{"203.0.113.0/30"}, []string{"2001:db8::/32"}, []string{"203.0.113.0/30"}},
		{"subtract v6 middle", []string{"2001:db8::/126"}, []string{"2001:db8::1", "2001:db8::2"}, []string{"2001:db8::/128", "2001:db8::3/128"}},
		{"whole space", []string{"0.0.0.0/1", "128.0.0.0/1", "::/0"}, nil, []string{"0.0.0.0/0", "::/0"}},
		{"top of space minus", []string{"255.255.255.0/24"}, []string{"255.255.255.255"},
			[]string{"255.255.255.0/25", "255.255.255.128/26", "255.255.255.192/27", "255.255.255.224/28",
				"255.255.255.240/29", "255.255.255.248/30", "255.255.255.252/31", "255.255.255.254/32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NormalizePrefixes(prefixes(tc.in...), prefixes(tc.minus...))
			var gs []string
			for _, p := range got {
				gs = append(gs, p.String())
			}
			if !reflect.DeepEqual(gs, tc.want) {
				t.Errorf("NormalizePrefixes(%v - %v) = %v, want %v", tc.in, tc.minus, gs, tc.want)
			}
		})
	}
}

func TestNormalizeRangesAdjacentMerged(t *testing.T) {
	rs := normalizeRanges(prefixes("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::5"), nil)
	if len(rs) != 2 || rs[0].String() != "192.0.2.1-192.0.2.3" || rs[1].String() != "2001:db8::5" {
		t.Fatalf("ranges = %v", rs)
	}
}

func TestLoadDoHFile(t *testing.T) {
	got, err := LoadDoHFile(filepath.Join("testdata", "doh.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := prefixes("203.0.113.10", "203.0.113.0/28", "2001:db8:53::/48", "2001:db8:53:1::10", "198.51.100.0/25", "198.51.100.128/25")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadDoHFile = %v, want %v", got, want)
	}
}

func TestLoadDoHFileErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "doh.txt")
	if err := os.WriteFile(path, []byte("# ok\n192.0.2.1\n\n  dns.google  # a name, not an address\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadDoHFile(path)
	if err == nil || !strings.Contains(err.Error(), path+":4:") || !strings.Contains(err.Error(), `"dns.google"`) {
		t.Fatalf("error = %v, want file:line 4 and the bad entry", err)
	}
	for _, bad := range []string{"192.0.2.0/33", "fe80::1%eth0", "10.0.0.1/x"} {
		if err := os.WriteFile(path, []byte(bad+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadDoHFile(path); err == nil || !strings.Contains(err.Error(), ":1:") {
			t.Errorf("LoadDoHFile(%q) error = %v, want line 1", bad, err)
		}
	}
	if _, err := LoadDoHFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestBuiltinDoH(t *testing.T) {
	for _, s := range builtinDoH {
		if _, err := parsePrefixOrAddr(s); err != nil {
			t.Errorf("builtin entry %q: %v", s, err)
		}
	}
	got := BuiltinDoH()
	var v4, v6 int
	for _, p := range got {
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 < 20 || v6 < 20 {
		t.Errorf("builtin DoH has %d v4 and %d v6 prefixes, want both families well covered", v4, v6)
	}
	for _, a := range []string{"8.8.8.8", "1.1.1.1", "9.9.9.9", "2001:4860:4860::8888", "2606:4700:4700::1111", "2620:fe::fe", "94.140.14.14", "194.242.2.2", "208.67.222.222", "45.90.28.1"} {
		addr := netip.MustParseAddr(a)
		found := false
		for _, p := range got {
			found = found || p.Contains(addr)
		}
		if !found {
			t.Errorf("builtin DoH lacks %s", a)
		}
	}
	if !reflect.DeepEqual(NormalizePrefixes(got, nil), got) {
		t.Error("BuiltinDoH is not normalized")
	}
}
