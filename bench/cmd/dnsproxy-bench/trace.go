package main

import (
	"encoding/json"
	"io"
	"net/netip"

	"github.com/sluice-vpn/sluice/dnsproxy"
)

// traceBuffer is the tap's queue, as a `sluice peer trace` client would
// ask for.
const traceBuffer = 256

// attachTrace taps the queries of addr for the "everything on" bench row and
// drains them the way the gateway's trace does for `sluice peer trace`: each
// record encoded as one JSON line, here to io.Discard instead of the control
// socket. It returns the function that detaches the tap and waits for the
// reader to end.
func attachTrace(p *dnsproxy.Proxy, addr netip.Addr) (stop func()) {
	records, stopTap := p.Tap([]netip.Addr{addr}, traceBuffer)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		enc := json.NewEncoder(io.Discard)
		for {
			select {
			case rec := <-records:
				_ = enc.Encode(rec) // io.Discard never fails
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		stopTap()
	}
}
