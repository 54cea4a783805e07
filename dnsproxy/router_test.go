package dnsproxy

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func TestParseUpstream(t *testing.T) {
	tests := []struct {
		in   string
		want Upstream
		err  bool
	}{
		{in: "10.30.0.53", want: Upstream{Proto: "udp", Addr: netip.MustParseAddrPort("10.30.0.53:53")}},
		{in: "10.30.0.53:5353", want: Upstream{Proto: "udp", Addr: netip.MustParseAddrPort("10.30.0.53:5353")}},
		{in: "fd20::53", want: Upstream{Proto: "udp", Addr: netip.MustParseAddrPort("[fd20::53]:53")}},
		{in: "[2001:db8::53]:5300", want: Upstream{Proto: "udp", Addr: netip.MustParseAddrPort("[2001:db8::53]:5300")}},
		{in: "tcp://10.30.0.53", want: Upstream{Proto: "tcp", Addr: netip.MustParseAddrPort("10.30.0.53:53")}},
		{in: "tcp://[fd20::53]:54", want: Upstream{Proto: "tcp", Addr: netip.MustParseAddrPort("[fd20::53]:54")}},
		{in: "tls://9.9.9.9#dns.quad9.net", want: Upstream{Proto: "tls", Addr: netip.MustParseAddrPort("9.9.9.9:853"), ServerName: "dns.quad9.net"}},
		{in: "tls://[2001:db8::1]:8853#dns.example", want: Upstream{Proto: "tls", Addr: netip.MustParseAddrPort("[2001:db8::1]:8853"), ServerName: "dns.example"}},
		{in: "tls://9.9.9.9", err: true},
		{in: "10.0.0.1#name", err: true},
		{in: "https://9.9.9.9", err: true},
		{in: "dns.google", err: true},
		{in: "10.0.0.1:0", err: true},
		{in: "", err: true},
		{in: "fe80::1%eth0", err: true},
	}
	for _, tt := range tests {
		got, err := ParseUpstream(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("ParseUpstream(%q) error = %v, want error %v", tt.in, err, tt.err)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("ParseUpstream(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if err == nil {
			again, err := ParseUpstream(got.String())
			if err != nil || again != got {
				t.Errorf("round trip %q → %q → %+v, %v", tt.in, got.String(), again, err)
			}
		}
	}
}

func TestRouterUnit(t *testing.T) {
	corp, sub, rev, def := &group{label: "corp"}, &group{label: "sub"}, &group{label: "rev"}, &group{label: "default"}
	r := &router{zones: map[string]*group{
		"corp.example.":       corp,
		"eng.corp.example.":   sub,
		"30.10.in-addr.arpa.": rev,
		"0.2.d.f.ip6.arpa.":   rev,
	}, def: def}
	for name, want := range map[string]*group{
		"corp.example.":                     corp,
		"CORP.Example":                      corp,
		"www.corp.example.":                 corp,
		"a.b.ENG.corp.example.":             sub,
		"eng.corp.example.":                 sub,
		"xcorp.example.":                    def,
		"corp.example.com.":                 def,
		"example.":                          def,
		".":                                 def,
		"53.0.30.10.in-addr.arpa.":          rev,
		"1.0.0.0.0.0.0.0.0.2.d.f.ip6.arpa.": rev,
		"53.0.31.10.in-addr.arpa.":          def,
	} {
		if got := r.route(name); got != want {
			t.Errorf("route(%q) = %s, want %s", name, got.label, want.label)
		}
	}
}

// TestRouting runs the whole path: each zone's server answers its own
// address, and the default group gets the rest.
func TestRouting(t *testing.T) {
	corp := startFake(t, answerA("10.30.0.1", 60))
	eng := startFake(t, answerA("10.30.0.2", 60))
	rev := startFake(t, answerA("10.30.0.3", 60))
	pub := startFake(t, answerA("198.51.100.1", 60))
	cfg := testConfig(pub.addr)
	cfg.Zones = []Zone{
		{Name: "Corp.Example", Upstreams: MustParseUpstreams(corp.addr)},
		{Name: "eng.corp.example.", Upstreams: MustParseUpstreams(eng.addr)},
		{Name: "30.10.in-addr.arpa", Upstreams: MustParseUpstreams(rev.addr)},
	}
	p, _ := startProxy(t, cfg, Options{})
	for _, tc := range []struct{ name, want string }{
		{"host.corp.example.", "10.30.0.1"},
		{"HOST.CORP.EXAMPLE.", "10.30.0.1"},
		{"a.eng.corp.example.", "10.30.0.2"},
		{"xcorp.example.", "198.51.100.1"},
		{"www.example.com.", "198.51.100.1"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			r := ask(t, p, network, tc.name, dns.TypeA, 1232)
			if got := firstA(t, r); got != tc.want {
				t.Errorf("%s %s: got %s, want %s", network, tc.name, got, tc.want)
			}
		}
	}
	r := ask(t, p, "udp", "53.0.30.10.in-addr.arpa.", dns.TypePTR, 0)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "host-10-30-0-3." {
		t.Errorf("reverse zone answer: %v", r.Answer)
	}
	if pub.count("host.corp.example.") != 0 || pub.count("53.0.30.10.in-addr.arpa.") != 0 {
		t.Errorf("default group saw internal names")
	}
	if corp.count("xcorp.example.") != 0 {
		t.Errorf("corp group saw xcorp.example")
	}
}

// TestACLRefused: sources outside AllowedSources (loopback is not a tunnel
// prefix here) get REFUSED over UDP and TCP, and nothing is forwarded.
func TestACLRefused(t *testing.T) {
	up := startFake(t, answerA("198.51.100.1", 60))
	cfg := testConfig(up.addr)
	cfg.AllowedSources = []netip.Prefix{netip.MustParsePrefix("10.20.0.0/24"), netip.MustParsePrefix("fd20::/64")}
	p, _ := startProxy(t, cfg, Options{})
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, p, network, "www.example.com.", dns.TypeA, 0)
		if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Errorf("%s: rcode %s, answers %d; want REFUSED and none", network, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	r, err := p.Exchange(t.Context(), m, netip.MustParseAddr("192.0.2.7"))
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("Exchange from underlay: %v %v", r, err)
	}
	r, err = p.Exchange(t.Context(), m, netip.MustParseAddr("10.20.0.2"))
	if err != nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("Exchange from tunnel: %v %v", r, err)
	}
	if n := up.count("www.example.com."); n != 1 {
		t.Errorf("upstream saw %d queries, want 1 (only the tunnel source)", n)
	}
}
