package peers

import (
	"bytes"
	"encoding/xml"
	"io"
	"testing"
)

// testCADER stands in for a CA certificate's DER (the renderers only encode it).
var testCADER = []byte("\x30\x82\x01\x0atest-ca-der")

// encryptedParams are testParams(false) with DoT and DoH on; doh=false
// offers DoT only and uses the operator's certificate (no CA payload).
func encryptedParams(doh bool) ClientParams {
	p := testParams(false)
	p.Encrypted = &EncryptedDNS{ServerName: "dns.corp.example", DoT: true, DoH: doh}
	if doh {
		p.Encrypted.CACert = testCADER
	}
	return p
}

func TestRenderEncrypted(t *testing.T) {
	out, err := Render("mobileconfig", encryptedParams(true))
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(out))
	for {
		if _, err := d.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("mobileconfig is not XML: %v", err)
		}
	}
	for _, want := range []string{
		"<string>com.apple.dnsSettings.managed</string>",
		"<string>HTTPS</string>",
		"<string>https://dns.corp.example/dns-query</string>",
		"<string>com.apple.security.root</string>",
		"<key>DNSServerAddressMatch</key>",
		"<string>fd20::53</string>",
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("mobileconfig lacks %s", want)
		}
	}
	out, err = Render("mobileconfig", encryptedParams(false))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("<string>TLS</string>")) || bytes.Contains(out, []byte("com.apple.security.root")) {
		t.Errorf("DoT-only profile with the operator's certificate:\n%s", out)
	}

	out, err = Render("resolved", encryptedParams(true))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("resolvectl dns %i 10.20.0.53#dns.corp.example fd20::53#dns.corp.example;")) ||
		!bytes.Contains(out, []byte("resolvectl dnsovertls %i yes")) {
		t.Errorf("resolved config:\n%s", out)
	}
	out, err = Render("nrpt", encryptedParams(true))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("Add-DnsClientDohServerAddress -ServerAddress 'fd20::53' -DohTemplate 'https://dns.corp.example/dns-query'")) ||
		!bytes.Contains(out, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Errorf("nrpt:\n%s", out)
	}

	bad := encryptedParams(true)
	bad.Encrypted.ServerName = "dns.corp.example'; rm"
	if _, err := Render("nrpt", bad); err == nil {
		t.Error("a server name that is not a DNS name was rendered")
	}
}
