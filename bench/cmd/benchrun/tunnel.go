package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Tunnel topology: two namespaces joined by a veth pair on 192.0.2.0/24; the
// gateway namespace runs the server under test, the client namespace always
// runs the same client (wireguard-go built from go.mod's version).
const (
	gwUnderlay     = "192.0.2.1/24"
	clientUnderlay = "192.0.2.2/24"
	wgPort         = 51820
	gwTunnel4      = "10.20.0.1/24"
	gwTunnel6      = "fd20::1/64"
	tunnelNet4     = "10.20.0.0/24"
	tunnelNet6     = "fd20::/64"
	tunnelMTU      = 1420
	iperfPort      = 5201
	// uapiDir is where wireguard-go puts its control sockets, shared by
	// every namespace.
	uapiDir = "/var/run/wireguard"
	// upTimeout bounds waiting for an interface, a socket or a handshake.
	upTimeout = 20 * time.Second
)

// tunVariant is one server implementation.
type tunVariant struct {
	name string
	na   string
	up   func(ctx context.Context) (*proc, error)
	down func() // after the run, when set
}

type tunnel struct {
	b          *bench
	dir        string
	c, g       string // namespace names
	gwIf, cIf  string
	gwKey      wgtypes.Key
	client     clientConf
	gwKeyFile  string
	cKeyFile   string
	pskFile    string
	sluiceConf string
	tableFile  string // sluice's nftables table as `sluice firewall show` printed it
}

const sluiceConfTmpl = `interface: {name: {{IF}}, backend: userspace, listen_port: 51820, private_key_file: {{DIR}}/gw.key, addresses: [10.20.0.1/24, fd20::1/64], mtu: 1420, endpoint: 192.0.2.1:51820}
dns: {mode: split, listen: [10.20.0.53, fd20::53], default: {upstreams: [127.0.0.1:5300]}}
peers: {state_dir: {{DIR}}/state, routes: []}
admin: {listen: 127.0.0.1:0, control_socket: {{DIR}}/ctl.sock}
`

