package peers

import (
	"strings"
	"testing"
)

// Keys used in the hand-written configs (valid base64 32-byte keys).
const (
	lintPriv = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
	lintPub  = "yMnKy8zNzs/Q0dLT1NXW19jZ2tvc3d7f4OHi4+Tl5uc="
)

func TestLint(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf string
		opts LintOptions
		want []Finding
	}{
		{
			name: "clean split config, messy formatting",
			conf: `# hand written
[interface]
privatekey=` + lintPriv + `
ADDRESS = 10.20.0.2/32,fd20::2/128   # both families
Dns = 10.20.0.53
DNS = fd20::53 corp.example, lab.example
PostUp = logger up
MTU = 1380

[Peer]  
PublicKey = ` + lintPub + `
AllowedIPs = 10.30.0.0/16
AllowedIPs = 10.20.0.53, fd20::53/128
Endpoint = 192.0.2.1:51820
`,
			opts: LintOptions{TunnelMTU: 1420},
		},
		{
			name: "no DNS line",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\n\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.30.0.0/16\n",
			want: []Finding{{Line: 1, Severity: "error",
				Message: "no DNS line: the device keeps asking the local network's resolver, so internal names fail and every lookup leaks outside the tunnel",
				Fix:     "add DNS = <in-tunnel resolver addresses> (IPv4 and IPv6, e.g. DNS = 10.20.0.53, fd20::53) and route them in AllowedIPs"}},
		},
		{
			name: "DNS servers not routed, v4 and v6",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32, fd20::2/128\nDNS = 10.20.0.53, fd20::53, corp.example\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.30.0.0/16, fd30::/48\n",
			want: []Finding{
				{Line: 4, Severity: "error", Message: "DNS server 10.20.0.53 is not in any peer's AllowedIPs: its queries bypass the tunnel", Fix: "add 10.20.0.53/32 to AllowedIPs"},
				{Line: 4, Severity: "error", Message: "DNS server fd20::53 is not in any peer's AllowedIPs: its queries bypass the tunnel", Fix: "add fd20::53/128 to AllowedIPs"},
			},
		},
		{
			name: "DNS routed by the second peer counts",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\nDNS = 10.40.0.53\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.30.0.0/16\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.40.0.0/24\n",
		},
		{
			name: "full tunnel v4 only leaks v6",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32, fd20::2/128\nDNS = 10.20.0.53, fd20::53\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 0.0.0.0/0\n",
			want: []Finding{
				{Line: 3, Severity: "warning", Message: "the interface has IPv6 address fd20::2/128 but no peer routes any IPv6 prefix: IPv6 traffic and AAAA answers for internal names leave outside the tunnel",
					Fix: "add ::/0 (full tunnel) or the internal IPv6 prefixes and the IPv6 resolver /128 to AllowedIPs"},
				{Line: 4, Severity: "error", Message: "DNS server fd20::53 is not in any peer's AllowedIPs: its queries bypass the tunnel", Fix: "add fd20::53/128 to AllowedIPs"},
				{Line: 7, Severity: "error", Message: "AllowedIPs routes all IPv4 (0.0.0.0/0) but not all IPv6: IPv6 traffic and DNS over IPv6 leave outside the tunnel", Fix: "add ::/0 to AllowedIPs"},
			},
		},
		{
			name: "full tunnel as /1 halves without v6",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\nDNS = 10.20.0.53\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 0.0.0.0/1, 128.0.0.0/1\n",
			want: []Finding{
				{Line: 7, Severity: "error", Message: "AllowedIPs routes all IPv4 (0.0.0.0/0) but not all IPv6: IPv6 traffic and DNS over IPv6 leave outside the tunnel", Fix: "add ::/0 to AllowedIPs"},
			},
		},
		{
			name: "v6 full without v4 full",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32, fd20::2/128\nDNS = 10.20.0.53, fd20::53\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = ::/0, 10.20.0.53/32\n",
			want: []Finding{
				{Line: 7, Severity: "error", Message: "AllowedIPs routes all IPv6 (::/0) but not all IPv4: IPv4 traffic and DNS over IPv4 leave outside the tunnel", Fix: "add 0.0.0.0/0 to AllowedIPs"},
			},
		},
		{
			name: "IPv6 address without IPv6 resolver",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\nAddress = fd20::2/128\nDNS = 10.20.0.53\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 0.0.0.0/0, ::/0\n",
			want: []Finding{
				{Line: 4, Severity: "warning", Message: "the interface has IPv6 address fd20::2/128 but DNS lists no IPv6 server: lookups over IPv6 can go to the local network's resolver",
					Fix: "add the in-tunnel IPv6 resolver (e.g. fd20::53) to DNS and its /128 to AllowedIPs"},
			},
		},
		{
			name: "no IPv4 route",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32, fd20::2/128\nDNS = fd20::53\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = fd20::/64\n",
			want: []Finding{
				{Line: 1, Severity: "warning", Message: "the interface has an IPv4 address but no peer routes any IPv4 prefix",
					Fix: "add 0.0.0.0/0 (full tunnel) or the internal IPv4 prefixes and the IPv4 resolver /32 to AllowedIPs"},
			},
		},
		{
			name: "MTU above tunnel",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\nDNS = 10.20.0.53\nMTU = 1500\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.20.0.0/24\n",
			opts: LintOptions{TunnelMTU: 1420},
			want: []Finding{
				{Line: 5, Severity: "warning", Message: "MTU 1500 is above the tunnel's 1420: large packets (big DNS answers, TCP) are fragmented or dropped", Fix: "set MTU = 1420 or lower"},
			},
		},
		{
			name: "MTU check skipped without tunnel MTU",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\nDNS = 10.20.0.53\nMTU = 9000\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.20.0.0/24\n",
		},
		{
			name: "placeholder private key and search-domain-only DNS",
			conf: "[Interface]\nPrivateKey = <paste your key>\nAddress = 10.20.0.2/32\nDNS = corp.example\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.20.0.0/24\n",
			want: []Finding{
				{Line: 1, Severity: "error", Message: "the DNS line lists search domains but no server address: lookups go to the local network's resolver", Fix: "add the in-tunnel resolver addresses to DNS (e.g. DNS = 10.20.0.53, fd20::53)"},
				{Line: 2, Severity: "error", Message: "PrivateKey is a placeholder, not a key: wg-quick refuses this config", Fix: "replace the PrivateKey value with the device's private key (44 characters of base64)"},
			},
		},
		{
			name: "resolvectl in PostUp counts as DNS",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\nPostUp = resolvectl dns %i 10.20.0.53 10.20.0.54#dns.corp.example && resolvectl domain %i ~corp.example\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.20.0.53/32\n",
			want: []Finding{
				{Line: 4, Severity: "error", Message: "DNS server 10.20.0.54 is not in any peer's AllowedIPs: its queries bypass the tunnel", Fix: "add 10.20.0.54/32 to AllowedIPs"},
			},
		},
		{
			name: "local stub resolver",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nAddress = 10.20.0.2/32\nDNS = 127.0.0.53\n[Peer]\nPublicKey = " + lintPub + "\nAllowedIPs = 10.20.0.0/24\n",
			want: []Finding{
				{Line: 4, Severity: "warning", Message: "DNS server 127.0.0.53 is a resolver on the device itself: where it forwards queries is outside the tunnel's control", Fix: "point DNS at the in-tunnel resolver addresses instead"},
			},
		},
		{
			name: "missing sections and key",
			conf: "[Interface]\nAddress = 10.20.0.2/32\nDNS = 10.20.0.53\n",
			want: []Finding{
				{Line: 0, Severity: "error", Message: "no [Peer] section: nothing is routed into the tunnel", Fix: "add the gateway as a [Peer] with PublicKey, Endpoint and AllowedIPs"},
				{Line: 1, Severity: "error", Message: "[Interface] has no PrivateKey", Fix: "add PrivateKey = <the device's private key>"},
				{Line: 3, Severity: "error", Message: "DNS server 10.20.0.53 is not in any peer's AllowedIPs: its queries bypass the tunnel", Fix: "add 10.20.0.53/32 to AllowedIPs"},
			},
		},
		{
			name: "two interface sections",
			conf: "[Interface]\nPrivateKey = " + lintPriv + "\nDNS = 10.20.0.53\n[Interface]\nAddress = 10.20.0.2/32\n[Peer]\nAllowedIPs = 10.20.0.0/24\n",
			want: []Finding{
				{Line: 4, Severity: "error", Message: "more than one [Interface] section", Fix: "merge the [Interface] sections into one"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Lint([]byte(tc.conf), tc.opts)
			if err != nil {
				t.Fatalf("Lint: %v", err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d findings, want %d:\n%s", len(got), len(tc.want), findingsString(got))
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("finding %d:\n got  %+v\n want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func findingsString(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.String() + "\n")
	}
	return b.String()
}

func TestLintParseErrors(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{"PrivateKey = x\n[Interface]\n", "line 1: \"privatekey\" before the first"},
		{"[Interface]\njust words\n", "line 2: expected Key = Value"},
		{"[Interface]\n[Wat]\n", "line 2: unknown section \"[Wat]\""},
		{"[Interface\n", "line 1: section header \"[Interface\" has no closing ]"},
		{"[Interface]\n = 4\n", "line 2: missing key"},
		{"[Peer]\nAllowedIPs = 10.0.0.0/33\n", "line 2: AllowedIPs entry \"10.0.0.0/33\""},
		{"[Interface]\nAddress = nope\n", "line 2: Address entry \"nope\""},
		{"[Interface]\n\n\nMTU = big\n", "line 4: MTU \"big\""},
	} {
		_, err := Lint([]byte(tc.conf), LintOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Lint(%q) error = %v, want %q", tc.conf, err, tc.want)
		}
	}
}

func TestLintCRLFAndBOM(t *testing.T) {
	conf := "\xef\xbb\xbf[Interface]\r\nPrivateKey = " + lintPriv + "\r\nAddress = 10.20.0.2/32\r\nDNS = 10.20.0.53\r\n[Peer]\r\nAllowedIPs = 10.20.0.53/32\r\n"
	got, err := Lint([]byte(conf), LintOptions{})
	if err != nil || len(got) != 0 {
		t.Errorf("Lint(CRLF) = %v, %v", got, err)
	}
}
