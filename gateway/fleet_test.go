package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/peers"
	"github.com/sluice-vpn/sluice/peers/etcdstore/etcdtest"
)

func TestFleetConfig(t *testing.T) {
	base := `interface:
  name: f0
  addresses: [10.20.0.1/24, fd20::1/64]
dns:
  listen: [10.20.0.53, fd20::53]
  default:
    upstreams: [198.51.100.53]
peers:
  state_dir: ` + t.TempDir() + `
`
	cfg, err := Parse("x.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Fleet.Enabled {
		t.Error("fleet enabled without a fleet section")
	}
	cfg, err = Parse("x.yaml", []byte(base+`fleet:
  name: gw-a
  etcd:
    endpoints: [http://10.50.0.11:2379, http://10.50.0.12:2379]
`))
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Fleet
	if !f.Enabled || f.Name != "gw-a" || f.Prefix != "/sluice/" || len(f.Endpoints) != 2 || cfg.DNS.QueryLog.Gateway != "gw-a" {
		t.Errorf("fleet = %+v (query log gateway %q)", f, cfg.DNS.QueryLog.Gateway)
	}
	for _, tc := range []struct{ fleet, want string }{
		{"fleet:\n  name: gw-a\n", "fleet.etcd.endpoints"},
		{"fleet:\n  etcd:\n    endpoints: [10.50.0.11:2379]\n", "not an etcd client URL"},
		{"fleet:\n  etcd:\n    endpoints: [http://10.50.0.11]\n", "has no port"},
		{"fleet:\n  etcd:\n    endpoints: [http://10.50.0.11:2379, https://10.50.0.12:2379]\n", "mixes http:// and https://"},
		{"fleet:\n  etcd:\n    endpoints: [https://10.50.0.11:2379]\n    cert_file: /x.pem\n", "cert_file and key_file go together"},
		{"fleet:\n  etcd:\n    endpoints: [http://10.50.0.11:2379]\n    ca_file: /nonexistent/ca.pem\n", "TLS files set but the endpoints are http://"},
		{"fleet:\n  name: 'gw a'\n  etcd:\n    endpoints: [http://10.50.0.11:2379]\n", "not a gateway name"},
		{"fleet:\n  etcd:\n    endpoints: [http://10.50.0.11:2379]\n    prefx: /x/\n", "prefix"},
	} {
		_, err := Parse("x.yaml", []byte(base+tc.fleet))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.fleet, err, tc.want)
		}
	}
}

// fleetConfig writes a fake gateway's configuration for a fleet member.
func fleetConfig(t testing.TB, name, endpoint, stateDir string) *Config {
	return fleetConfigIn(t, name, endpoint, stateDir, "10.20.0.1/24")
}

// fleetConfigIn is fleetConfig with the tunnel's IPv4 address and prefix.
func fleetConfigIn(t testing.TB, name, endpoint, stateDir, v4 string) *Config {
	t.Helper()
	dir := t.TempDir()
	cfg := `interface:
  name: f` + name + `
  backend: userspace
  private_key_file: ` + filepath.Join(dir, "gw.key") + `
  addresses: [` + v4 + `, fd20::1/64]
  endpoint: 192.0.2.1:51820
dns:
  listen: [10.20.0.53, fd20::53]
  default:
    upstreams: [198.51.100.53]
peers:
  state_dir: ` + stateDir + `
admin:
  listen: ""
  control_socket: ` + filepath.Join(dir, "ctl.sock") + `
fleet:
  name: ` + name + `
  etcd:
    endpoints: [` + endpoint + `]
`
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runFleetGateway runs a fake gateway of the fleet until the returned stop.
func runFleetGateway(t testing.TB, cfg *Config) (*Gateway, *fakes, func()) {
	t.Helper()
	f := newFakes()
	ready := make(chan struct{})
	var once sync.Once
	g := New(cfg, Options{Ready: func() { once.Do(func() { close(ready) }) }})
	g.parts = f.components()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("gateway %s: Run returned before ready: %v", cfg.Fleet.Name, err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("gateway %s not ready within 30s", cfg.Fleet.Name)
	}
	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("gateway %s: Run: %v", cfg.Fleet.Name, err)
			}
		})
	}
	t.Cleanup(stop)
	return g, f, stop
}

func devicePeers(f *fakes) map[string]bool {
	f.dev.mu.Lock()
	defer f.dev.mu.Unlock()
	out := map[string]bool{}
	for _, p := range f.dev.peers {
		out[p.PublicKey.String()] = true
	}
	return out
}

