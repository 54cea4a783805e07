package gateway

import (
	"bytes"
	"fmt"
	"os"
)

// forwardingSysctls are the switches a gateway needs on when peers route
// through it: to peers.routes in split mode, to the egress interface (where
// the firewall table masquerades) in full mode; IPv4 and IPv6 alike.
var forwardingSysctls = []string{
	"/proc/sys/net/ipv4/ip_forward",
	"/proc/sys/net/ipv6/conf/all/forwarding",
}

// enableForwarding turns IP forwarding on in the current network namespace
// and reports which switches it changed. They stay on at stop: other
// services of a VPN concentrator usually rely on them too.
func enableForwarding() (changed []string, err error) {
	for _, p := range forwardingSysctls {
		cur, err := os.ReadFile(p)
		if err != nil {
			return changed, fmt.Errorf("read %s: %w", p, err)
		}
		if string(bytes.TrimSpace(cur)) == "1" {
			continue
		}
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return changed, fmt.Errorf("enable forwarding %s: %w", p, err)
		}
		changed = append(changed, p)
	}
	return changed, nil
}

// forwardingOff lists the forwarding switches that are off.
func forwardingOff() []string {
	var off []string
	for _, p := range forwardingSysctls {
		if cur, err := os.ReadFile(p); err != nil || string(bytes.TrimSpace(cur)) != "1" {
			off = append(off, p)
		}
	}
	return off
}

// forwards reports whether peers route anything beyond the gateway itself.
func (c *Config) forwards() bool { return c.FullTunnel() || len(c.Peers.Routes) > 0 }
