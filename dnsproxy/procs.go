package dnsproxy

import (
	"runtime"
	"sync"
)

// The Linux UDP path blocks threads in the kernel on purpose: one per
// listening socket (recvmmsg) and one for the carriers (epoll_wait; see
// carrierPoller). Go's scheduler lets such a thread keep its P until
// sysmon takes it, so each one is given a P of its own: GOMAXPROCS is
// raised by the threads held while any are, and put back when the last
// one ends. The rest of the process (the slow path's workers, timers,
// TCP, DoT, DoH, the embedded WireGuard device) keeps the Ps it had.
var procs struct {
	mu   sync.Mutex
	base int // GOMAXPROCS before the first thread was held
	held int
}

// holdThreads counts n more (or fewer) threads blocked in the kernel.
func holdThreads(n int) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.held == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	procs.held += n
	if procs.held <= 0 {
		procs.held = 0
		runtime.GOMAXPROCS(procs.base)
		return
	}
	runtime.GOMAXPROCS(procs.base + procs.held)
}

// workProcs is GOMAXPROCS without the Ps holdThreads added: how many
// listening sockets per address the proxy opens.
func workProcs() int {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.held > 0 {
		return procs.base
	}
	return runtime.GOMAXPROCS(0)
}
