package dnsproxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestPolicy(t *testing.T) {
	up := startFake(t, answerA("198.51.100.1", 60))
	dir := t.TempDir()
	bl := filepath.Join(dir, "blocklist")
	os.WriteFile(bl, []byte("# extra\nTracker.Example # inline\n\nads.example.net.\n"), 0o644)
	cfg := testConfig(up.addr)
	cfg.Policy.BlocklistFile = bl
	cfg.Policy.Allowlist = []string{"dns.quad9.net", "ok.ads.example.net"}
	p, reg := startProxy(t, cfg, Options{})
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		reason string
	}{
		{"use-application-dns.net.", dns.TypeA, dns.RcodeNameError, reasonCanary},
		{"mask.icloud.com.", dns.TypeA, dns.RcodeNameError, reasonCanary},
		{"MASK-H2.icloud.com.", dns.TypeAAAA, dns.RcodeNameError, reasonCanary},
		{"_dns.resolver.arpa.", dns.TypeSVCB, dns.RcodeSuccess, reasonDDR},
		{"dns.google.", dns.TypeA, dns.RcodeNameError, reasonDoH},
		{"www.cloudflare-dns.com.", dns.TypeHTTPS, dns.RcodeNameError, reasonDoH},
		{"dns.nextdns.io.", dns.TypeA, dns.RcodeNameError, reasonDoH},
		{"x.tracker.example.", dns.TypeA, dns.RcodeNameError, reasonBlocklist},
		{"ads.example.net.", dns.TypeA, dns.RcodeNameError, reasonBlocklist},
		{"dns.quad9.net.", dns.TypeA, dns.RcodeSuccess, ""},      // allowlisted
		{"ok.ads.example.net.", dns.TypeA, dns.RcodeSuccess, ""}, // allowlisted subtree
		{"google.", dns.TypeA, dns.RcodeSuccess, ""},
		{"notdns.google.com.", dns.TypeA, dns.RcodeSuccess, ""},
	} {
		r := ask(t, p, "udp", tc.name, tc.qtype, 1232)
		if r.Rcode != tc.rcode {
			t.Errorf("%s: rcode %s, want %s", tc.name, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			continue
		}
		if tc.reason == "" {
			if len(r.Answer) != 1 {
				t.Errorf("%s: not forwarded: %v", tc.name, r)
			}
			continue
		}
		if len(r.Answer) != 0 || len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("%s: want empty answer with SOA, got %v", tc.name, r)
		}
		e := ede(r)
		wantCode := dns.ExtendedErrorCodeBlocked
		if tc.reason == reasonDDR {
			wantCode = dns.ExtendedErrorCodeFiltered
		}
		if e == nil || e.InfoCode != wantCode || !strings.Contains(e.ExtraText, tc.reason) {
			t.Errorf("%s: EDE %v, want code %d naming %s", tc.name, e, wantCode, tc.reason)
		}
		if n := up.count(tc.name); n != 0 {
			t.Errorf("%s: forwarded a blocked name", tc.name)
		}
	}
	if p.Stats().Blocked != 9 {
		t.Errorf("Stats().Blocked = %d, want 9", p.Stats().Blocked)
	}
	mfs, _ := reg.Gather()
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "sluice_dns_blocked_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == reasonDoH && m.GetCounter().GetValue() == 3 {
					found = true
				}
			}
		}
	}
	if !found {
		t.Errorf("sluice_dns_blocked_total{reason=doh} != 3")
	}

	// Everything off: the canary is forwarded.
	cfg.Policy = PolicyConfig{}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if r := ask(t, p, "udp", "use-application-dns.net.", dns.TypeA, 0); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("canaries off: %v", r)
	}
}

// TestPolicyReloadRevalidatesCache: a name cached while allowed is blocked
// after a reload that blocks it, even though the cache is kept.
func TestPolicyReloadRevalidatesCache(t *testing.T) {
	up := startFake(t, answerA("198.51.100.1", 300))
	cfg := testConfig(up.addr)
	cfg.Policy.Allowlist = []string{"dns.google"}
	p, _ := startProxy(t, cfg, Options{})
	ask(t, p, "udp", "dns.google.", dns.TypeA, 0)
	if r := ask(t, p, "udp", "dns.google.", dns.TypeA, 0); len(r.Answer) != 1 {
		t.Fatalf("allowlisted: %v", r)
	}
	ask(t, p, "udp", "other.example.", dns.TypeA, 0)
	cfg.Policy.Allowlist = nil
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if r := ask(t, p, "udp", "dns.google.", dns.TypeA, 0); r.Rcode != dns.RcodeNameError {
		t.Errorf("cached answer served after the name became blocked: %v", r)
	}
	ask(t, p, "udp", "other.example.", dns.TypeA, 0)
	ask(t, p, "udp", "other.example.", dns.TypeA, 0)
	if n := up.count("other.example."); n != 1 {
		t.Errorf("cache not kept across reload: upstream saw %d", n)
	}
}

func TestBlocklistFileErrors(t *testing.T) {
	bl := filepath.Join(t.TempDir(), "bl")
	os.WriteFile(bl, []byte("good.example\nbad name here\n"), 0o644)
	cfg := testConfig("127.0.0.1:1")
	cfg.Policy.BlocklistFile = bl
	_, err := New(cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), bl+":2") {
		t.Errorf("error %v does not name %s:2", err, bl)
	}
	cfg.Policy.BlocklistFile = filepath.Join(t.TempDir(), "missing")
	if _, err := New(cfg, Options{}); err == nil {
		t.Errorf("missing blocklist accepted")
	}
}

func TestANYMinimal(t *testing.T) {
	up := startFake(t, answerA("198.51.100.1", 60))
	p, _ := startProxy(t, testConfig(up.addr), Options{})
	r := ask(t, p, "udp", "example.com.", dns.TypeANY, 1232)
	if len(r.Answer) != 1 {
		t.Fatalf("ANY: %v", r)
	}
	h, ok := r.Answer[0].(*dns.HINFO)
	if !ok || h.Cpu != "RFC8482" || h.Os != "" || h.Hdr.Name != "example.com." {
		t.Errorf("ANY answer %v, want HINFO \"RFC8482\" \"\"", r.Answer[0])
	}
	if up.total.Load() != 0 {
		t.Errorf("ANY forwarded")
	}
}

func TestRateLimit(t *testing.T) {
	up := startFake(t, answerA("198.51.100.1", 300))
	cfg := testConfig(up.addr)
	cfg.Limits.PeerQPS = 5
	cfg.Limits.PeerBurst = 5
	clock := newClock()
	p, reg := startProxy(t, cfg, Options{Now: clock.Now})
	refused := 0
	for range 20 {
		if r := ask(t, p, "udp", "rl.example.", dns.TypeA, 0); r.Rcode == dns.RcodeRefused {
			refused++
		}
	}
	if refused != 15 {
		t.Errorf("%d of 20 refused with burst 5, want 15", refused)
	}
	clock.Advance(1000 * 1e6) // one second refills 5 tokens
	if r := ask(t, p, "tcp", "rl.example.", dns.TypeA, 0); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after refill: %s", dns.RcodeToString[r.Rcode])
	}
	if p.Stats().RateLimited != 15 {
		t.Errorf("Stats().RateLimited = %d", p.Stats().RateLimited)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "sluice_dns_ratelimited_total" && mf.GetMetric()[0].GetCounter().GetValue() != 15 {
			t.Errorf("sluice_dns_ratelimited_total = %v", mf.GetMetric()[0].GetCounter().GetValue())
		}
	}
}