func (b *bench) tunnelSection(ctx context.Context) []row {
	m := b.mode
	names := []string{"sluice (embedded wireguard-go + firewall)", "wireguard-go same version", "wireguard-go Debian",
		"wireguard-go same version + sluice's nftables table"}
	gbps := map[string]*series{}
	for _, n := range names {
		gbps[n] = &series{}
	}
	ratioSluice, ratioDebian, ratioTable := &series{}, &series{}, &series{}
	rows := func() []row {
		R := m.tunRounds
		var out []row
		for _, n := range names {
			out = append(out, row{figure: "Tunnel TCP throughput — " + n, unit: " Gbit/s", s: gbps[n], rounds: R})
		}
		return append(out,
			row{figure: "Tunnel ratio sluice / wireguard-go same version", unit: "×", s: ratioSluice, rounds: R, goal: atLeast(0.95, "×")},
			row{figure: "Tunnel ratio Debian / wireguard-go same version", unit: "×", s: ratioDebian, rounds: R},
			row{figure: "Tunnel ratio with sluice's table / without (wireguard-go same version)", unit: "×", s: ratioTable, rounds: R})
	}
	failAll := func(reason string) []row {
		out := rows()
		for _, r := range out {
			r.s.fail(reason)
		}
		return out
	}
	t := &tunnel{b: b, dir: filepath.Join(b.work, "tunnel"), c: b.runID + "c", g: b.runID + "g", gwIf: b.runID + "wgs", cIf: b.runID + "wgc"}
	if err := t.setup(ctx); err != nil {
		return failAll(err.Error())
	}
	defer func() {
		for _, ns := range []string{t.c, t.g} {
			if err := b.r.delNetns(ns); err != nil {
				b.log.Warn("delete namespace", "err", err)
			}
		}
	}()

	sluiceNA := ""
	if !b.have("sluice") {
		sluiceNA = b.why("sluice")
	} else if err := t.prepareSluice(ctx); err != nil {
		sluiceNA = err.Error()
	} else if err := t.captureTable(ctx); err != nil {
		sluiceNA = err.Error()
	}
	if sluiceNA == "" {
		if err := t.writeKeys(); err != nil {
			return failAll(err.Error())
		}
	} else if err := t.selfKeys(); err != nil {
		return failAll(err.Error())
	}
	variants := []*tunVariant{
		{name: names[0], na: sluiceNA, up: t.upSluice},
		{name: names[1], up: func(ctx context.Context) (*proc, error) {
			return t.upWireguardGo(ctx, "wg-server-same", filepath.Join(b.bin, "wireguard-go-same"))
		}},
		{name: names[2], up: func(ctx context.Context) (*proc, error) {
			return t.upWireguardGo(ctx, "wg-server-debian", "/usr/bin/wireguard-go")
		}},
		{name: names[3], na: sluiceNA, up: t.upWireguardGoTable, down: t.dropTable},
	}
	if sluiceNA != "" {
		ratioTable.fail(sluiceNA)
	}
	if sluiceNA != "" {
		gbps[names[0]].fail(sluiceNA)
		ratioSluice.fail(sluiceNA)
	}
	if _, err := os.Stat("/usr/bin/wireguard-go"); err != nil {
		variants[2].na = "Debian wireguard-go not installed"
		gbps[names[2]].fail(variants[2].na)
		ratioDebian.fail(variants[2].na)
	}

	iperfSrv, err := b.r.start("iperf3-server", t.g, b.cpus.server, nil, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return failAll(err.Error())
	}
	defer b.r.stop(iperfSrv)

	for round := range m.tunRounds {
		if ctx.Err() != nil {
			break
		}
		b.log.Info("tunnel round", "round", round+1, "of", m.tunRounds)
		got := map[string]float64{}
		for k := range variants {
			v := variants[(round+k)%len(variants)]
			if v.na != "" {
				continue
			}
			bps, err := t.measure(ctx, v)
			if err != nil {
				b.log.Warn("tunnel run failed", "variant", v.name, "err", err)
				gbps[v.name].fail(err.Error())
				continue
			}
			got[v.name] = bps
			gbps[v.name].add(bps / 1e9)
		}
		if same := got[names[1]]; same > 0 {
			if s := got[names[0]]; s > 0 {
				ratioSluice.add(s / same)
			}
			if d := got[names[2]]; d > 0 {
				ratioDebian.add(d / same)
			}
			if f := got[names[3]]; f > 0 {
				ratioTable.add(f / same)
			}
		}
	}
	b.notes = append(b.notes, fmt.Sprintf("Tunnel: namespaces %s (client) and %s (gateway) over veth; client is always wireguard-go built from go.mod's version; gateway-side processes (server, iperf3 -s) on CPU %s, client side (wireguard-go, iperf3 -c) on CPU %s; iperf3 TCP to 10.20.0.1 for %s (-O 1 omits slow start), MTU %d; each variant starts fresh (new server and client processes, handshake) every round",
		t.c, t.g, b.cpus.server, b.cpus.client, m.iperfTime, tunnelMTU))
	return rows()
}

// setup creates the two namespaces and the veth link between them.
func (t *tunnel) setup(ctx context.Context) error {
	r := t.b.r
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return fmt.Errorf("create tunnel dir: %w", err)
	}
	for _, ns := range []string{t.c, t.g} {
		if err := r.addNetns(ctx, ns); err != nil {
			return err
		}
	}
	vc, vg := t.b.runID+"v0", t.b.runID+"v1"
	cmds := [][]string{
		{"ip", "-n", t.c, "link", "add", vc, "type", "veth", "peer", "name", vg, "netns", t.g},
		{"ip", "-n", t.c, "addr", "add", clientUnderlay, "dev", vc},
		{"ip", "-n", t.g, "addr", "add", gwUnderlay, "dev", vg},
		{"ip", "-n", t.c, "link", "set", vc, "up"},
		{"ip", "-n", t.g, "link", "set", vg, "up"},
	}
	for _, c := range cmds {
		if _, err := r.run(ctx, "", "", nil, c...); err != nil {
			return fmt.Errorf("set up veth: %w", err)
		}
	}
	return nil
}

