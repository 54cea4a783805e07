package firewall

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/nftables/expr"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func goldenSpecs(t *testing.T) map[string]Spec {
	t.Helper()
	base := func() Spec {
		return Spec{
			Table:          DefaultTable,
			Interface:      "wg0",
			Resolvers:      []netip.Addr{netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("fd20::53")},
			TunnelPrefixes: prefixes("10.20.0.0/24", "fd20::/64"),
			DoHSet:         prefixes("203.0.113.10", "2001:db8:53::10"),
		}
	}
	splitRedirect := base()
	splitRedirect.OffPolicyDNS = ActionRedirect

	splitReject := base()
	splitReject.OffPolicyDNS = ActionReject
	splitReject.DoT = ActionAllow
	splitReject.DoH = ActionAllow
	splitReject.PeerToPeer = true

	fullReject := base() // defaults: full mode rejects
	fullReject.FullTunnel = true
	fullReject.Egress = "eth0"

	extra, err := LoadDoHFile(filepath.Join("testdata", "doh.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dohFile := base()
	dohFile.DoHAllow = prefixes("203.0.113.8/29", "2001:db8:53:ff::/64")
	dohFile.DoHSet = NormalizePrefixes(append(dohFile.DoHSet, extra...), dohFile.DoHAllow)

	v4Only := base()
	v4Only.Resolvers = []netip.Addr{netip.MustParseAddr("10.20.0.53"), netip.MustParseAddr("10.20.0.54")}

	encrypted := base()
	encrypted.Encrypted = EncryptedListeners{DoT: true, DoH: true}
	encrypted.DoT = ActionRedirect

	return map[string]Spec{
		"encrypted":      encrypted,
		"split_redirect": splitRedirect,
		"split_reject":   splitReject,
		"full_reject":    fullReject,
		"doh_file":       dohFile,
		"v4_resolvers":   v4Only,
	}
}

func TestGolden(t *testing.T) {
	for name, spec := range goldenSpecs(t) {
		t.Run(name, func(t *testing.T) {
			s, err := spec.normalize()
			if err != nil {
				t.Fatal(err)
			}
			got := build(s, egress{s.Egress, s.Egress}).render(nil, nil)
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Errorf("rendering differs from %s (run with -update after checking):\n--- got\n%s\n--- want\n%s", path, got, want)
			}
		})
	}
}

func TestSpecValidation(t *testing.T) {
	ok := Spec{Interface: "wg0", Resolvers: []netip.Addr{netip.MustParseAddr("10.20.0.53")}}
	n, err := ok.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if n.Table != DefaultTable || n.OffPolicyDNS != ActionRedirect || n.DoT != ActionReject || n.DoH != ActionReject {
		t.Errorf("defaults = %q %q %q %q", n.Table, n.OffPolicyDNS, n.DoT, n.DoH)
	}
	full := ok
	full.FullTunnel = true
	if n, _ := full.normalize(); n.OffPolicyDNS != ActionReject {
		t.Errorf("full mode default off-policy = %q, want reject", n.OffPolicyDNS)
	}
	for name, mut := range map[string]func(*Spec){
		"no interface":   func(s *Spec) { s.Interface = "" },
		"long interface": func(s *Spec) { s.Interface = "wg0123456789abcdef" },
		"no resolvers":   func(s *Spec) { s.Resolvers = nil },
		"bad action":     func(s *Spec) { s.OffPolicyDNS = "allow" },
		"bad dot":        func(s *Spec) { s.DoT = "redirect" },
		"zoned resolver": func(s *Spec) { s.Resolvers = []netip.Addr{netip.MustParseAddr("fe80::1%wg0")} },
	} {
		s := ok
		mut(&s)
		if _, err := s.normalize(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestAccountingRulesHaveNoVerdict checks that per-peer accounting never
// shares a rule with a verdict: a dynset that cannot add an element (set
// full, no memory) ends its rule, which would skip a reject or DNAT in it.
func TestAccountingRulesHaveNoVerdict(t *testing.T) {
	for name, spec := range goldenSpecs(t) {
		s, err := spec.normalize()
		if err != nil {
			t.Fatal(err)
		}
		rs := build(s, egress{s.Egress, s.Egress})
		accounted := map[Reason]bool{}
		for _, c := range rs.chains {
			for _, r := range c.rules {
				var dyn, final bool
				for _, e := range r.exprs() {
					switch e := e.(type) {
					case *expr.Dynset:
						dyn = true
						if st := rs.set(e.SetName); st == nil || st.peer == "" || e.SetID != st.id {
							t.Errorf("%s: dynset into %q, not a per-peer set", name, e.SetName)
						} else {
							accounted[st.peer] = true
						}
					case *expr.Verdict, *expr.Reject, *expr.NAT, *expr.Masq:
						final = true
					}
				}
				if dyn && final {
					t.Errorf("%s: chain %s: accounting inside a verdict rule: %s", name, c.name, r.text())
				}
			}
		}
		for _, st := range rs.sets {
			if st.peer != "" && !accounted[st.peer] {
				t.Errorf("%s: set %s is never filled", name, st.name)
			}
		}
	}
}
