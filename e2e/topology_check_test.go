package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// TestTopology validates the harness without sluice: a throwaway gateway
// made of wireguard-go, `wg` and an unbound forwarder carries a wg-quick
// client, and every server the sluice tests rely on (resolvers, DoT, DoH,
// HTTP, UDP echo) is reachable when nothing enforces anything. A failure
// here is the harness's fault, not sluice's; the sluice tests' negative
// results ("DoT fails fast") only mean something because this passes.
func TestTopology(t *testing.T) {
	tp := newTopology(t)
	// sluice turns forwarding on itself; the throwaway gateway needs it set.
	tp.gw.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

	// The throwaway gateway.
	ifname := netnstest.Unique("wgf")
	gwKey, gwPub := wgKeyPair(t)
	clKey, clPub := wgKeyPair(t)
	keyFile := filepath.Join(tp.dir, "fake-gw.key")
	if err := os.WriteFile(keyFile, []byte(gwKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wgEnv := append(os.Environ(), "WG_PROCESS_FOREGROUND=1")
	startProc(t, tp.gw, tp.dir, "fake-wireguard-go", wgEnv, "wireguard-go", "-f", ifname)
	t.Cleanup(func() {
		_, _ = tp.gw.Exec("ip", "link", "del", ifname) // wireguard-go exits when its interface goes
		removeStaleSocket(t, ifname)
	})
	if ok, out := waitFor(5*time.Second, 50*time.Millisecond, func() (bool, string) {
		out, err := tp.gw.Exec("wg", "show", ifname)
		return err == nil, out
	}); !ok {
		t.Fatalf("fake gateway interface %s: %s", ifname, out)
	}
	tp.gw.Run("wg", "set", ifname, "listen-port", wgPort, "private-key", keyFile,
		"peer", clPub, "allowed-ips", "10.20.0.2/32,fd20::2/128")
	for _, a := range [][]string{{"10.20.0.1/24"}, {"fd20::1/64", "nodad"}, {resolver4 + "/32"}, {resolver6 + "/128", "nodad"}} {
		ipn(t, tp.gw, append([]string{"addr", "add", a[0], "dev", ifname}, a[1:]...)...)
	}
	ipn(t, tp.gw, "link", "set", ifname, "up")
	tp.startUnbound(tp.gw, "fake-proxy", []string{resolver4, resolver6}, nil, false, [][]string{
		{"corp.example.", corpDNS1, corpDNS2},
		{".", publicDNS4},
	})

	client := tp.newClientNS("cl")
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = 10.20.0.2/32, fd20::2/128
DNS = %s, %s, corp.example

[Peer]
PublicKey = %s
Endpoint = %s:%s
AllowedIPs = 10.20.0.0/24, fd20::/64, 10.30.0.0/16
`, clKey, resolver4, resolver6, gwPub, gwUnderlay, wgPort)
	wc := tp.wgQuickUp(t, client, conf)

	t.Run("tunnel", func(t *testing.T) {
		mustPing(t, client, gwTunnel4, 5*time.Second)
		mustPing(t, client, gwTunnel6, 5*time.Second)
		mustPing(t, client, corpDNS1, 5*time.Second)
		if hs := wc.latestHandshake(t); hs.IsZero() {
			t.Fatalf("no handshake on %s", wc.ifname)
		}
	})
	t.Run("resolv.conf from DNS=", func(t *testing.T) {
		rc := resolvConf(t, client)
		if !strings.Contains(rc, "nameserver "+resolver4) || !strings.Contains(rc, "nameserver "+resolver6) {
			t.Fatalf("client resolv.conf lacks the tunnel resolvers:\n%s", rc)
		}
		if host := readFile("/etc/resolv.conf"); strings.Contains(host, resolver4) {
			t.Fatalf("host /etc/resolv.conf was changed:\n%s", host)
		}
		if r := dig(client, internalFQ); !r.has(corpAnswer4) {
			t.Fatalf("dig %s via resolv.conf: want %s:\n%s", internalFQ, corpAnswer4, r.out)
		}
		if r := dig(client, publicFQ, "AAAA"); !r.has(httpIP6) {
			t.Fatalf("dig %s AAAA via resolv.conf: want %s:\n%s", publicFQ, httpIP6, r.out)
		}
	})
	t.Run("internet servers from the gateway", func(t *testing.T) {
		before := tp.counters(t)
		if r := dig(tp.gw, "@"+publicDNS4, internalFQ); !r.has(trapAnswer) {
			t.Errorf("public resolver: want trap answer %s:\n%s", trapAnswer, r.out)
		}
		if r := dig(tp.gw, "@"+publicDNS6, internalFQ); !r.has(trapAnswer) {
			t.Errorf("public resolver v6: want trap answer %s:\n%s", trapAnswer, r.out)
		}
		for _, ip := range []string{dotIP4, dotIP6} {
			if r := kdig(tp.gw, "+tls", "@"+ip, publicFQ); !r.has(dotAnswer) {
				t.Errorf("kdig +tls @%s: want %s:\n%s", ip, dotAnswer, r.out)
			}
			if r := udpProbe(t, tp.gw, net.JoinHostPort(ip, "853"), 2*time.Second); !r.echoed {
				t.Errorf("udp %s:853: no echo: %v", ip, r.err)
			}
		}
		for _, ip := range []string{dohIP4, dohIP6} {
			if r := curl(tp.gw, "https://"+net.JoinHostPort(ip, "443")+"/dns-query"); r.err != nil || r.body != dohBody {
				t.Errorf("https %s: %v: %q", ip, r.err, r.body)
			}
			if r := udpProbe(t, tp.gw, net.JoinHostPort(ip, "443"), 2*time.Second); !r.echoed {
				t.Errorf("udp %s:443: no echo: %v", ip, r.err)
			}
		}
		for _, ip := range []string{httpIP4, httpIP6} {
			if r := curl(tp.gw, "http://"+net.JoinHostPort(ip, "80")+"/"); r.err != nil || r.body != httpBody {
				t.Errorf("http %s: %v: %q", ip, r.err, r.body)
			}
		}
		after := tp.counters(t)
		for _, c := range []string{"port53", "port853", "doh443"} {
			if after[c] <= before[c] {
				t.Errorf("counter %s did not count the gateway's own traffic: %d -> %d", c, before[c], after[c])
			}
		}
		if !strings.Contains(tp.publicDNS.log(), "git.corp.example.") {
			t.Errorf("public unbound log-queries does not show the query:\n%s", tp.publicDNS.log())
		}
	})
}

// wgKeyPair returns a new WireGuard private key and its public key.
func wgKeyPair(t testing.TB) (priv, pub string) {
	t.Helper()
	out, err := exec.Command("wg", "genkey").Output()
	if err != nil {
		t.Fatalf("wg genkey: %v", err)
	}
	priv = strings.TrimSpace(string(out))
	cmd := exec.Command("wg", "pubkey")
	cmd.Stdin = strings.NewReader(priv + "\n")
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("wg pubkey: %v", err)
	}
	return priv, strings.TrimSpace(string(out))
}
