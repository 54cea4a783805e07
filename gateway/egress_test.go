package gateway

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/firewall"
)

func fullConfig() string {
	cfg := strings.Replace(goodConfig, "mode: split", "mode: full", 1)
	return strings.Replace(cfg, `upstreams: ["tls://9.9.9.9#dns.quad9.net", 1.1.1.1]`, `upstreams: [10.30.0.55]`, 1)
}

func TestParseEgressDefaults(t *testing.T) {
	split, err := Parse("split.yaml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	full, err := Parse("full.yaml", []byte(fullConfig()))
	if err != nil {
		t.Fatal(err)
	}
	if split.Enforce.EgressMode != firewall.EgressOpen || full.Enforce.EgressMode != firewall.EgressResolved {
		t.Errorf("egress defaults: split %q, full %q; want open, resolved", split.Enforce.EgressMode, full.Enforce.EgressMode)
	}
	if full.Enforce.EgressMinTTL != time.Hour {
		t.Errorf("egress_min_ttl default = %v, want 1h", full.Enforce.EgressMinTTL)
	}
}

func TestParseEgressKeys(t *testing.T) {
	cfg := strings.Replace(fullConfig(), "  dot: reject\n",
		"  dot: reject\n  egress: audit\n  egress_allow: [192.0.2.123, 2001:db8:7::/48]\n  egress_min_ttl: 2h\n  inbound_allow: [10.30.0.0/16]\n", 1)
	c, err := Parse("full.yaml", []byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Enforce
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.123/32"), netip.MustParsePrefix("2001:db8:7::/48")}
	if e.EgressMode != firewall.EgressAudit || e.EgressMinTTL != 2*time.Hour || len(e.EgressAllow) != 2 ||
		e.EgressAllow[0] != want[0] || e.EgressAllow[1] != want[1] || len(e.InboundAllow) != 1 {
		t.Errorf("enforce = %+v", e)
	}
	// Split mode may opt in for what enters the tunnel.
	split := strings.Replace(goodConfig, "  dot: reject\n", "  dot: reject\n  egress: resolved\n", 1)
	if c, err := Parse("split.yaml", []byte(split)); err != nil || c.Enforce.EgressMode != firewall.EgressResolved {
		t.Errorf("split with egress: resolved: %v, %v", c, err)
	}
}

func TestParseEgressBad(t *testing.T) {
	for _, tt := range []struct{ add, key string }{
		{"  egress: closed\n", "enforce.egress"},
		{"  egress_allow: [not-an-ip]\n", "enforce.egress_allow[0]"},
		{"  inbound_allow: [10.0.0.0/33]\n", "enforce.inbound_allow[0]"},
		{"  egress_min_ttl: forever\n", "enforce.egress_min_ttl"},
	} {
		cfg := strings.Replace(fullConfig(), "  dot: reject\n", "  dot: reject\n"+tt.add, 1)
		_, err := Parse("bad.yaml", []byte(cfg))
		var ces ConfigErrors
		if !errors.As(err, &ces) {
			t.Errorf("%s: error %v, want ConfigErrors", tt.key, err)
			continue
		}
		found := false
		for _, ce := range ces {
			found = found || (ce.Key == tt.key && ce.Line == 22 && ce.Fix != "")
		}
		if !found {
			t.Errorf("no error for %s at line 22 with a fix in %v", tt.key, err)
		}
	}
}

func TestEgressTaps(t *testing.T) {
	var taps egressTaps
	peer := netip.MustParseAddr("10.20.0.2")
	ch, stop := taps.tap([]netip.Addr{peer}, 4)
	taps.publish(firewall.EgressEvent{Src: netip.MustParseAddr("10.20.0.3"), Dst: netip.MustParseAddr("192.0.2.9")})
	taps.publish(firewall.EgressEvent{Src: peer, Dst: netip.MustParseAddr("192.0.2.10"), Refused: true})
	select {
	case ev := <-ch:
		if ev.Src != peer || ev.Dst != netip.MustParseAddr("192.0.2.10") {
			t.Errorf("event %+v", ev)
		}
	default:
		t.Fatal("no event for the tapped peer")
	}
	select {
	case ev := <-ch:
		t.Errorf("event of another peer delivered: %+v", ev)
	default:
	}
	stop()
	taps.publish(firewall.EgressEvent{Src: peer})
	if len(taps.subs) != 0 || len(ch) != 0 {
		t.Error("stopped tap still subscribed")
	}
}
