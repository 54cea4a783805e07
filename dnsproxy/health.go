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
func (p *Proxy) checkUpstream(ctx context.Context, u *upstream, hc HealthConfig) checkResult {
	q := new(dns.Msg)
	q.SetQuestion(hc.Name, dns.TypeNS)
	q.SetEdns0(uint16(p.st.Load().cfg.EDNSBufferSize), false)
	q.Id = p.ids.next()
	start := time.Now()
	r, err := u.exchange(ctx, start.Add(hc.Timeout), q)
	res := checkResult{rtt: time.Since(start)}
	if ctx.Err() != nil {
		res.err = ctx.Err()
		return res
	}
	if err == nil {
		res.rcode = r.Rcode
		res.answered = true
		if r.Rcode == dns.RcodeServerFailure {
			err = &upstreamError{kind: errKindServfail, err: errServfail}
		}
	}
	if err != nil {
		res.err = err
		u.failure(classify(err).kind, res.rtt, hc.Failures)
		return res
	}
	u.success(res.rtt)
	return res
}

// checkResult is the outcome of one active check.
type checkResult struct {
	answered bool // an answer arrived (rcode is set)
	rcode    int
	rtt      time.Duration
	err      error // nil when the upstream passed
}
