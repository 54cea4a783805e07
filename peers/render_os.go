package peers

import (
	"bytes"
	"crypto/rand"
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strings"
)

// psQuote quotes s as a PowerShell single-quoted string. PowerShell also
// treats the typographic single quotes as quote characters, so those are
// doubled too.
func psQuote(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for _, r := range s {
		switch r {
		case '\'', '\u2018', '\u2019', '\u201a', '\u201b':
			b.WriteRune(r)
		}
		b.WriteRune(r)
	}
	b.WriteByte('\'')
	return b.String()
}

// renderNRPT writes the Windows NRPT rules: one rule per search domain in
// split mode, one rule for "." (every name) in full mode or when there is
// no search domain, all pointing at the in-tunnel resolvers. The script is
// idempotent: it first removes the rules an earlier run added (they carry
// the comment "sluice USER/DEVICE"), and merges the search domains into the
// suffix search list without duplicating them.
func renderNRPT(p ClientParams) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	comment := psQuote("sluice " + p.Peer.ID())
	servers := make([]string, len(p.Resolvers))
	for i, r := range p.Resolvers {
		servers[i] = psQuote(r.String())
	}
	var namespaces, names []string
	if p.FullTunnel || len(routedDomains(p)) == 0 {
		namespaces = []string{"."}
	} else {
		names = routedDomains(p)
		for _, d := range names {
			namespaces = append(namespaces, "."+d)
		}
	}
	line("# sluice: Windows DNS routing (NRPT) for %s, tunnel %q.", p.Peer.ID(), p.TunnelName)
	line("# 1. Import this device's WireGuard config into the WireGuard app and activate")
	line("#    it: sluice peer config %s --format conf", p.Peer.ID())
	line("# 2. Run this script in an elevated PowerShell. Windows then sends")
	if namespaces[0] == "." {
		line("#    every name to the in-tunnel resolvers %s", joinAddrs(p.Resolvers, ", "))
	} else {
		line("#    %s to the in-tunnel resolvers %s", strings.Join(names, ", "), joinAddrs(p.Resolvers, ", "))
	}
	line("#    only, never to another network adapter's resolver.")
	line("# Running it again is safe: it first removes the rules it added before")
	line("# (those whose Comment is %s), then adds them anew.", comment)
	if namespaces[0] == "." {
		line("#")
		line("# The rule for \".\" (every name) applies on every network adapter, also while")
		line("# the tunnel is down. The in-tunnel resolvers are then unreachable, so no name")
		line("# resolves at all, not even a hotel or airport login page: this fails closed,")
		line("# nothing goes to the local network's resolver. Bring the tunnel up first; to")
		line("# resolve without the tunnel again, remove the rules (last lines below).")
	}
	line("$sluiceComment = %s", comment)
	line("Get-DnsClientNrptRule | Where-Object { $_.Comment -eq $sluiceComment } | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }")
	for _, ns := range namespaces {
		line("Add-DnsClientNrptRule -Namespace %s -NameServers %s -Comment $sluiceComment -DisplayName $sluiceComment", psQuote(ns), strings.Join(servers, ","))
	}
	if len(p.SearchDomains) > 0 {
		quoted := make([]string, len(p.SearchDomains))
		for i, d := range p.SearchDomains {
			quoted[i] = psQuote(d)
		}
		line("# Search suffixes: a short name (\"intranet\") is tried as %s.", strings.Join(p.SearchDomains, ", "))
		line("# They are added to the existing list, once, keeping its order.")
		line("$sluiceSuffixes = @(%s)", strings.Join(quoted, ","))
		line("$current = @((Get-DnsClientGlobalSetting).SuffixSearchList | Where-Object { $_ })")
		line("Set-DnsClientGlobalSetting -SuffixSearchList @($current + $sluiceSuffixes | Select-Object -Unique)")
	}
	writeNRPTDoH(line, p)
	line("# To remove these rules:")
	line("#   Get-DnsClientNrptRule | Where-Object { $_.Comment -eq %s } | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }", comment)
	if len(p.SearchDomains) > 0 {
		quoted := make([]string, len(p.SearchDomains))
		for i, d := range p.SearchDomains {
			quoted[i] = psQuote(d)
		}
		line("#   Set-DnsClientGlobalSetting -SuffixSearchList @((Get-DnsClientGlobalSetting).SuffixSearchList | Where-Object { $_ -notin @(%s) })", strings.Join(quoted, ","))
	}
	return b.String()
}

// routedDomains are the names split DNS sends into the tunnel: the search
// domains and the internal zones, each once, in that order.
func routedDomains(p ClientParams) []string {
	out := append([]string(nil), p.SearchDomains...)
	for _, z := range p.Zones {
		if !slices.Contains(out, z) {
			out = append(out, z)
		}
	}
	return out
}

