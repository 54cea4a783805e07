package peers

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestRenderedConfigsAcceptedByWireGuard feeds rendered configs through the
// real tools: wg-quick strip, then wg setconf on a wireguard-go interface in
// a fresh namespace, and reads the result back with wg showconf. The config
// without a private key must be refused.
func TestRenderedConfigsAcceptedByWireGuard(t *testing.T) {
	netnstest.RequirePrivileged(t, "wg", "wg-quick", "wireguard-go")
	ns := netnstest.New(t, "pe")
	iface := netnstest.Unique("wgp")
	sock := filepath.Join("/var/run/wireguard", iface+".sock")
	t.Cleanup(func() { os.Remove(sock) }) // wireguard-go killed with SIGKILL leaves it
	ns.Start("env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", iface)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("wireguard-go did not create %s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}

	priv, _ := wgtypes.GeneratePrivateKey()
	psk, _ := wgtypes.GenerateKey()
	srv, _ := wgtypes.GeneratePrivateKey()
	p := testParams(false)
	p.Peer.PrivateKey, p.Peer.PublicKey, p.Peer.PresharedKey = &priv, priv.PublicKey(), &psk
	p.ServerPublicKey = srv.PublicKey()
	p.Endpoint = "192.0.2.1:51820"
	dir := t.TempDir()

	apply := func(format string, p ClientParams) (string, error) {
		t.Helper()
		out, err := Render(format, p)
		if err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(dir, iface+".conf") // wg-quick names the interface after the file
		if err := os.WriteFile(conf, out, 0o600); err != nil {
			t.Fatal(err)
		}
		stripped, err := exec.Command("wg-quick", "strip", conf).Output()
		if err != nil {
			return "", errors.New("wg-quick strip: " + err.Error())
		}
		sc := filepath.Join(dir, "stripped.conf")
		if err := os.WriteFile(sc, stripped, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := ns.Exec("wg", "setconf", iface, sc); err != nil {
			return "", errors.New("wg setconf: " + err.Error() + ": " + out)
		}
		return ns.Run("wg", "showconf", iface), nil
	}

	for _, format := range []string{"conf", "resolved"} {
		show, err := apply(format, p)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		for _, want := range []string{
			"PrivateKey = " + priv.String(),
			"PublicKey = " + srv.PublicKey().String(),
			"PresharedKey = " + psk.String(),
			"AllowedIPs = 10.20.0.53/32, 10.30.0.0/16, fd20::53/128",
			"Endpoint = 192.0.2.1:51820",
			"PersistentKeepalive = 25",
		} {
			if !strings.Contains(show, want) {
				t.Errorf("%s: wg showconf lacks %q:\n%s", format, want, show)
			}
		}
	}

	full := p
	full.FullTunnel = true
	show, err := apply("conf", full)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(show, "AllowedIPs = 0.0.0.0/0, ::/0") {
		t.Errorf("full tunnel: wg showconf:\n%s", show)
	}

	own := p
	own.Peer.PrivateKey = nil
	if _, err := apply("conf", own); err == nil {
		t.Error("wg accepted the config with the private key placeholder")
	}
}
