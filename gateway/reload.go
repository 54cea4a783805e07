package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// ReloadResult is the outcome of a reload that ran.
type ReloadResult struct {
	Applied bool     `json:"applied"`
	Errors  []string `json:"errors,omitempty"`
	Notes   []string `json:"notes,omitempty"`
}

// Reload re-reads the configuration file. An invalid file is refused with
// its file:line errors and the running configuration stays. A valid one is
// applied without dropping tunnels or the DNS cache: the proxy swaps its
// routing in place and the firewall table is replaced in one batch, so there
// is no moment without it. Changes that need the interface re-created are
// reported and wait for the next start.
//
// Reloads are serialized with each other and with the start and stop (a
// stop waits for a reload in progress). Before the gateway is ready, and
// once it stops, Reload does nothing and returns an error wrapping
// ErrNotReady.
func (g *Gateway) Reload() (ReloadResult, error) {
	g.life.Lock()
	defer g.life.Unlock()
	if err := g.notReadyLocked(); err != nil {
		g.log.Warn("reload ignored", "err", err)
		return ReloadResult{}, err
	}
	if g.opts.Reloading != nil {
		g.opts.Reloading()
	}
	if g.opts.Ready != nil {
		defer g.opts.Ready()
	}
	return g.reloadLocked(), nil
}

// reloadLocked is Reload with g.life held for writing.
func (g *Gateway) reloadLocked() ReloadResult {
	old := g.Config()
	next, err := Load(sourcePath(old.Source))
	if err != nil {
		g.metrics.reloads.WithLabelValues("refused").Inc()
		g.log.Error("reload refused: configuration invalid, keeping the running one", "err", err)
		var ces ConfigErrors
		if errors.As(err, &ces) {
			r := ReloadResult{}
			for _, e := range ces {
				r.Errors = append(r.Errors, e.Error())
			}
			return r
		}
		return ReloadResult{Errors: []string{err.Error()}}
	}
	var notes []string
	if restart := restartKeys(old, next); len(restart) > 0 {
		notes = append(notes, fmt.Sprintf("changed keys that take effect at the next start: %v", restart))
		// Keep what the running interface really has.
		next.Interface = old.Interface
		next.DNS.Listen = old.DNS.Listen
		next.DNS.AllowedSources = old.DNS.AllowedSources
		next.Admin = old.Admin
		next.FirewallTable = old.FirewallTable
	}
	if _, err := g.ensureDNSCert(next); err != nil {
		g.metrics.reloads.WithLabelValues("refused").Inc()
		return ReloadResult{Errors: []string{"dns: " + err.Error()}, Notes: notes}
	}
	if err := g.proxy.Reload(next.DNS); err != nil {
		g.metrics.reloads.WithLabelValues("refused").Inc()
		return ReloadResult{Errors: []string{"dns: " + err.Error()}, Notes: notes}
	}
	if err := g.fw.Apply(g.firewallSpec(next)); err != nil {
		g.metrics.reloads.WithLabelValues("refused").Inc()
		// Put the proxy back in line with the firewall that is still in place.
		if rerr := g.proxy.Reload(old.DNS); rerr != nil {
			g.log.Error("restore dns configuration", "err", rerr)
		}
		return ReloadResult{Errors: []string{"firewall: " + err.Error()}, Notes: notes}
	}
	g.mu.Lock()
	g.cfg = next
	g.mu.Unlock()
	if old.Groups.Enabled() || next.Groups.Enabled() {
		if err := g.resyncPeers(); err != nil { // groups.go: peers' groups follow the new config
			g.log.Error("sync peers after reload", "err", err)
		}
	}
	g.metrics.reloads.WithLabelValues("applied").Inc()
	g.log.Info("configuration reloaded", "source", next.Source, "notes", notes)
	return ReloadResult{Applied: true, Notes: notes}
}

// sourcePath maps a Config.Source back to the path Load takes.
func sourcePath(source string) string {
	if source == embeddedConfigSource {
		return ""
	}
	return source
}

// restartKeys lists the settings that differ and cannot change live.
func restartKeys(a, b *Config) []string {
	var keys []string
	ai, bi := a.Interface, b.Interface
	if ai.Name != bi.Name {
		keys = append(keys, "interface.name")
	}
	if ai.Backend != bi.Backend {
		keys = append(keys, "interface.backend")
	}
	if ai.ListenPort != bi.ListenPort {
		keys = append(keys, "interface.listen_port")
	}
	if ai.PrivateKeyFile != bi.PrivateKeyFile {
		keys = append(keys, "interface.private_key_file")
	}
	if ai.MTU != bi.MTU {
		keys = append(keys, "interface.mtu")
	}
	if !slices.Equal(ai.Addresses, bi.Addresses) {
		keys = append(keys, "interface.addresses")
	}
	if !slices.Equal(a.DNS.Listen, b.DNS.Listen) {
		keys = append(keys, "dns.listen")
	}
	if a.Admin != b.Admin {
		keys = append(keys, "admin")
	}
	if a.FirewallTable != b.FirewallTable {
		keys = append(keys, "enforce.table")
	}
	if !a.Fleet.Equal(b.Fleet) {
		keys = append(keys, "fleet")
	}
	return keys
}

func netipFromIP(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}
