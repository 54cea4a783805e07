package peers

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"image/png"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/skip2/go-qrcode"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var update = flag.Bool("update", false, "rewrite testdata/golden files")

// fixedKey is a deterministic key for golden files.
func fixedKey(seed byte) wgtypes.Key {
	var b [wgtypes.KeyLen]byte
	for i := range b {
		b[i] = seed + byte(i)
	}
	k, _ := wgtypes.NewKey(b[:])
	return k
}

// countingReader yields 0x00, 0x01, ... so that UUIDs are fixed.
type countingReader struct{ n byte }

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.n
		r.n++
	}
	return len(p), nil
}

func testParams(full bool) ClientParams {
	priv := fixedKey(1)
	psk := fixedKey(100)
	return ClientParams{
		Peer: Peer{
			User: "alice", Device: "phone",
			PublicKey: priv.PublicKey(), PrivateKey: &priv, PresharedKey: &psk,
			IPv4: mustAddr("10.20.0.2"), IPv6: mustAddr("fd20::2"),
			Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		},
		ServerPublicKey: fixedKey(200),
		Endpoint:        "vpn.example.com:51820",
		MTU:             1420,
		FullTunnel:      full,
		Routes:          []netip.Prefix{mustPrefix("10.30.0.0/16")},
		Resolvers:       []netip.Addr{mustAddr("10.20.0.53"), mustAddr("fd20::53")},
		SearchDomains:   []string{"corp.example"},
		rand:            &countingReader{},
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestRenderGolden(t *testing.T) {
	ownKey := testParams(false)
	ownKey.Peer.PrivateKey = nil
	v4only := testParams(false)
	v4only.Peer.IPv6 = netip.Addr{}
	v4only.Keepalive = -1
	v4only.MTU = 0
	v4only.SearchDomains = nil
	v4only.Endpoint = "[2001:db8::1]:51820"
	for _, tc := range []struct {
		name, format string
		p            ClientParams
	}{
		{"split.conf", "conf", testParams(false)},
		{"full.conf", "conf", testParams(true)},
		{"ownkey.conf", "conf", ownKey},
		{"nodomains.conf", "conf", v4only},
		{"split.qr", "qr", testParams(false)},
		{"split.nrpt.ps1", "nrpt", testParams(false)},
		{"full.nrpt.ps1", "nrpt", testParams(true)},
		{"split.mobileconfig", "mobileconfig", testParams(false)},
		{"split.resolved.conf", "resolved", testParams(false)},
		{"full.resolved.conf", "resolved", testParams(true)},
		{"encrypted.mobileconfig", "mobileconfig", encryptedParams(true)},
		{"encrypted-dot.mobileconfig", "mobileconfig", encryptedParams(false)},
		{"encrypted.nrpt.ps1", "nrpt", encryptedParams(true)},
		{"encrypted.resolved.conf", "resolved", encryptedParams(true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Render(tc.format, tc.p)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, out)
		})
	}
}

// The literal split config, so that a reader of this test sees the product.
func TestRenderConfLiteral(t *testing.T) {
	out, err := Render("conf", testParams(false))
	if err != nil {
		t.Fatal(err)
	}
	priv, psk, srv := fixedKey(1), fixedKey(100), fixedKey(200)
	want := `# sluice client config for alice/phone
# Gateway vpn.example.com:51820. DNS is answered inside the tunnel: keep the resolver
# addresses (10.20.0.53, fd20::53) in AllowedIPs.
[Interface]
PrivateKey = ` + priv.String() + `
Address = 10.20.0.2/32, fd20::2/128
DNS = 10.20.0.53, fd20::53, corp.example
MTU = 1420

[Peer]
PublicKey = ` + srv.String() + `
PresharedKey = ` + psk.String() + `
Endpoint = vpn.example.com:51820
AllowedIPs = 10.20.0.53/32, 10.30.0.0/16, fd20::53/128
PersistentKeepalive = 25
`
	if string(out) != want {
		t.Errorf("conf:\n%s\nwant:\n%s", out, want)
	}
}

func TestRenderedConfigsLintClean(t *testing.T) {
	for _, full := range []bool{false, true} {
		for _, format := range []string{"conf", "resolved"} {
			out, err := Render(format, testParams(full))
			if err != nil {
				t.Fatal(err)
			}
			findings, err := Lint(out, LintOptions{TunnelMTU: 1420})
			if err != nil {
				t.Fatalf("Lint(%s full=%v): %v", format, full, err)
			}
			if len(findings) != 0 {
				t.Errorf("Lint(%s full=%v) = %v, want none", format, full, findings)
			}
		}
	}
	// The placeholder is caught.
	p := testParams(false)
	p.Peer.PrivateKey = nil
	out, _ := Render("conf", p)
	findings, _ := Lint(out, LintOptions{})
	if len(findings) != 1 || !strings.Contains(findings[0].Message, "placeholder") || findings[0].Line != 6 {
		t.Errorf("Lint(own-key conf) = %v, want one placeholder finding on line 6", findings)
	}
}

func TestRenderQRAndPNGDecodeToConf(t *testing.T) {
	p := testParams(false)
	conf := renderConf(mustNormalize(t, p), confOptions{})
	if strings.Contains(conf, "#") {
		t.Error("QR payload carries comments")
	}
	q, err := qrcode.New(conf, qrcode.Medium)
	if err != nil {
		t.Fatal(err)
	}
	bits := q.Bitmap()
	out, err := Render("png", p)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("png output does not decode: %v", err)
	}
	if w := img.Bounds().Dx(); w != len(bits)*qrModulePixels {
		t.Fatalf("png width %d, want %d", w, len(bits)*qrModulePixels)
	}
	for y := range bits {
		for x := range bits[y] {
			r, _, _, _ := img.At(x*qrModulePixels+qrModulePixels/2, y*qrModulePixels+qrModulePixels/2).RGBA()
			if dark := r < 0x8000; dark != bits[y][x] {
				t.Fatalf("module (%d,%d) dark=%v, want %v", x, y, dark, bits[y][x])
			}
		}
	}
	txt, err := Render("qr", p)
	if err != nil {
		t.Fatal(err)
	}
	if string(txt) != q.ToSmallString(false) {
		t.Error("qr text differs from the QR code of the conf")
	}
}

