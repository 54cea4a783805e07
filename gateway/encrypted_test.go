package gateway

import (
	"crypto/x509"
	"testing"
	"time"
)

// TestCertCheck: PASS with time left, WARN (OK with an action) within 30
// days of expiry, FAIL once expired or without a certificate.
func TestCertCheck(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	leaf := func(left time.Duration) *x509.Certificate { return &x509.Certificate{NotAfter: now.Add(left)} }
	for _, c := range []struct {
		name     string
		leaf     *x509.Certificate
		ok, warn bool
	}{
		{"valid", leaf(200 * 24 * time.Hour), true, false},
		{"31 days", leaf(31 * 24 * time.Hour), true, false},
		{"29 days", leaf(29 * 24 * time.Hour), true, true},
		{"expired", leaf(-time.Hour), false, false},
		{"none", nil, false, false},
	} {
		got := certCheck(c.leaf, "dns.corp.example", true, now)
		if got.OK != c.ok || (c.ok && (got.Action != "") != c.warn) {
			t.Errorf("%s: %+v, want ok=%v warn=%v", c.name, got, c.ok, c.warn)
		}
	}
}
