//go:build linux

package nsexec_test

import (
	"errors"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/sluice-vpn/sluice/internal/netnstest"
	"github.com/sluice-vpn/sluice/internal/nsexec"
)

// TestIn: fn runs with its thread in the namespace, the caller's thread
// never leaves its own, fn's error comes back as is, and a namespace that
// does not exist is an error before fn runs.
func TestIn(t *testing.T) {
	netnstest.RequirePrivileged(t)
	ns := netnstest.New(t, "nsx")
	h := ns.Handle()
	t.Cleanup(func() { h.Close() })
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	for range 20 { // the pool's threads come back switched back
		ran := false
		if err := nsexec.In(h, func() error {
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			if !cur.Equal(h) {
				t.Error("fn's thread is not in the namespace")
			}
			ran = true
			return nil
		}); err != nil || !ran {
			t.Fatalf("In: ran %v, err %v", ran, err)
		}
		after, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		same := after.Equal(before)
		after.Close()
		if !same {
			t.Fatal("the caller's thread changed namespace")
		}
	}

	boom := errors.New("boom")
	if err := nsexec.In(h, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn's error came back as %v", err)
	}
	if err := nsexec.InNamed(ns.Name, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("InNamed: fn's error came back as %v", err)
	}
	called := false
	if err := nsexec.InNamed(netnstest.Unique("nsx-missing"), func() error { called = true; return nil }); err == nil || called {
		t.Fatalf("a missing namespace: err %v, fn called %v", err, called)
	}
}
