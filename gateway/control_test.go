package gateway

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/dnsproxy"
)

// fakeControlled answers the control API from fields, without a gateway.
type fakeControlled struct {
	notReady error
	reload   ReloadResult
	records  chan TraceRecord
	stopped  chan struct{}
}

func (f *fakeControlled) Status() (*Status, error) {
	if f.notReady != nil {
		return nil, f.notReady
	}
	return &Status{Interface: InterfaceStatus{Name: "fake0"}, NotReady: []string{"dns group default has no healthy upstream"}}, nil
}

func (f *fakeControlled) SyncPeers() error { return f.notReady }

func (f *fakeControlled) Reload() (ReloadResult, error) { return f.reload, f.notReady }

func (f *fakeControlled) FirewallText() (string, error) { return "table inet fake {\n}\n", f.notReady }

func (f *fakeControlled) Doctor(context.Context, string) (*Report, error) {
	return &Report{OK: true, Checks: []Check{{Name: "interface", OK: true}}}, f.notReady
}

func (f *fakeControlled) Trace(peer string, _ int) (<-chan TraceRecord, func(), error) {
	switch peer {
	case "bad name":
		return nil, nil, fmt.Errorf("%w: %q", errBadPeer, peer)
	case "nobody":
		return nil, nil, fmt.Errorf("%w %q (see sluice peer list)", errNoPeer, peer)
	}
	return f.records, func() { close(f.stopped) }, nil
}

// serveFake serves d on a control socket and returns a client for it.
func serveFake(t *testing.T, d controlled) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := listenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveHTTP(ctx, ln, newControlHandler(ctx, d), ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control server: %v", err)
		}
	})
	return NewClient(path)
}

// TestControlAPI drives the control server and client with a fake daemon:
// every call while not ready is ErrNotReady, a refused reload carries its
// errors, bad or unknown trace peers are the daemon's words, and a trace
// streams records until the client goes.
func TestControlAPI(t *testing.T) {
	ctx := context.Background()
	starting := &fakeControlled{notReady: fmt.Errorf("%w: sluice is still starting", ErrNotReady)}
	c := serveFake(t, starting)
	for name, call := range map[string]func() error{
		"status":   func() error { _, err := c.Status(ctx); return err },
		"sync":     func() error { return c.SyncPeers(ctx) },
		"reload":   func() error { _, _, err := c.Reload(ctx); return err },
		"firewall": func() error { _, err := c.Firewall(ctx); return err },
		"doctor":   func() error { _, err := c.Doctor(ctx, ""); return err },
	} {
		if err := call(); !errors.Is(err, ErrNotReady) || err.Error() != "not ready yet: sluice is still starting" {
			t.Errorf("%s while starting: %v", name, err)
		}
	}

	d := &fakeControlled{
		reload:  ReloadResult{Errors: []string{"a.yaml:3: dns.zones: bad", "a.yaml:9: peers: bad"}, Notes: []string{"note"}},
		records: make(chan TraceRecord, 1),
		stopped: make(chan struct{}),
	}
	c = serveFake(t, d)
	if st, err := c.Status(ctx); err != nil || st.Interface.Name != "fake0" || len(st.NotReady) != 1 {
		t.Errorf("status: %+v, %v", st, err)
	}
	applied, notes, err := c.Reload(ctx)
	if applied || len(notes) != 1 || err == nil || err.Error() != "a.yaml:3: dns.zones: bad\na.yaml:9: peers: bad" {
		t.Errorf("refused reload: applied %v, notes %v, err %v", applied, notes, err)
	}
	if text, err := c.Firewall(ctx); err != nil || !strings.HasPrefix(text, "table inet fake") {
		t.Errorf("firewall: %q, %v", text, err)
	}
	if err := c.Trace(ctx, "bad name", func(TraceRecord) error { return nil }); err == nil || !strings.Contains(err.Error(), `bad peer name: "bad name"`) {
		t.Errorf("trace of a bad name: %v", err)
	}
	if err := c.Trace(ctx, "nobody", func(TraceRecord) error { return nil }); err == nil || !strings.Contains(err.Error(), `no such peer "nobody"`) {
		t.Errorf("trace of an unknown peer: %v", err)
	}
	d.records <- TraceRecord{Peer: "alice/laptop", QueryRecord: dnsproxy.QueryRecord{Name: "git.corp.example."}}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var got []TraceRecord
	err = c.Trace(tctx, "alice", func(r TraceRecord) error {
		got = append(got, r)
		cancel() // one is enough: the client goes away
		return nil
	})
	if err != nil || len(got) != 1 || got[0].Peer != "alice/laptop" || got[0].Name != "git.corp.example." {
		t.Errorf("trace: %+v, %v", got, err)
	}
	select {
	case <-d.stopped:
	case <-time.After(10 * time.Second):
		t.Error("the daemon's trace was not stopped after the client went away")
	}
	// No socket at all: not running.
	if _, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(ctx); !errors.Is(err, ErrNotRunning) {
		t.Errorf("no daemon: %v", err)
	}
}
