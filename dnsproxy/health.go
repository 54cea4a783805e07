package dnsproxy

import (
	"context"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// healthLoop runs active checks every Health.Interval until ctx ends. Each
// round checks every upstream of every group concurrently and waits for all
// of them, so rounds never overlap and no check outlives the loop.
func (p *Proxy) healthLoop(ctx context.Context) {
	timer := time.NewTimer(p.st.Load().cfg.Health.Interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		st := p.st.Load()
		if !st.cfg.Health.Disabled {
			p.checkAll(ctx, st)
		}
		timer.Reset(p.st.Load().cfg.Health.Interval)
	}
}

func (p *Proxy) checkAll(ctx context.Context, st *state) {
	var wg sync.WaitGroup
	for _, g := range st.groups {
		for _, u := range g.ups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.checkUpstream(ctx, u, st.cfg.Health)
			}()
		}
	}
	wg.Wait()
}

// checkUpstream sends one real query (hc.Name, type NS). Any well-formed
// answer other than SERVFAIL proves the upstream alive and re-admits it.
func (p *Proxy) checkUpstream(ctx context.Context, u *upstream, hc HealthConfig) bool {
	q := new(dns.Msg)
	q.SetQuestion(hc.Name, dns.TypeNS)
	q.SetEdns0(uint16(p.st.Load().cfg.EDNSBufferSize), false)
	q.Id = p.ids.next()
	start := time.Now()
	r, err := u.exchange(ctx, start.Add(hc.Timeout), q)
	d := time.Since(start)
	if ctx.Err() != nil {
		return false
	}
	if err == nil && r.Rcode == dns.RcodeServerFailure {
		err = &upstreamError{kind: errKindServfail, err: errServfail}
	}
	if err != nil {
		u.failure(classify(err).kind, d, hc.Failures)
		return false
	}
	u.success(d)
	return true
}