// writeResolvedHooks writes PostUp/PreDown lines giving the link its DNS
// servers and domains in systemd-resolved: in split mode the search
// domains (which resolved also uses as routing domains) so only those names
// go into the tunnel; in full mode, or without search domains, "~." so
// every name does.
func writeResolvedHooks(b *strings.Builder, p ClientParams) {
	domains := append([]string(nil), p.SearchDomains...)
	for _, z := range p.Zones {
		if !slices.Contains(p.SearchDomains, z) {
			domains = append(domains, "~"+z) // routing only, not a search domain
		}
	}
	defaultRoute := "false"
	if p.FullTunnel || len(domains) == 0 {
		domains = append([]string{"~."}, domains...)
		defaultRoute = "true"
	}
	fmt.Fprintf(b, "# systemd-resolved: per-link DNS for this tunnel (no DNS line, so wg-quick does not call resolvconf).\n")
	servers, dot := resolvedServers(p)
	if dot {
		fmt.Fprintf(b, "# DNS over TLS to the in-tunnel resolvers, verified for %s (the CA must be in the system store: sluice ca).\n", p.Encrypted.ServerName)
		defaultRoute += "; resolvectl dnsovertls %i yes"
	}
	fmt.Fprintf(b, "PostUp = resolvectl dns %%i %s; resolvectl domain %%i %s; resolvectl default-route %%i %s\n",
		servers, strings.Join(domains, " "), defaultRoute)
	fmt.Fprintf(b, "PreDown = resolvectl revert %%i\n")
}

// newUUID returns a random (version 4) UUID in the upper-case form Apple
// profiles use.
func newUUID(r io.Reader) (string, error) {
	if r == nil {
		r = rand.Reader
	}
	var u [16]byte
	if _, err := io.ReadFull(r, u[:]); err != nil {
		return "", fmt.Errorf("generate uuid: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// plistWriter writes an XML property list; every text is escaped with
// encoding/xml.
type plistWriter struct {
	b      bytes.Buffer
	indent int
}

func (w *plistWriter) raw(s string) {
	w.b.WriteString(strings.Repeat("\t", w.indent))
	w.b.WriteString(s)
	w.b.WriteByte('\n')
}

func (w *plistWriter) elem(tag, text string) {
	var esc bytes.Buffer
	xml.EscapeText(&esc, []byte(text)) // writes to a bytes.Buffer: cannot fail
	w.raw("<" + tag + ">" + esc.String() + "</" + tag + ">")
}

func (w *plistWriter) str(key, val string) {
	w.elem("key", key)
	w.elem("string", val)
}

func (w *plistWriter) open(key, tag string) {
	if key != "" {
		w.elem("key", key)
	}
	w.raw("<" + tag + ">")
	w.indent++
}

func (w *plistWriter) close(tag string) {
	w.indent--
	w.raw("</" + tag + ">")
}

// renderMobileconfig writes an Apple configuration profile with one
// com.apple.vpn.managed payload for the official WireGuard app, which reads
// the wg-quick text from VendorConfig.WgQuickConfig (including its DNS
// line, which the app applies as the tunnel's DNS settings).
func renderMobileconfig(p ClientParams) ([]byte, error) {
	if p.Peer.PrivateKey == nil {
		return nil, ErrNoPrivateKey
	}
	profileUUID, err := newUUID(p.rand)
	if err != nil {
		return nil, err
	}
	vpnUUID, err := newUUID(p.rand)
	if err != nil {
		return nil, err
	}
	ident := "vpn.sluice." + p.TunnelName + "." + p.Peer.User + "." + p.Peer.Device
	w := &plistWriter{}
	w.raw(`<?xml version="1.0" encoding="UTF-8"?>`)
	w.raw(`<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">`)
	w.raw(`<plist version="1.0">`)
	w.open("", "dict")
	w.str("PayloadDisplayName", p.TunnelName+" ("+p.Peer.ID()+")")
	w.str("PayloadDescription", "WireGuard tunnel "+p.TunnelName+" to "+p.Endpoint+"; DNS is answered inside the tunnel.")
	w.str("PayloadType", "Configuration")
	w.elem("key", "PayloadVersion")
	w.elem("integer", "1")
	w.str("PayloadIdentifier", ident)
	w.str("PayloadUUID", profileUUID)
	w.open("PayloadContent", "array")
	w.open("", "dict")
	w.str("PayloadDisplayName", "VPN")
	w.str("PayloadType", "com.apple.vpn.managed")
	w.elem("key", "PayloadVersion")
	w.elem("integer", "1")
	w.str("PayloadIdentifier", ident+".vpn")
	w.str("PayloadUUID", vpnUUID)
	w.str("UserDefinedName", p.TunnelName)
	w.str("VPNType", "VPN")
	w.str("VPNSubType", "com.wireguard."+p.ApplePlatform)
	w.open("VendorConfig", "dict")
	w.str("WgQuickConfig", renderConf(p, confOptions{}))
	w.close("dict")
	w.open("VPN", "dict")
	w.str("RemoteAddress", p.Endpoint)
	w.str("AuthenticationMethod", "Password")
	w.close("dict")
	w.close("dict")
	if err := writeMobileconfigDNS(w, p, ident); err != nil {
		return nil, err
	}
	w.close("array")
	w.close("dict")
	w.raw(`</plist>`)
	return w.b.Bytes(), nil
}
