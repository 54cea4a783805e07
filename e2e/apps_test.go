package e2e

import (
	"errors"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/internal/netnstest"
)

// digResult is what dig (or kdig) reported.
type digResult struct {
	status  string   // NOERROR, SERVFAIL, ... or "" when no answer came
	answers []string // rdata of the answer section
	out     string
	err     error
	elapsed time.Duration
}

func (r digResult) has(rdata string) bool {
	for _, a := range r.answers {
		if a == rdata {
			return true
		}
	}
	return false
}

var statusRE = regexp.MustCompile(`status: ([A-Z]+)`)

// dig runs `dig +tries=1 +time=T args...` in ns (server "" means the
// namespace's resolv.conf) and parses its output.
func dig(ns *netnstest.NS, args ...string) digResult {
	return runDig(ns, append([]string{"dig", "+tries=1", "+time=3"}, args...))
}

// kdig runs `kdig +retry=0 +timeout=3 args...` in ns.
func kdig(ns *netnstest.NS, args ...string) digResult {
	return runDig(ns, append([]string{"kdig", "+retry=0", "+timeout=3"}, args...))
}

func runDig(ns *netnstest.NS, args []string) digResult {
	start := time.Now()
	out, err := ns.Exec(args...)
	r := digResult{out: out, err: err, elapsed: time.Since(start)}
	if m := statusRE.FindStringSubmatch(out); m != nil {
		r.status = m[1]
	}
	inAnswer := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION"):
			inAnswer = true
		case inAnswer && (strings.TrimSpace(line) == "" || strings.HasPrefix(line, ";;")):
			inAnswer = false
		case inAnswer:
			if f := strings.Fields(line); len(f) >= 5 {
				r.answers = append(r.answers, f[len(f)-1])
			}
		}
	}
	return r
}

// curlResult is the outcome of one curl run.
type curlResult struct {
	body    string
	err     error
	elapsed time.Duration
}

// curl fetches url in ns (certificate checks off: the servers are
// self-signed) with a time limit.
func curl(ns *netnstest.NS, url string) curlResult {
	start := time.Now()
	out, err := ns.Exec("curl", "-k", "-sS", "--max-time", "3", url)
	return curlResult{body: out, err: err, elapsed: time.Since(start)}
}

// udpResult is the outcome of one UDP probe.
type udpResult struct {
	echoed  bool
	err     error
	elapsed time.Duration
}

// refused reports whether the probe was answered by an ICMP error (fast
// failure) rather than silence.
func (r udpResult) refused() bool {
	var ne net.Error
	return r.err != nil && !(errors.As(r.err, &ne) && ne.Timeout())
}

// udpProbe sends one datagram to addr from ns and waits up to timeout for
// the echo server's reply.
func udpProbe(t testing.TB, ns *netnstest.NS, addr string, timeout time.Duration) udpResult {
	t.Helper()
	var r udpResult
	start := time.Now()
	err := ns.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			r.err = err
			return nil
		}
		defer c.Close()
		if _, err := c.Write([]byte("probe")); err != nil {
			r.err = err
			return nil
		}
		if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			r.err = err
			return nil
		}
		r.echoed = strings.HasPrefix(string(buf[:n]), echoPrefix)
		return nil
	})
	r.elapsed = time.Since(start)
	if err != nil {
		t.Fatalf("udp probe %s from %s: %v", addr, ns.Name, err)
	}
	return r
}

// ping sends one echo request (1 s timeout) from ns and reports success.
func ping(ns *netnstest.NS, addr string) (bool, string) {
	return pingWait(ns, addr, "1")
}

// pingWait is ping with a reply timeout of wait seconds (fractions allowed).
func pingWait(ns *netnstest.NS, addr, wait string) (bool, string) {
	out, err := ns.Exec("ping", "-n", "-c", "1", "-W", wait, addr)
	return err == nil, out
}

// mustPing fails t unless addr answers a ping from ns within timeout.
func mustPing(t testing.TB, ns *netnstest.NS, addr string, timeout time.Duration) {
	t.Helper()
	if ok, out := waitFor(timeout, 100*time.Millisecond, func() (bool, string) { return ping(ns, addr) }); !ok {
		t.Fatalf("ping %s from %s: no answer within %v:\n%s", addr, ns.Name, timeout, out)
	}
}
