package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// The fleet network (DESIGN.md's test network plus the etcd namespace):
//
//	client 192.0.2.2 ── ul (bridge) ──┬── gw-a 192.0.2.1   (sluice, fleet.name gw-a)
//	                                  └── gw-b 192.0.2.3   (sluice, fleet.name gw-b)
//	gw-a corp0 10.30.0.1 ─┐                gw-a et0 10.50.1.1 ─┐
//	gw-b corp0 10.30.0.3 ─┴─ corp (bridge) gw-b et0 10.50.2.1 ─┴─ et (bridge):
//	   resolvers 10.30.0.53/.54, web 10.30.1.10                   etcd 10.50.0.11, .12, .13
//
// Both gateways run the same tunnel prefix (10.20.0.0/24, fd20::/64) and
// resolver addresses. corp has no route back to 10.20.0.0/24: each
// gateway masquerades what it forwards into corp (the operator's rule of
// the README's Fleet section), so return traffic goes to whichever
// gateway the device is connected to. The web server answers with the
// source address it sees, which names that gateway.
const (
	gwbUnderlay = "192.0.2.3"
	gwaCorp     = "10.30.0.1"
	gwbCorp     = "10.30.0.3"
	corpWeb     = "10.30.1.10"
)

var etcdMembers = []string{"10.50.0.11", "10.50.0.12", "10.50.0.13"}

type fleetNet struct {
	t      *testing.T
	dir    string
	ul     *netnstest.NS
	corp   *netnstest.NS
	et     *netnstest.NS
	client *netnstest.NS
	etcd   []*proc
	ports  int
}

func (fn *fleetNet) bridgePort(t *testing.T, bridgeNS *netnstest.NS, bridge string, ns *netnstest.NS, ifname string) {
	t.Helper()
	fn.ports++
	port := fmt.Sprintf("p%d", fn.ports)
	netnstest.Veth(t, ns, ifname, bridgeNS, port)
	ipn(t, bridgeNS, "link", "set", port, "master", bridge)
}

func newFleetNet(t *testing.T) *fleetNet {
	t.Helper()
	netnstest.RequirePrivileged(t, "wg", "wg-quick", "wireguard-go", "unbound", "unbound-checkconf", "dig", "curl", "nft", "etcd")
	fn := &fleetNet{t: t, dir: t.TempDir()}
	fn.ul = netnstest.New(t, "ful")
	fn.corp = netnstest.New(t, "fco")
	fn.et = netnstest.New(t, "fet")
	for _, x := range []struct {
		ns     *netnstest.NS
		bridge string
	}{{fn.ul, "ulbr"}, {fn.corp, "cobr"}, {fn.et, "etbr"}} {
		noDAD(x.ns)
		ipn(t, x.ns, "link", "add", x.bridge, "type", "bridge")
		ipn(t, x.ns, "link", "set", x.bridge, "up")
	}
	for _, a := range []string{"10.30.0.2/16", corpDNS1 + "/16", corpDNS2 + "/16", corpWeb + "/16"} {
		ipn(t, fn.corp, "addr", "add", a, "dev", "cobr")
	}
	for _, a := range etcdMembers {
		ipn(t, fn.et, "addr", "add", a+"/16", "dev", "etbr")
	}
	// The client on the underlay, with its own resolv.conf.
	fn.client = netnstest.New(t, "fcl")
	etc := filepath.Join("/etc/netns", fn.client.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(etc); err != nil {
			t.Errorf("remove %s: %v", etc, err)
		}
		if err := os.Remove("/etc/netns"); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			t.Errorf("remove /etc/netns: %v", err)
		}
	})
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("# sluice e2e: no resolver until wg-quick sets one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	noDAD(fn.client)
	fn.bridgePort(t, fn.ul, "ulbr", fn.client, "ul0")
	ipn(t, fn.client, "addr", "add", "192.0.2.2/24", "dev", "ul0")

	// The corp services.
	tp := &topology{t: t, dir: fn.dir}
	tp.startUnbound(fn.corp, "fcorp1", []string{corpDNS1}, corpRecords, true, nil)
	tp.startUnbound(fn.corp, "fcorp2", []string{corpDNS2}, corpRecords, true, nil)
	fn.startEchoServer(t)

	// The etcd cluster: three members, one namespace, one address each.
	fn.etcd = make([]*proc, len(etcdMembers))
	for i := range etcdMembers {
		fn.startEtcd(t, i)
	}
	return fn
}

