package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore"
	"github.com/sluice-vpn/sluice/peers/etcdstore/etcdtest"
)

// Moving from one host to a fleet: import copies the local store into
// etcd keeping keys and addresses, again is a no-op, a conflicting store
// is refused with the list; export gives the registry back in the local
// format; fleet status lists the registered gateways and peer config
// --gateway renders for another gateway with its registered endpoint and
// key.
func TestFleetImportExportStatusAndGatewayConfig(t *testing.T) {
	srv := etcdtest.Start(t)
	local, localDir := writeConfig(t, "")
	mustRun(t, "-c", local, "peer", "add", "alice")
	mustRun(t, "-c", local, "peer", "add", "bob", "--device", "phone")
	localStore := filepath.Join(localDir, "state", peers.StoreFile)
	fleetSection := "fleet:\n  name: gw-a\n  etcd:\n    endpoints: [" + srv.Endpoint + "]\n"
	fleet, _ := writeConfig(t, fleetSection)

	out := mustRun(t, "-c", fleet, "fleet", "import", "--from", localStore)
	if !strings.Contains(out, "imported 2 peers") {
		t.Errorf("first import: %q", out)
	}
	out = mustRun(t, "-c", fleet, "fleet", "import", "--from", localStore)
	if !strings.Contains(out, "imported 0 peers") || !strings.Contains(out, "2 already there") {
		t.Errorf("second import: %q", out)
	}
	// Another host's store with its own alice and nothing else in common.
	other, otherDir := writeConfig(t, "")
	mustRun(t, "-c", other, "peer", "add", "alice")
	_, errs, code := runC(t, "-c", fleet, "fleet", "import", "--from", filepath.Join(otherDir, "state", peers.StoreFile))
	if code == 0 || !strings.Contains(errs, "nothing written") || !strings.Contains(errs, "alice/default") {
		t.Errorf("conflicting import: exit %d %q", code, errs)
	}

	// A store of another tunnel prefix would leave addresses the fleet's
	// allocator calls damaged: refused too.
	renumbered, renDir := writeConfig(t, "")
	if err := os.WriteFile(renumbered, []byte(strings.NewReplacer("10.20.0.", "10.21.0.", "fd20::", "fd21::").Replace(readFileT(t, renumbered))), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "-c", renumbered, "peer", "add", "zed")
	_, errs, code = runC(t, "-c", fleet, "fleet", "import", "--from", filepath.Join(renDir, "state", peers.StoreFile))
	if code == 0 || !strings.Contains(errs, "outside this fleet's tunnel prefixes") {
		t.Errorf("import from another prefix: exit %d %q", code, errs)
	}

	want, err := peers.ReadStateFile(localStore)
	if err != nil {
		t.Fatal(err)
	}
	out = mustRun(t, "-c", fleet, "fleet", "export")
	got, err := peers.DecodeState("export", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Peers) != 2 {
		t.Fatalf("export has %d peers, want 2", len(got.Peers))
	}
	for i := range want.Peers {
		w, g := want.Peers[i], got.Peers[i]
		if w.ID() != g.ID() || w.PublicKey != g.PublicKey || w.IPv4 != g.IPv4 || w.IPv6 != g.IPv6 || *w.PrivateKey != *g.PrivateKey {
			t.Errorf("exported %s %s %s, imported from %s %s %s", g.ID(), g.PublicKey, g.IPv4, w.ID(), w.PublicKey, w.IPv4)
		}
	}
	// A peer added through the fleet config lands in etcd, not in a file.
	mustRun(t, "-c", fleet, "peer", "add", "carol")
	if out := mustRun(t, "-c", fleet, "peer", "list"); !strings.Contains(out, "carol") || !strings.Contains(out, "bob") {
		t.Errorf("peer list from the fleet: %q", out)
	}

	// Another gateway registers itself.
	be, err := etcdstore.Open(etcdstore.Config{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	gwKey, _ := wgtypes.GeneratePrivateKey()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		be.Register(ctx, time.Second, func() etcdstore.Member {
			return etcdstore.Member{Name: "gw-b", Endpoint: "198.51.100.7:51820", PublicKey: gwKey.PublicKey().String(), Peers: 3, Handshaking: 1, Version: "test"}
		})
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, code := runC(t, "-c", fleet, "fleet", "status", "--json")
		var ms []struct {
			Name        string `json:"name"`
			Alive       bool   `json:"alive"`
			Handshaking int    `json:"handshaking"`
		}
		if code == 0 && json.Unmarshal([]byte(out), &ms) == nil && len(ms) == 1 && ms[0].Name == "gw-b" && ms[0].Alive && ms[0].Handshaking == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet status --json never listed gw-b alive: %q", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := mustRun(t, "-c", fleet, "fleet", "status"); !strings.Contains(out, "gw-b") || !strings.Contains(out, "alive") {
		t.Errorf("fleet status: %q", out)
	}
	conf := mustRun(t, "-c", fleet, "peer", "config", "alice", "--gateway", "gw-b")
	if !strings.Contains(conf, "Endpoint = 198.51.100.7:51820") || !strings.Contains(conf, "PublicKey = "+gwKey.PublicKey().String()) {
		t.Errorf("peer config --gateway gw-b:\n%s", conf)
	}
	if _, errs, code := runC(t, "-c", fleet, "peer", "config", "alice", "--gateway", "gw-z"); code == 0 || !strings.Contains(errs, "gw-b") {
		t.Errorf("--gateway of an unknown gateway: exit %d %q", code, errs)
	}
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestPrintFleetStatus(t *testing.T) {
	var b strings.Builder
	printFleetStatus(&b, nil)
	if b.Len() != 0 {
		t.Errorf("without a fleet: %q", b.String())
	}
	printFleetStatus(&b, &gateway.FleetHealth{Name: "gw-a", Store: "etcd http://10.50.0.11:2379 prefix /sluice/", FromSnapshot: true, Peers: 21})
	for _, want := range []string{"gw-a", "10.50.0.11:2379", "UNREACHABLE", "snapshot", "21 peers"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("offline fleet status %q lacks %q", b.String(), want)
		}
	}
}

// On a fleet gateway, peer names complete from the local snapshot of the
// registry (no etcd request per tab).
func TestFleetCompletionFromSnapshot(t *testing.T) {
	local, localDir := writeConfig(t, "")
	mustRun(t, "-c", local, "peer", "add", "dave")
	fleet, fleetDir := writeConfig(t, "fleet:\n  name: gw-a\n  etcd:\n    endpoints: [http://127.0.0.1:1]\n")
	if got, _ := complete(t, "-c", fleet, "peer", "show", ""); len(got) != 0 {
		t.Errorf("fleet without a snapshot: %q", got)
	}
	if err := os.MkdirAll(filepath.Join(fleetDir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	data := readFileT(t, filepath.Join(localDir, "state", peers.StoreFile))
	if err := os.WriteFile(filepath.Join(fleetDir, "state", gateway.SnapshotFile), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := complete(t, "-c", fleet, "peer", "show", ""); strings.Join(got, " ") != "dave dave/default" {
		t.Errorf("fleet completion from the snapshot: %q", got)
	}
}
