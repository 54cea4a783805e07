package peers

import (
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// EncryptedDNS describes the gateway's DoT and DoH listeners on the
// in-tunnel resolver addresses, for the client formats that can point a
// device's encrypted DNS at them.
type EncryptedDNS struct {
	ServerName string // the name in the certificate
	DoT, DoH   bool
	DoTPort    uint16 // 0 = 853
	DoHPort    uint16 // 0 = 443
	// CACert is the DER of sluice's own CA, nil when the operator's
	// certificate (from a CA devices already trust) is in use.
	CACert []byte
}

func (e *EncryptedDNS) check() error {
	if e == nil {
		return nil
	}
	if !e.DoT && !e.DoH {
		return fmt.Errorf("encrypted dns: neither dot nor doh")
	}
	if !domainRE.MatchString(strings.ToLower(e.ServerName)) {
		return fmt.Errorf("encrypted dns server name %q: not a DNS name", e.ServerName)
	}
	return nil
}

// DoHTemplate is the RFC 8484 URI template of the resolver.
func (e *EncryptedDNS) DoHTemplate() string {
	host := e.ServerName
	if e.DoHPort != 0 && e.DoHPort != 443 {
		host += ":" + strconv.Itoa(int(e.DoHPort))
	}
	return "https://" + host + "/dns-query"
}

func (e *EncryptedDNS) dotPort() uint16 {
	if e.DoTPort == 0 {
		return 853
	}
	return e.DoTPort
}

// CAPEM returns the CA certificate in PEM, or nil.
func (e *EncryptedDNS) CAPEM() []byte {
	if e == nil || len(e.CACert) == 0 {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.CACert})
}

// writeMobileconfigDNS adds a com.apple.dnsSettings.managed payload (DoH
// when the gateway offers it, else DoT) and, with sluice's own CA, a
// com.apple.security.root payload. The DNS settings apply only while the
// device's DNS servers are the tunnel's resolvers (that is, while the
// tunnel is up): on any other network they would point at addresses that
// are not reachable.
func writeMobileconfigDNS(w *plistWriter, p ClientParams, ident string) error {
	e := p.Encrypted
	if e == nil {
		return nil
	}
	if len(e.CACert) > 0 {
		caUUID, err := newUUID(p.rand)
		if err != nil {
			return err
		}
		w.open("", "dict")
		w.str("PayloadDisplayName", "DNS CA for "+e.ServerName)
		w.str("PayloadType", "com.apple.security.root")
		w.elem("key", "PayloadVersion")
		w.elem("integer", "1")
		w.str("PayloadIdentifier", ident+".dns-ca")
		w.str("PayloadUUID", caUUID)
		w.str("PayloadCertificateFileName", "sluice-dns-ca.cer")
		w.elem("key", "PayloadContent")
		w.elem("data", base64.StdEncoding.EncodeToString(e.CACert))
		w.close("dict")
	}
	dnsUUID, err := newUUID(p.rand)
	if err != nil {
		return err
	}
	w.open("", "dict")
	w.str("PayloadDisplayName", "Encrypted DNS in "+p.TunnelName)
	w.str("PayloadType", "com.apple.dnsSettings.managed")
	w.elem("key", "PayloadVersion")
	w.elem("integer", "1")
	w.str("PayloadIdentifier", ident+".dns")
	w.str("PayloadUUID", dnsUUID)
	w.open("DNSSettings", "dict")
	if e.DoH {
		w.str("DNSProtocol", "HTTPS")
		w.str("ServerURL", e.DoHTemplate())
	} else {
		w.str("DNSProtocol", "TLS")
		w.str("ServerName", e.ServerName)
	}
	w.open("ServerAddresses", "array")
	for _, a := range p.Resolvers {
		w.elem("string", a.String())
	}
	w.close("array")
	w.close("dict")
	w.open("OnDemandRules", "array")
	w.open("", "dict")
	w.str("Action", "Connect")
	w.open("DNSServerAddressMatch", "array")
	for _, a := range p.Resolvers {
		w.elem("string", a.String())
	}
	w.close("array")
	w.close("dict")
	w.open("", "dict")
	w.str("Action", "Disconnect")
	w.close("dict")
	w.close("array")
	w.close("dict")
	return nil
}

// writeNRPTDoH registers the DoH template for each resolver address
// (Windows 11 and Server 2022 and later), importing sluice's own CA into
// the machine's root store first.
func writeNRPTDoH(line func(string, ...any), p ClientParams) {
	e := p.Encrypted
	if e == nil || !e.DoH {
		return
	}
	line("# 3. Encrypted DNS (Windows 11 / Server 2022 and later): queries to the")
	line("#    in-tunnel resolvers go over DoH (%s), never in clear text.", e.DoHTemplate())
	if ca := e.CAPEM(); ca != nil {
		line("#    First trust the gateway's own DNS CA (it can only vouch for %s):", e.ServerName)
		line("$sluiceCA = Join-Path $env:TEMP 'sluice-dns-ca.cer'")
		line("Set-Content -Path $sluiceCA -Encoding ascii -Value @'")
		b := strings.TrimRight(string(ca), "\n")
		for _, l := range strings.Split(b, "\n") {
			line("%s", l)
		}
		line("'@")
		line("Import-Certificate -FilePath $sluiceCA -CertStoreLocation Cert:\\LocalMachine\\Root | Out-Null")
	}
	line("# Re-running is safe: an earlier registration of these addresses is replaced.")
	for _, a := range p.Resolvers {
		line("Remove-DnsClientDohServerAddress -ServerAddress %s -ErrorAction SilentlyContinue", psQuote(a.String()))
		line("Add-DnsClientDohServerAddress -ServerAddress %s -DohTemplate %s -AllowFallbackToUdp $False -AutoUpgrade $True",
			psQuote(a.String()), psQuote(e.DoHTemplate()))
	}
	line("# To remove the DoH registration:")
	line("#   %s", strings.Join(removeDoH(p.Resolvers), "; "))
}

func removeDoH(res []netip.Addr) []string {
	out := make([]string, len(res))
	for i, a := range res {
		out[i] = "Remove-DnsClientDohServerAddress -ServerAddress " + psQuote(a.String())
	}
	return out
}

// resolvedServers is the resolvectl server list: addr#name with DoT on.
func resolvedServers(p ClientParams) (servers string, dot bool) {
	e := p.Encrypted
	if e == nil || !e.DoT {
		return joinAddrs(p.Resolvers, " "), false
	}
	s := make([]string, len(p.Resolvers))
	for i, a := range p.Resolvers {
		ap := a.String()
		if e.dotPort() != 853 {
			ap = netip.AddrPortFrom(a, e.dotPort()).String()
		}
		s[i] = ap + "#" + e.ServerName
	}
	return strings.Join(s, " "), true
}