// prepareSluice writes the daemon's config and key and creates the bench
// peer with the CLI; the client side is then configured from the rendered
// wg-quick config.
func (t *tunnel) prepareSluice(ctx context.Context) error {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return fmt.Errorf("generate gateway key: %w", err)
	}
	t.gwKey = k
	if err := os.WriteFile(filepath.Join(t.dir, "gw.key"), []byte(k.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("write gateway key: %w", err)
	}
	t.sluiceConf = filepath.Join(t.dir, "sluice.yaml")
	conf := strings.NewReplacer("{{IF}}", t.gwIf, "{{DIR}}", t.dir).Replace(sluiceConfTmpl)
	if err := os.WriteFile(t.sluiceConf, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write sluice config: %w", err)
	}
	sl := filepath.Join(t.b.bin, "sluice")
	if _, err := t.b.r.run(ctx, t.g, "", nil, sl, "peer", "add", "bench", "-c", t.sluiceConf); err != nil {
		return fmt.Errorf("sluice peer add: %w", err)
	}
	out, err := t.b.r.run(ctx, t.g, "", nil, sl, "peer", "config", "bench", "-c", t.sluiceConf)
	if err != nil {
		return fmt.Errorf("sluice peer config: %w", err)
	}
	c, err := parseWGQuick(out)
	if err != nil {
		return fmt.Errorf("sluice peer config: %w", err)
	}
	if c.PeerKey != k.PublicKey().String() {
		return errors.New("sluice peer config: peer key is not the gateway's")
	}
	t.client = c
	return nil
}

// selfKeys makes keys and a client address when sluice is not available.
func (t *tunnel) selfKeys() error {
	gk, err1 := wgtypes.GeneratePrivateKey()
	ck, err2 := wgtypes.GeneratePrivateKey()
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("generate keys: %w", err)
	}
	t.gwKey = gk
	t.client = clientConf{PrivateKey: ck.String(), PeerKey: gk.PublicKey().String(), Addresses: []string{"10.20.0.2/32", "fd20::2/128"}}
	return t.writeKeys()
}

// writeKeys writes the key files wg(8) reads.
func (t *tunnel) writeKeys() error {
	t.gwKeyFile = filepath.Join(t.dir, "gw.key")
	t.cKeyFile = filepath.Join(t.dir, "client.key")
	files := map[string]string{t.gwKeyFile: t.gwKey.String(), t.cKeyFile: t.client.PrivateKey}
	if t.client.PresharedKey != "" {
		t.pskFile = filepath.Join(t.dir, "psk")
		files[t.pskFile] = t.client.PresharedKey
	}
	for f, v := range files {
		if err := os.WriteFile(f, []byte(v+"\n"), 0o600); err != nil {
			return fmt.Errorf("write key file: %w", err)
		}
	}
	return nil
}