// waitFor polls cond for up to 30 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Two gateways share one registry in a real etcd: a change made through
// either reaches both devices; concurrent adds through both stay unique;
// without etcd both keep their peers, report degraded (status, /readyz,
// doctor, metric) and refuse changes naming the store; a gateway
// restarted during the outage comes up with its peers from the snapshot;
// when etcd is back both converge.
func TestFleetGatewaysShareOneRegistry(t *testing.T) {
	srv := etcdtest.Start(t)
	cfgA := fleetConfig(t, "gw-a", srv.Endpoint, filepath.Join(t.TempDir(), "state"))
	stateB := filepath.Join(t.TempDir(), "state")
	cfgB := fleetConfig(t, "gw-b", srv.Endpoint, stateB)
	ga, fa, _ := runFleetGateway(t, cfgA)
	_, fb, stopB := runFleetGateway(t, cfgB)

	stA, err := OpenStore(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	defer stA.Close()
	stB, err := OpenStore(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()
	pool := cfgA.Pool()
	alice, err := stA.Add(peers.AddRequest{User: "alice"}, pool)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "alice on gw-b's device", func() bool { return devicePeers(fb)[alice.PublicKey.String()] })

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 10 {
		for gw, st := range map[string]*peers.Store{"a": stA, "b": stB} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := st.Add(peers.AddRequest{User: fmt.Sprintf("u%s%d", gw, i)}, pool)
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent add: %v", err)
		}
	}
	list, err := stB.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 21 {
		t.Fatalf("%d peers after 1 + 20 concurrent adds", len(list))
	}
	for _, f := range []*fakes{fa, fb} {
		waitFor(t, "21 peers on both devices", func() bool { return len(devicePeers(f)) == 21 })
	}
	if s, err := ga.Status(); err != nil || s.Fleet == nil || !s.Fleet.Online || s.Fleet.Name != "gw-a" || len(s.Degraded) != 0 {
		t.Fatalf("gw-a status with etcd up = %+v, %v", s.Fleet, err)
	}
	if m := scrape(t, ga.reg, "sluice_fleet_store_up"); len(m) != 1 || m[0] != `sluice_fleet_store_up{gateway="gw-a"} 1` {
		t.Errorf("store metric with etcd up = %q", m)
	}

	// etcd gone.
	srv.Stop()
	waitFor(t, "gw-a sees the registry unreachable", func() bool {
		s, err := ga.Status()
		return err == nil && s.Fleet != nil && !s.Fleet.Online
	})
	s, _ := ga.Status()
	if len(s.Degraded) != 1 || !strings.Contains(s.Degraded[0], srv.Endpoint) || len(s.NotReady) != 0 {
		t.Errorf("status while etcd is down: degraded %q, not ready %q", s.Degraded, s.NotReady)
	}
	rec := httptest.NewRecorder()
	ga.adminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "degraded") {
		t.Errorf("/readyz while etcd is down = %d %q, want 200 degraded", rec.Code, rec.Body.String())
	}
	if m := scrape(t, ga.reg, "sluice_fleet_store_up"); len(m) != 1 || !strings.HasSuffix(m[0], " 0") {
		t.Errorf("store metric with etcd down = %q", m)
	}
	rep, err := ga.Doctor(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range rep.Checks {
		if c.Name == "fleet registry" {
			found = !c.OK && strings.Contains(c.Detail, "gw-a")
		}
	}
	if !found {
		t.Errorf("doctor has no failing fleet registry check: %+v", rep.Checks)
	}
	_, err = stA.Add(peers.AddRequest{User: "late"}, pool)
	if !errors.Is(err, peers.ErrUnavailable) || !strings.Contains(err.Error(), srv.Endpoint) {
		t.Errorf("add while etcd is down = %v, want ErrUnavailable naming %s", err, srv.Endpoint)
	}
	if n := len(devicePeers(fa)); n != 21 {
		t.Errorf("gw-a device has %d peers while etcd is down, want 21", n)
	}
	// gw-b restarts during the outage: its snapshot brings the peers back.
	stopB()
	gb2, fb2, _ := runFleetGateway(t, cfgB)
	if n := len(devicePeers(fb2)); n != 21 {
		t.Errorf("gw-b restarted during the outage has %d peers, want 21 from the snapshot", n)
	}
	if s, err := gb2.Status(); err != nil || s.Fleet == nil || !s.Fleet.FromSnapshot {
		t.Errorf("restarted gw-b status = %+v, %v; want from_snapshot", s.Fleet, err)
	}

	// etcd back: both converge, and a removal reaches both.
	srv.Restart(t)
	for _, g := range []*Gateway{ga, gb2} {
		waitFor(t, "registry online again", func() bool {
			s, err := g.Status()
			return err == nil && s.Fleet != nil && s.Fleet.Online && !s.Fleet.FromSnapshot
		})
	}
	if _, err := stB.Remove("alice", ""); err != nil {
		t.Fatal(err)
	}
	for _, f := range []*fakes{fa, fb2} {
		waitFor(t, "alice removed from both devices", func() bool {
			d := devicePeers(f)
			return len(d) == 20 && !d[alice.PublicKey.String()]
		})
	}
}
