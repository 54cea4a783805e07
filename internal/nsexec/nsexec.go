//go:build linux

// Package nsexec runs code on an OS thread switched into a network
// namespace: the one piece of thread handling that the device, the test
// and VM helpers and the bench all need.
package nsexec

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// In runs fn on a goroutine locked to an OS thread switched into the
// network namespace h, and switches the thread back afterwards so that it
// can return to the scheduler's pool. Sockets, netlink handles and
// processes fn creates belong to h; goroutines fn starts run on other
// threads. (A thread left switched is discarded when its goroutine exits,
// except the process's main thread, which Go keeps instead: the whole
// process would then look as if it lived in h.) If switching back fails,
// the thread stays locked, is discarded with its goroutine, and In
// reports it after fn's own error.
func In(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get thread network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			if ferr == nil {
				ferr = fmt.Errorf("restore thread network namespace: %w", err)
			}
			errc <- ferr // the thread stays locked and ends with this goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// InNamed is In for the namespace named name (ip netns add NAME).
func InNamed(name string, fn func() error) error {
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer h.Close()
	if err := In(h, fn); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	return nil
}
