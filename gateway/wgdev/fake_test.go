package wgdev

import (
	"fmt"
	"net"
	"os"
	"slices"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// fakeWG is an in-memory wgClient with WireGuard's configuration semantics
// (add, update_only, remove, replace_allowed_ips; an allowed IP moves to the
// last peer that claims it). It records every ConfigureDevice.
type fakeWG struct {
	mu           sync.Mutex
	name         string
	dev          wgtypes.Device // without Peers
	peers        map[wgtypes.Key]*wgtypes.Peer
	owner        map[string]wgtypes.Key // allowed IP -> peer holding it
	configs      []wgtypes.Config
	configureErr error
	deviceErr    error
	closed       bool
}

func newFakeWG(name string) *fakeWG {
	return &fakeWG{
		name:  name,
		dev:   wgtypes.Device{Name: name},
		peers: make(map[wgtypes.Key]*wgtypes.Peer),
		owner: make(map[string]wgtypes.Key),
	}
}

func (f *fakeWG) Device(name string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deviceErr != nil {
		return nil, f.deviceErr
	}
	if name != f.name {
		return nil, os.ErrNotExist
	}
	d := f.dev
	for _, p := range f.peers {
		c := *p
		c.AllowedIPs = slices.Clone(p.AllowedIPs)
		d.Peers = append(d.Peers, c)
	}
	return &d, nil
}

func (f *fakeWG) ConfigureDevice(name string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.configs = append(f.configs, cfg)
	if f.configureErr != nil {
		return f.configureErr
	}
	if name != f.name {
		return os.ErrNotExist
	}
	if cfg.PrivateKey != nil {
		f.dev.PrivateKey = *cfg.PrivateKey
		f.dev.PublicKey = cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		f.dev.ListenPort = *cfg.ListenPort
		if f.dev.ListenPort == 0 {
			f.dev.ListenPort = 40000
		}
	}
	if cfg.FirewallMark != nil {
		f.dev.FirewallMark = *cfg.FirewallMark
	}
	if cfg.ReplacePeers {
		f.peers = make(map[wgtypes.Key]*wgtypes.Peer)
		f.owner = make(map[string]wgtypes.Key)
	}
	for _, pc := range cfg.Peers {
		p, ok := f.peers[pc.PublicKey]
		if pc.Remove {
			if ok {
				for _, ip := range p.AllowedIPs {
					delete(f.owner, ip.String())
				}
				delete(f.peers, pc.PublicKey)
			}
			continue
		}
		if !ok {
			if pc.UpdateOnly {
				continue
			}
			p = &wgtypes.Peer{PublicKey: pc.PublicKey}
			f.peers[pc.PublicKey] = p
		}
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			for _, ip := range p.AllowedIPs {
				delete(f.owner, ip.String())
			}
			p.AllowedIPs = nil
		}
		for _, ip := range pc.AllowedIPs {
			f.claim(ip)
			p.AllowedIPs = append(p.AllowedIPs, ip)
			f.owner[ip.String()] = p.PublicKey
		}
	}
	return nil
}

// claim takes ip away from the peer holding it, as the device does before
// giving it to another one.
func (f *fakeWG) claim(ip net.IPNet) {
	k, ok := f.owner[ip.String()]
	if !ok {
		return
	}
	delete(f.owner, ip.String())
	if p, ok := f.peers[k]; ok {
		p.AllowedIPs = slices.DeleteFunc(p.AllowedIPs, func(n net.IPNet) bool { return n.String() == ip.String() })
	}
}

func (f *fakeWG) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("fake wgctrl closed twice")
	}
	f.closed = true
	return nil
}