// startEchoServer answers HTTP on corpWeb:80 with the source address it
// sees.
func (fn *fleetNet) startEchoServer(t *testing.T) {
	t.Helper()
	var ln net.Listener
	if err := fn.corp.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(corpWeb, "80"))
		return err
	}); err != nil {
		t.Fatalf("listen on %s:80 in corp: %v", corpWeb, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "seen-from %s\n", host)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

func (fn *fleetNet) etcdEndpoints() []string {
	out := make([]string, len(etcdMembers))
	for i, a := range etcdMembers {
		out[i] = "http://" + a + ":2379"
	}
	return out
}

// startEtcd (re)starts member i; its data directory survives a stop.
func (fn *fleetNet) startEtcd(t *testing.T, i int) {
	t.Helper()
	var cluster []string
	for j, a := range etcdMembers {
		cluster = append(cluster, fmt.Sprintf("e%d=http://%s:2380", j, a))
	}
	a := etcdMembers[i]
	fn.etcd[i] = startProc(t, fn.et, fn.dir, fmt.Sprintf("etcd%d-%d", i, time.Now().UnixNano()), os.Environ(), "etcd",
		"--name", fmt.Sprintf("e%d", i),
		"--data-dir", filepath.Join(fn.dir, fmt.Sprintf("etcd%d", i)),
		"--listen-client-urls", "http://"+a+":2379", "--advertise-client-urls", "http://"+a+":2379",
		"--listen-peer-urls", "http://"+a+":2380", "--initial-advertise-peer-urls", "http://"+a+":2380",
		"--initial-cluster", strings.Join(cluster, ","), "--initial-cluster-state", "new",
		"--initial-cluster-token", "sluice-e2e", "--logger", "zap", "--log-level", "warn")
}

// fleetGW is one sluice gateway of the fleet in its own namespace.
type fleetGW struct {
	*sluiceGW
	name     string
	underlay string
}

// newFleetGateway makes a gateway namespace wired to the underlay, corp
// and etcd bridges, with the masquerade rule toward corp, and a sluice
// configuration that differs from the other gateway's only in fleet.name
// and interface.endpoint.
func (fn *fleetNet) newFleetGateway(t *testing.T, name, underlay, corpAddr, etAddr string) *fleetGW {
	t.Helper()
	ns := netnstest.New(t, "f"+name[len(name)-1:])
	noDAD(ns)
	fn.bridgePort(t, fn.ul, "ulbr", ns, "ul0")
	ipn(t, ns, "addr", "add", underlay+"/24", "dev", "ul0")
	fn.bridgePort(t, fn.corp, "cobr", ns, "corp0")
	ipn(t, ns, "addr", "add", corpAddr+"/16", "dev", "corp0")
	fn.bridgePort(t, fn.et, "etbr", ns, "et0")
	ipn(t, ns, "addr", "add", etAddr+"/16", "dev", "et0")
	nat := filepath.Join(fn.dir, name+"-nat.nft")
	rules := `table ip sle2efleet {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "corp0" ip saddr 10.20.0.0/24 masquerade
	}
}
`
	if err := os.WriteFile(nat, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.Run("nft", "-f", nat)

	tp := &topology{t: t, dir: fn.dir, gw: ns}
	g := tp.newSluice(sluiceOpts{mode: "split", offPolicy: "redirect"})
	cfg := readFile(g.cfgPath)
	cfg = strings.Replace(cfg, "endpoint: "+gwUnderlay+":"+wgPort, "endpoint: "+underlay+":"+wgPort, 1)
	cfg = strings.Replace(cfg, "upstreams: ["+publicDNS4+"]", "upstreams: ["+corpDNS1+", "+corpDNS2+"]", 1)
	cfg += "fleet:\n  name: " + name + "\n  etcd:\n    endpoints: [" + strings.Join(fn.etcdEndpoints(), ", ") + "]\n"
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return &fleetGW{sluiceGW: g, name: name, underlay: underlay}
}

// fleetStatus is the part of `sluice status --json` about the fleet.
type fleetStatus struct {
	Peers []struct {
		ID string `json:"id"`
	} `json:"peers"`
	Fleet *struct {
		Name         string `json:"name"`
		Online       bool   `json:"online"`
		FromSnapshot bool   `json:"from_snapshot"`
		Peers        int    `json:"peers"`
	} `json:"fleet"`
	Degraded []string `json:"degraded"`
	NotReady []string `json:"not_ready"`
}

func (g *fleetGW) fleetStatus(t *testing.T) fleetStatus {
	t.Helper()
	out := g.mustCLI(t, "status", "--json")
	var s fleetStatus
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json of %s: %v\n%s", g.name, err, out)
	}
	if s.Fleet == nil {
		t.Fatalf("status --json of %s has no fleet section:\n%s", g.name, out)
	}
	return s
}

// waitOnline waits until the gateway's registry is online (or offline).
func (g *fleetGW) waitOnline(t *testing.T, online bool) {
	t.Helper()
	var last fleetStatus
	ok, _ := waitFor(60*time.Second, 250*time.Millisecond, func() (bool, string) {
		last = g.fleetStatus(t)
		return last.Fleet.Online == online && (!online || !last.Fleet.FromSnapshot), ""
	})
	if !ok {
		t.Fatalf("%s: registry online=%v not reached within 60s: %+v", g.name, online, last)
	}
}

// waitPeers waits until the gateway's interface carries exactly ids.
func (g *fleetGW) waitPeers(t *testing.T, n int, must, mustNot []string) {
	t.Helper()
	var ids map[string]bool
	ok, _ := waitFor(30*time.Second, 200*time.Millisecond, func() (bool, string) {
		ids = map[string]bool{}
		for _, p := range g.fleetStatus(t).Peers {
			ids[p.ID] = true
		}
		if len(ids) != n {
			return false, ""
		}
		for _, id := range must {
			if !ids[id] {
				return false, ""
			}
		}
		for _, id := range mustNot {
			if ids[id] {
				return false, ""
			}
		}
		return true, ""
	})
	if !ok {
		t.Fatalf("%s: want %d peers with %v and without %v, have %v", g.name, n, must, mustNot, ids)
	}
}

// reach resolves the internal name through the tunnel and fetches the
// corp web server by name; it returns the source address corp saw.
func (fn *fleetNet) reach(t *testing.T, via string) string {
	t.Helper()
	var out string
	ok, _ := waitFor(30*time.Second, 500*time.Millisecond, func() (bool, string) {
		ans, err := fn.client.Exec("dig", "+short", "+time=2", "+tries=1", "@"+resolver4, internalFQ)
		if err != nil || strings.TrimSpace(ans) != corpAnswer4 {
			out = "dig: " + ans
			return false, ""
		}
		out, err = fn.client.Exec("curl", "-sS", "--max-time", "3", "http://"+internalFQ+"./")
		return err == nil && strings.HasPrefix(out, "seen-from "), ""
	})
	if !ok {
		t.Fatalf("through %s: no answer from corp: %s", via, out)
	}
	return strings.TrimSpace(strings.TrimPrefix(out, "seen-from "))
}

// TestFleet runs two sluice gateways on one etcd registry: add on one,
// serve through the other; roam; concurrent adds through both; lose etcd
// quorum (writes refused, serving goes on, a restart comes up from the
// snapshot); heal and converge.
func TestFleet(t *testing.T) {
	fn := newFleetNet(t)
	gwA := fn.newFleetGateway(t, "gw-a", gwUnderlay, gwaCorp, "10.50.1.1")
	gwB := fn.newFleetGateway(t, "gw-b", gwbUnderlay, gwbCorp, "10.50.2.1")
	// The cluster has quorum once the registry answers.
	if ok, detail := waitFor(60*time.Second, 500*time.Millisecond, func() (bool, string) {
		out, err := gwA.cli("fleet", "export")
		return err == nil, fmt.Sprint(out, err)
	}); !ok {
		t.Fatalf("etcd cluster never answered: %s", detail)
	}
	gwA.start(t)
	gwB.start(t)
	ok, detail := waitFor(30*time.Second, 500*time.Millisecond, func() (bool, string) {
		out, err := gwA.cli("fleet", "status", "--json")
		if err != nil {
			return false, err.Error()
		}
		var ms []struct {
			Name      string `json:"name"`
			Alive     bool   `json:"alive"`
			PublicKey string `json:"public_key"`
		}
		if err := json.Unmarshal([]byte(out), &ms); err != nil {
			return false, out
		}
		return len(ms) == 2 && ms[0].Alive && ms[1].Alive && ms[0].PublicKey != "", out
	})
	if !ok {
		t.Fatalf("fleet status never listed gw-a and gw-b alive: %s", detail)
	}

	// Add on gw-a; the device's config for gw-b handshakes through gw-b
	// and resolves and reaches corp there.
	gwA.mustCLI(t, "peer", "add", "alice", "--device", "laptop")
	confB := gwA.mustCLI(t, "peer", "config", "alice/laptop", "--gateway", "gw-b")
	if !strings.Contains(confB, "Endpoint = "+gwbUnderlay+":"+wgPort) {
		t.Fatalf("config for gw-b rendered on gw-a has no gw-b endpoint:\n%s", redactKey(confB))
	}
	if own := gwB.mustCLI(t, "peer", "config", "alice/laptop"); own != confB {
		t.Errorf("gw-b's own config differs from the one gw-a rendered for it:\n%s\n---\n%s", redactKey(own), redactKey(confB))
	}
	gwB.waitPeers(t, 1, []string{"alice/laptop"}, nil)
	c := (&topology{t: t, dir: fn.dir}).wgQuickUp(t, fn.client, confB)
	if src := fn.reach(t, "gw-b"); src != gwbCorp {
		t.Errorf("through gw-b corp saw %s, want gw-b's %s (masquerade)", src, gwbCorp)
	}
	if hs, ok := gwB.handshake(t, "alice/laptop"); !ok || hs.IsZero() {
		t.Errorf("gw-b has no handshake with alice/laptop")
	}
	q := gwB.waitQuery(t, internalFQ, "alice/laptop", isCorp)
	if q.str("gateway") != "gw-b" {
		t.Errorf("gw-b's query log record has gateway %q, want gw-b", q.str("gateway"))
	}
	if m := gwB.metrics(t); metricSum(m, "sluice_fleet_store_up", `gateway="gw-b"`) != 1 {
		t.Errorf("gw-b metrics: sluice_fleet_store_up{gateway=\"gw-b\"} is not 1")
	}

	// Roaming: gw-b dies; the device moves to its config for gw-a.
	gwB.stop()
	c.down(t, fn.dir)
	confA := gwA.mustCLI(t, "peer", "config", "alice/laptop")
	(&topology{t: t, dir: fn.dir}).wgQuickUp(t, fn.client, confA)
	if src := fn.reach(t, "gw-a"); src != gwaCorp {
		t.Errorf("through gw-a corp saw %s, want gw-a's %s (masquerade)", src, gwaCorp)
	}
	out := gwA.mustCLI(t, "fleet", "status")
	if !strings.Contains(out, "gw-b") || !strings.Contains(out, "dead") {
		t.Errorf("fleet status after gw-b stopped:\n%s", out)
	}
	gwB.start(t)

	// Concurrent adds through both gateways.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 10 {
		for _, g := range []*fleetGW{gwA, gwB} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := g.cli("peer", "add", fmt.Sprintf("u%s%d", g.name[3:], i))
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
	var list []struct {
		ID   string `json:"id"`
		IPv4 string `json:"ipv4"`
		IPv6 string `json:"ipv6"`
	}
	listOut := gwB.mustCLI(t, "peer", "list", "--json")
	if err := json.Unmarshal([]byte(listOut), &list); err != nil {
		t.Fatalf("peer list --json: %v\n%s", err, listOut)
	}
	seen := map[string]string{}
	for _, p := range list {
		for _, a := range []string{p.IPv4, p.IPv6} {
			if other, dup := seen[a]; dup || a == "" {
				t.Errorf("address %q of %s also held by %s", a, p.ID, other)
			}
			seen[a] = p.ID
		}
	}
	if len(list) != 21 {
		t.Fatalf("%d peers after 1 + 20 concurrent adds through two gateways", len(list))
	}
	gwA.waitPeers(t, 21, []string{"alice/laptop", "ua0/default", "ub9/default"}, nil)
	gwB.waitPeers(t, 21, []string{"alice/laptop", "ua9/default", "ub0/default"}, nil)

	// One member of three down changes nothing: changes still commit and
	// reach both gateways.
	if err := fn.etcd[2].stop(10 * time.Second); err != nil {
		t.Logf("stop etcd member 2: %v", err)
	}
	gwA.mustCLI(t, "peer", "add", "onedown")
	gwB.waitPeers(t, 22, []string{"onedown/default"}, nil)
	gwA.waitOnline(t, true)
	gwA.mustCLI(t, "peer", "remove", "onedown/default")
	gwA.waitPeers(t, 21, nil, []string{"onedown/default"})

	// Partition: a second member stops, the cluster has no quorum. Both
	// gateways keep serving.
	if err := fn.etcd[1].stop(10 * time.Second); err != nil {
		t.Logf("stop etcd member 1: %v", err)
	}
	gwA.waitOnline(t, false)
	gwB.waitOnline(t, false)
	if src := fn.reach(t, "gw-a during the partition"); src != gwaCorp {
		t.Errorf("during the partition corp saw %s through gw-a", src)
	}
	_, err := gwA.cli("peer", "add", "mallory")
	if err == nil || !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), etcdMembers[0]+":2379") {
		t.Errorf("add during the partition = %v, want a refusal naming the registry", err)
	}
	s := gwA.fleetStatus(t)
	if len(s.Degraded) == 0 || len(s.NotReady) != 0 {
		t.Errorf("gw-a status during the partition: degraded %q, not ready %q", s.Degraded, s.NotReady)
	}
	ready, err := gwA.tp.gw.Exec("curl", "-sS", "--max-time", "3", "-w", " %{http_code}", "http://127.0.0.1:9153/readyz")
	if err != nil || !strings.Contains(ready, "degraded") || !strings.HasSuffix(strings.TrimSpace(ready), "200") {
		t.Errorf("/readyz of gw-a during the partition: %v %q, want 200 degraded", err, ready)
	}
	if m := gwA.metrics(t); metricSum(m, "sluice_fleet_store_up", `gateway="gw-a"`) != 0 {
		t.Errorf("gw-a metrics during the partition: sluice_fleet_store_up is not 0")
	}
	doc, _ := gwA.cli("doctor")
	if !strings.Contains(doc, "fleet registry") || !strings.Contains(doc, "unreachable") {
		t.Errorf("doctor during the partition:\n%s", doc)
	}
	// A restart during the partition comes up with its peers.
	gwA.stop()
	gwA.start(t)
	if s := gwA.fleetStatus(t); !s.Fleet.FromSnapshot || s.Fleet.Online {
		t.Errorf("gw-a restarted during the partition: %+v, want from the snapshot", s.Fleet)
	}
	gwA.waitPeers(t, 21, []string{"alice/laptop"}, nil)
	if src := fn.reach(t, "gw-a restarted during the partition"); src != gwaCorp {
		t.Errorf("after the restart corp saw %s through gw-a", src)
	}

	// Heal: both converge; a change after it reaches both, nothing lost
	// and nothing resurrected.
	for _, i := range []int{1, 2} {
		fn.startEtcd(t, i)
	}
	gwA.waitOnline(t, true)
	gwB.waitOnline(t, true)
	gwB.mustCLI(t, "peer", "remove", "ua0/default")
	gwA.mustCLI(t, "peer", "add", "late")
	for _, g := range []*fleetGW{gwA, gwB} {
		g.waitPeers(t, 21, []string{"alice/laptop", "late/default", "ub0/default"}, []string{"ua0/default", "mallory/default"})
	}
	if src := fn.reach(t, "gw-a after the heal"); src != gwaCorp {
		t.Errorf("after the heal corp saw %s through gw-a", src)
	}
}
