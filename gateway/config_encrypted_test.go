package gateway

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestParseEncrypted(t *testing.T) {
	src := strings.Replace(goodConfig, "  edns_buffer_size: 1232\n",
		"  edns_buffer_size: 1232\n  encrypted: [dot, doh]\n  tls:\n    server_name: DNS.corp.example.\n", 1)
	src = strings.Replace(src, "  dot: reject\n", "  dot: redirect\n", 1)
	c, err := Parse("enc.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	enc := c.DNS.Encrypted
	if !enc.DoT || !enc.DoH || enc.ServerName != "dns.corp.example" || !c.OwnDNSCA {
		t.Errorf("encrypted = %+v, own CA %v", enc, c.OwnDNSCA)
	}
	if enc.CertFile != filepath.Join("/tmp/sluice-test", "dns-server.pem") || enc.DoTPort != 853 || enc.DoHPort != 443 {
		t.Errorf("encrypted files/ports = %+v", enc)
	}
	if c.Enforce.DoT != "redirect" || !firewallEncrypted(c).DoT {
		t.Errorf("enforce.dot = %q", c.Enforce.DoT)
	}

	for _, tc := range []struct{ from, to, want string }{
		{"  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  encrypted: [doq]\n", "dns.encrypted[0]: unknown transport"},
		{"  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  encrypted: [dot]\n  tls:\n    cert_file: /x.pem\n", "dns.tls: cert_file and key_file go together"},
		{"  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  tls:\n    server_name: a.example\n", "dns.tls: set, but no encrypted transport"},
		{"  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  encrypted: [doh]\n  tls:\n    server_name: nodots\n", "dns.tls.server_name"},
		{"  edns_buffer_size: 1232\n", "  edns_buffer_size: 1232\n  encrypted: [dot]\n  tls:\n    cert_file: /nonexistent/c.pem\n    key_file: /nonexistent/k.pem\n", "dns.tls.cert_file"},
		{"  dot: reject\n", "  dot: redirect\n", "enforce.dot: redirect needs sluice's DoT listener"},
	} {
		_, err := Parse("bad.yaml", []byte(strings.Replace(goodConfig, tc.from, tc.to, 1)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.to, err, tc.want)
		}
	}
}