func mustNormalize(t *testing.T, p ClientParams) ClientParams {
	t.Helper()
	if err := p.normalize(); err != nil {
		t.Fatal(err)
	}
	return p
}

// plistNode is a generic XML tree to check the profile structure.
type plistNode struct {
	XMLName  xml.Name
	Text     string      `xml:",chardata"`
	Children []plistNode `xml:",any"`
}

// dict turns a <dict> node into key -> value node.
func dict(t *testing.T, n plistNode) map[string]plistNode {
	t.Helper()
	if n.XMLName.Local != "dict" || len(n.Children)%2 != 0 {
		t.Fatalf("not a dict: %s with %d children", n.XMLName.Local, len(n.Children))
	}
	m := map[string]plistNode{}
	for i := 0; i < len(n.Children); i += 2 {
		if n.Children[i].XMLName.Local != "key" {
			t.Fatalf("dict entry %d is %s, not key", i, n.Children[i].XMLName.Local)
		}
		m[n.Children[i].Text] = n.Children[i+1]
	}
	return m
}

func TestRenderMobileconfigStructure(t *testing.T) {
	p := testParams(false)
	p.rand = nil // real crypto/rand UUIDs
	p.ApplePlatform = "macos"
	p.TunnelName = "corp<&>"
	if _, err := Render("mobileconfig", p); err == nil {
		t.Fatal("tunnel name with markup accepted")
	}
	p.TunnelName = "corp"
	out, err := Render("mobileconfig", p)
	if err != nil {
		t.Fatal(err)
	}
	var root plistNode
	if err := xml.Unmarshal(out, &root); err != nil {
		t.Fatalf("profile is not XML: %v", err)
	}
	if root.XMLName.Local != "plist" || len(root.Children) != 1 {
		t.Fatalf("root = %s with %d children", root.XMLName.Local, len(root.Children))
	}
	top := dict(t, root.Children[0])
	want := map[string]string{"PayloadType": "Configuration", "PayloadVersion": "1", "PayloadIdentifier": "vpn.sluice.corp.alice.phone"}
	for k, v := range want {
		if top[k].Text != v {
			t.Errorf("top %s = %q, want %q", k, top[k].Text, v)
		}
	}
	if top["PayloadVersion"].XMLName.Local != "integer" {
		t.Error("PayloadVersion is not an integer")
	}
	uuidRE := `^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$`
	content := top["PayloadContent"]
	if content.XMLName.Local != "array" || len(content.Children) != 1 {
		t.Fatalf("PayloadContent = %s with %d children", content.XMLName.Local, len(content.Children))
	}
	vpn := dict(t, content.Children[0])
	for k, v := range map[string]string{
		"PayloadType": "com.apple.vpn.managed", "VPNType": "VPN", "VPNSubType": "com.wireguard.macos",
		"UserDefinedName": "corp", "PayloadVersion": "1", "PayloadDisplayName": "VPN",
	} {
		if vpn[k].Text != v {
			t.Errorf("vpn %s = %q, want %q", k, vpn[k].Text, v)
		}
	}
	for _, u := range []string{top["PayloadUUID"].Text, vpn["PayloadUUID"].Text} {
		if !regexp.MustCompile(uuidRE).MatchString(u) {
			t.Errorf("PayloadUUID %q is not a v4 UUID", u)
		}
	}
	if top["PayloadUUID"].Text == vpn["PayloadUUID"].Text {
		t.Error("profile and payload share a UUID")
	}
	wg := dict(t, vpn["VendorConfig"])["WgQuickConfig"].Text
	if wg != renderConf(mustNormalize(t, p), confOptions{}) {
		t.Errorf("WgQuickConfig does not round-trip the conf:\n%s", wg)
	}
	remote := dict(t, vpn["VPN"])
	if remote["RemoteAddress"].Text != "vpn.example.com:51820" || remote["AuthenticationMethod"].Text != "Password" {
		t.Errorf("VPN dict = %v", remote)
	}
}