// measure brings a variant and the client up, runs iperf3, and tears both down.
func (t *tunnel) measure(ctx context.Context, v *tunVariant) (float64, error) {
	srv, err := v.up(ctx)
	defer t.b.r.stop(srv)
	if v.down != nil {
		defer v.down()
	}
	if err != nil {
		return 0, err
	}
	cli, err := t.upClient(ctx)
	defer t.b.r.stop(cli)
	if err != nil {
		return 0, err
	}
	if err := t.waitPing(ctx); err != nil {
		return 0, fmt.Errorf("%s: %w", v.name, err)
	}
	ictx, cancel := context.WithTimeout(ctx, t.b.mode.iperfTime+30*time.Second)
	defer cancel()
	out, err := t.b.r.runTimeout(ictx, t.c, t.b.cpus.client, nil, "iperf3", "-c", "10.20.0.1", "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(int(t.b.mode.iperfTime.Seconds())), "-O", "1", "-J")
	if err != nil {
		if bps, perr := parseIperf3(out); perr != nil && bps == 0 {
			return 0, fmt.Errorf("iperf3 through %s: %w (%v)", v.name, err, perr)
		}
		return 0, fmt.Errorf("iperf3 through %s: %w", v.name, err)
	}
	if srv.Exited() {
		return 0, fmt.Errorf("%s exited during the run: %s", v.name, t.b.r.logTail(srv.name, 2))
	}
	return parseIperf3(out)
}

// upWireguardGo starts a standalone wireguard-go as the gateway and
// configures it like sluice configures its embedded device.
func (t *tunnel) upWireguardGo(ctx context.Context, name, binary string) (*proc, error) {
	r := t.b.r
	p, err := r.start(name, t.g, t.b.cpus.server, []string{"WG_PROCESS_FOREGROUND=1"}, binary, "-f", t.gwIf)
	if err != nil {
		return nil, err
	}
	if err := t.waitSock(ctx, p, t.gwIf); err != nil {
		return p, err
	}
	var allowed []string
	for _, a := range t.client.Addresses {
		pfx, err := netip.ParsePrefix(a)
		if err != nil {
			return p, fmt.Errorf("parse client address %q: %w", a, err)
		}
		allowed = append(allowed, netip.PrefixFrom(pfx.Addr(), pfx.Addr().BitLen()).String())
	}
	cpub, err := wgtypes.ParseKey(t.client.PrivateKey)
	if err != nil {
		return p, fmt.Errorf("parse client key: %w", err)
	}
	set := []string{"wg", "set", t.gwIf, "private-key", t.gwKeyFile, "listen-port", strconv.Itoa(wgPort),
		"peer", cpub.PublicKey().String(), "allowed-ips", strings.Join(allowed, ",")}
	if t.pskFile != "" {
		set = append(set, "preshared-key", t.pskFile)
	}
	cmds := [][]string{
		set,
		{"ip", "addr", "add", gwTunnel4, "dev", t.gwIf},
		{"ip", "addr", "add", gwTunnel6, "dev", t.gwIf},
		{"ip", "link", "set", t.gwIf, "mtu", strconv.Itoa(tunnelMTU), "up"},
	}
	for _, c := range cmds {
		if _, err := r.run(ctx, t.g, "", nil, c...); err != nil {
			return p, fmt.Errorf("configure %s: %w", name, err)
		}
	}
	return p, nil
}

// upWireguardGoTable is the same-version wireguard-go with sluice's table
// loaded: the cost of the rules alone, on an identical data plane.
func (t *tunnel) upWireguardGoTable(ctx context.Context) (*proc, error) {
	p, err := t.upWireguardGo(ctx, "wg-server-same-table", filepath.Join(t.b.bin, "wireguard-go-same"))
	if err != nil {
		return p, err
	}
	if _, err := t.b.r.run(ctx, t.g, "", nil, "nft", "-f", t.tableFile); err != nil {
		return p, fmt.Errorf("load sluice's table: %w", err)
	}
	return p, nil
}

func (t *tunnel) dropTable() {
	if _, err := t.b.r.run(context.Background(), t.g, "", nil, "nft", "delete", "table", "inet", "sluice"); err != nil {
		t.b.log.Warn("delete sluice's table", "err", err)
	}
}

// captureTable runs sluice once and saves its table in nft syntax for
// upWireguardGoTable.
func (t *tunnel) captureTable(ctx context.Context) error {
	p, err := t.upSluice(ctx)
	defer t.b.r.stop(p)
	if err != nil {
		return err
	}
	out, err := t.b.r.run(ctx, t.g, "", nil, filepath.Join(t.b.bin, "sluice"), "firewall", "show", "-c", t.sluiceConf)
	if err != nil {
		return fmt.Errorf("sluice firewall show: %w", err)
	}
	if !strings.Contains(out, "table inet sluice") || !strings.Contains(out, t.gwIf) {
		return fmt.Errorf("sluice firewall show: no table for %s in its output", t.gwIf)
	}
	t.tableFile = filepath.Join(t.dir, "sluice-table.nft")
	return os.WriteFile(t.tableFile, []byte(out), 0o600)
}

// upSluice starts `sluice up` in the gateway namespace and waits until its
// interface carries the gateway address.
func (t *tunnel) upSluice(ctx context.Context) (*proc, error) {
	p, err := t.b.r.start("sluice-up", t.g, t.b.cpus.server, nil, filepath.Join(t.b.bin, "sluice"), "up", "-c", t.sluiceConf, "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(upTimeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p.Exited() {
			return p, fmt.Errorf("sluice up exited: %s", t.b.r.logTail(p.name, 3))
		}
		out, err := t.b.r.run(ctx, t.g, "", nil, "ip", "-o", "addr", "show", "dev", t.gwIf)
		if err == nil && strings.Contains(out, "10.20.0.1/") && strings.Contains(out, "fd20::1/") {
			return p, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return p, ctx.Err()
	}
	return p, fmt.Errorf("sluice up: interface %s without its addresses after %s: %s", t.gwIf, upTimeout, t.b.r.logTail(p.name, 2))
}

// upClient starts the client wireguard-go and configures it from the
// client config.
func (t *tunnel) upClient(ctx context.Context) (*proc, error) {
	r := t.b.r
	p, err := r.start("wg-client", t.c, t.b.cpus.client, []string{"WG_PROCESS_FOREGROUND=1"}, filepath.Join(t.b.bin, "wireguard-go-same"), "-f", t.cIf)
	if err != nil {
		return nil, err
	}
	if err := t.waitSock(ctx, p, t.cIf); err != nil {
		return p, err
	}
	set := []string{"wg", "set", t.cIf, "private-key", t.cKeyFile, "peer", t.gwKey.PublicKey().String(),
		"endpoint", fmt.Sprintf("192.0.2.1:%d", wgPort), "allowed-ips", tunnelNet4 + "," + tunnelNet6}
	if t.pskFile != "" {
		set = append(set, "preshared-key", t.pskFile)
	}
	cmds := [][]string{set}
	for _, a := range t.client.Addresses {
		cmds = append(cmds, []string{"ip", "addr", "add", a, "dev", t.cIf})
	}
	cmds = append(cmds,
		[]string{"ip", "link", "set", t.cIf, "mtu", strconv.Itoa(tunnelMTU), "up"},
		[]string{"ip", "route", "replace", tunnelNet4, "dev", t.cIf},
		[]string{"ip", "-6", "route", "replace", tunnelNet6, "dev", t.cIf})
	for _, c := range cmds {
		if _, err := r.run(ctx, t.c, "", nil, c...); err != nil {
			return p, fmt.Errorf("configure client: %w", err)
		}
	}
	return p, nil
}

// waitSock waits for wireguard-go's UAPI socket.
func (t *tunnel) waitSock(ctx context.Context, p *proc, ifname string) error {
	sock := filepath.Join(uapiDir, ifname+".sock")
	deadline := time.Now().Add(upTimeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p.Exited() {
			return fmt.Errorf("%s exited: %s", p.name, t.b.r.logTail(p.name, 3))
		}
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%s: no socket %s after %s", p.name, sock, upTimeout)
}

// waitPing waits for the first answer through the tunnel (the handshake).
func (t *tunnel) waitPing(ctx context.Context) error {
	var last error
	for range 20 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := t.b.r.run(ctx, t.c, "", nil, "ping", "-c", "1", "-W", "1", "10.20.0.1"); err == nil {
			return nil
		} else {
			last = err
		}
	}
	return fmt.Errorf("no ping through the tunnel: %w", last)
}

// writeKey writes a fresh WireGuard private key file (0600).
func writeKey(path string) error {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	if err := os.WriteFile(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("write key %q: %w", path, err)
	}
	return nil
}
