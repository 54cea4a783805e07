package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// encListener is one DoT or DoH listener of one address.
type encListener struct {
	key   string // transport|address|port, what Reload compares
	addr  net.Addr
	tr    Transport
	close func() error
}

func encKey(tr Transport, a netip.Addr, port uint16) string {
	return fmt.Sprintf("%s|%s", tr, netip.AddrPortFrom(a, port))
}

// wantEncrypted lists the listener keys cfg asks for, in order.
func wantEncrypted(cfg Config) (keys []string, binds []func(context.Context, *Proxy) (*encListener, error)) {
	enc := cfg.Encrypted
	for _, a := range cfg.Listen {
		for _, t := range []struct {
			on   bool
			tr   Transport
			port uint16
		}{{enc.DoT, TransportDoT, enc.DoTPort}, {enc.DoH, TransportDoH, enc.DoHPort}} {
			if !t.on {
				continue
			}
			keys = append(keys, encKey(t.tr, a, t.port))
			binds = append(binds, func(ctx context.Context, p *Proxy) (*encListener, error) {
				return p.bindEncrypted(ctx, a, t.tr, t.port, enc)
			})
		}
	}
	return keys, binds
}

// bindEncrypted opens one DoT or DoH listener and starts serving it.
func (p *Proxy) bindEncrypted(ctx context.Context, a netip.Addr, tr Transport, port uint16, cfg EncryptedConfig) (*encListener, error) {
	network := "tcp4"
	if a.Is6() {
		network = "tcp6"
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, netip.AddrPortFrom(a, port).String())
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", tr, netip.AddrPortFrom(a, port), err)
	}
	bound := ln.Addr().(*net.TCPAddr).AddrPort()
	l := &encListener{key: encKey(tr, a, port), addr: ln.Addr(), tr: tr}
	switch tr {
	case TransportDoT:
		l.close = p.newDoTServer(ln, cfg).close
	case TransportDoH:
		l.close = p.newDoHServer(ln, cfg).close
	}
	p.log.Debug("encrypted dns listener", "transport", tr.String(), "addr", bound.String())
	return l, nil
}

// syncEncrypted makes the encrypted listeners match cfg: listeners whose
// transport, address and port are unchanged stay (with their connections),
// the others are closed, then the missing ones are bound. It must be called
// with reloadMu held.
func (p *Proxy) syncEncrypted(ctx context.Context, cfg Config) error {
	keys, binds := wantEncrypted(cfg)
	var keep []*encListener
	var errs []error
	for _, l := range p.encListeners {
		if slices.Contains(keys, l.key) {
			keep = append(keep, l)
			continue
		}
		if err := l.close(); err != nil {
			errs = append(errs, err)
		}
	}
	have := map[string]bool{}
	for _, l := range keep {
		have[l.key] = true
	}
	for i, k := range keys {
		if have[k] {
			continue
		}
		l, err := binds[i](ctx, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keep = append(keep, l)
	}
	p.encListeners = keep
	return errors.Join(errs...)
}

// closeEncrypted closes every encrypted listener; reloadMu must be held.
func (p *Proxy) closeEncrypted() error {
	var errs []error
	for _, l := range p.encListeners {
		if err := l.close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.encListeners = nil
	return errors.Join(errs...)
}

// EncryptedAddrs returns the bound DoT and DoH listener addresses by
// transport ("dot", "doh").
func (p *Proxy) EncryptedAddrs() map[string][]net.Addr {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	out := map[string][]net.Addr{}
	for _, l := range p.encListeners {
		out[l.tr.String()] = append(out[l.tr.String()], l.addr)
	}
	return out
}