func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		format string
		mod    func(*ClientParams)
		is     error
		substr string
	}{
		{"no endpoint", "conf", func(p *ClientParams) { p.Endpoint = "" }, ErrNoEndpoint, ""},
		{"endpoint without port", "conf", func(p *ClientParams) { p.Endpoint = "vpn.example.com" }, nil, "missing port"},
		{"endpoint with injection", "conf", func(p *ClientParams) { p.Endpoint = "a\nPostUp=x:1" }, nil, "neither an address"},
		{"no resolvers", "conf", func(p *ClientParams) { p.Resolvers = nil }, ErrNoResolvers, ""},
		{"bad domain", "nrpt", func(p *ClientParams) { p.SearchDomains = []string{"corp.example'; rm"} }, nil, "not a DNS name"},
		{"png without private key", "png", func(p *ClientParams) { p.Peer.PrivateKey = nil }, ErrNoPrivateKey, ""},
		{"qr without private key", "qr", func(p *ClientParams) { p.Peer.PrivateKey = nil }, ErrNoPrivateKey, ""},
		{"mobileconfig without private key", "mobileconfig", func(p *ClientParams) { p.Peer.PrivateKey = nil }, ErrNoPrivateKey, ""},
		{"unknown format", "yaml", func(p *ClientParams) {}, nil, "unknown format"},
		{"small mtu", "conf", func(p *ClientParams) { p.MTU = 1000 }, nil, "mtu 1000"},
		{"no server key", "conf", func(p *ClientParams) { p.ServerPublicKey = wgtypes.Key{} }, nil, "server public key"},
		{"bad platform", "mobileconfig", func(p *ClientParams) { p.ApplePlatform = "tvos" }, nil, "apple platform"},
		{"uuid source fails", "mobileconfig", func(p *ClientParams) { p.rand = io.LimitReader(&countingReader{}, 4) }, nil, "generate uuid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testParams(false)
			tc.mod(&p)
			_, err := Render(tc.format, p)
			if err == nil {
				t.Fatal("Render succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.substr) || !strings.Contains(err.Error(), "alice/phone") {
				t.Errorf("error %q lacks %q or the peer id", err, tc.substr)
			}
		})
	}
}

