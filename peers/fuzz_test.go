package peers

import (
	"bytes"
	"slices"
	"testing"
)

// FuzzLint checks that Lint never panics, reports only real lines and
// complete findings, and is deterministic. Seeds are in
// testdata/fuzz/FuzzLint; run with go test -fuzz=FuzzLint ./peers.
func FuzzLint(f *testing.F) {
	f.Add([]byte("[Interface]\nPrivateKey = "+lintPriv+"\nAddress = 10.20.0.2/32\nDNS = 10.20.0.53\n[Peer]\nAllowedIPs = 10.20.0.53/32\n"), 1420)
	f.Fuzz(func(t *testing.T, data []byte, mtu int) {
		opts := LintOptions{TunnelMTU: mtu}
		got, err := Lint(data, opts)
		again, err2 := Lint(data, opts)
		if (err == nil) != (err2 == nil) || !slices.Equal(got, again) {
			t.Fatalf("Lint is not deterministic")
		}
		if err != nil {
			if len(got) != 0 {
				t.Fatalf("findings returned with error %v", err)
			}
			return
		}
		lines := bytes.Count(data, []byte("\n")) + 1
		for _, fd := range got {
			if fd.Line < 0 || fd.Line > lines {
				t.Errorf("finding on line %d of %d: %v", fd.Line, lines, fd)
			}
			if fd.Severity != SeverityError && fd.Severity != SeverityWarning {
				t.Errorf("bad severity %q", fd.Severity)
			}
			if fd.Message == "" || fd.Fix == "" {
				t.Errorf("incomplete finding %+v", fd)
			}
		}
		if !slices.IsSortedFunc(got, func(a, b Finding) int { return a.Line - b.Line }) {
			t.Errorf("findings not sorted by line")
		}
	})
}

// FuzzDecodeStore checks that a damaged peers.json never panics the
// decoder, and that whatever it accepts survives an encode/decode round trip.
func FuzzDecodeStore(f *testing.F) {
	f.Add([]byte(`{"version":1,"peers":[{"user":"a","device":"default","public_key":"` + lintPub + `","ipv4":"10.20.0.2","ipv6":"fd20::2","created":"2026-01-02T03:04:05Z"}]}`))
	f.Add([]byte(`{"version":1,"peers":[]}`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		list, reason := decodeStore(data)
		if reason != "" {
			return
		}
		enc, err := encodeStore(list)
		if err != nil {
			t.Fatalf("encode accepted store: %v", err)
		}
		again, reason := decodeStore(enc)
		if reason != "" {
			t.Fatalf("re-encoded store rejected: %s\n%s", reason, enc)
		}
		if len(again) != len(list) {
			t.Fatalf("round trip lost peers")
		}
		for i := range list {
			if list[i].String() != again[i].String() || list[i].PublicKey != again[i].PublicKey || !list[i].Created.Equal(again[i].Created) {
				t.Fatalf("round trip changed %v into %v", list[i], again[i])
			}
		}
	})
}