func TestPSQuote(t *testing.T) {
	for in, want := range map[string]string{
		"plain":    "'plain'",
		"it's":     "'it''s'",
		"a\u2019b": "'a\u2019\u2019b'",
		"$x `y`":   "'$x `y`'",
	} {
		if got := psQuote(in); got != want {
			t.Errorf("psQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFormatsAllRender(t *testing.T) {
	for _, f := range Formats() {
		if _, err := Render(f, testParams(false)); err != nil {
			t.Errorf("Render(%s): %v", f, err)
		}
	}
}

// TestRenderZonesRouted checks that internal zones which are not search
// domains still reach the tunnel resolvers in the per-domain formats, and
// stay out of the wg-quick DNS line.
func TestRenderZonesRouted(t *testing.T) {
	p := testParams(false)
	p.SearchDomains = []string{"corp.example"}
	p.Zones = []string{"corp.example", "30.10.in-addr.arpa"}
	nrpt, err := Render("nrpt", p)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-Namespace '.corp.example'", "-Namespace '.30.10.in-addr.arpa'"} {
		if !strings.Contains(string(nrpt), want) {
			t.Errorf("nrpt lacks %s:\n%s", want, nrpt)
		}
	}
	res, err := Render("resolved", p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(res), "resolvectl domain %i corp.example ~30.10.in-addr.arpa;") {
		t.Errorf("resolved variant does not route the reverse zone:\n%s", res)
	}
	conf, err := Render("conf", p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(conf), "in-addr.arpa") {
		t.Errorf("conf DNS line lists a zone as a search domain:\n%s", conf)
	}
}

func TestRenderNRPTIdempotentAndSuffixes(t *testing.T) {
	for _, full := range []bool{false, true} {
		out, err := Render("nrpt", testParams(full))
		if err != nil {
			t.Fatal(err)
		}
		s := string(out)
		rm := strings.Index(s, "\nGet-DnsClientNrptRule | Where-Object { $_.Comment -eq $sluiceComment } | ForEach-Object { Remove-DnsClientNrptRule")
		add := strings.Index(s, "\nAdd-DnsClientNrptRule")
		if rm < 0 || add < 0 || rm > add {
			t.Errorf("full=%v: the script does not remove its earlier rules before adding:\n%s", full, s)
		}
		if !strings.Contains(s, "$sluiceComment = 'sluice alice/phone'") || !strings.Contains(s, "-Comment $sluiceComment -DisplayName $sluiceComment") {
			t.Errorf("full=%v: rules not marked with the sluice comment:\n%s", full, s)
		}
		if !strings.Contains(s, "Set-DnsClientGlobalSetting -SuffixSearchList @($current + $sluiceSuffixes | Select-Object -Unique)") ||
			!strings.Contains(s, "$sluiceSuffixes = @('corp.example')") {
			t.Errorf("full=%v: search suffix list not set idempotently:\n%s", full, s)
		}
		down := strings.Contains(s, "while\n# the tunnel is down")
		if down != full {
			t.Errorf("full=%v: comment on the catch-all rule while the tunnel is down present=%v:\n%s", full, down, s)
		}
	}
	p := testParams(false)
	p.SearchDomains = nil
	p.Zones = []string{"corp.example"}
	out, err := Render("nrpt", p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "SuffixSearchList @(") {
		t.Errorf("suffix list set without search domains:\n%s", out)
	}
}

func TestRenderMobileconfigPlatforms(t *testing.T) {
	for _, plat := range []string{"ios", "macos"} {
		p := testParams(false)
		p.ApplePlatform = plat
		out, err := Render("mobileconfig", p)
		if err != nil {
			t.Fatal(err)
		}
		want := "<key>VPNSubType</key>\n\t\t\t<string>com.wireguard." + plat + "</string>"
		if !strings.Contains(string(out), want) {
			t.Errorf("%s profile lacks %q:\n%s", plat, want, out)
		}
	}
}
