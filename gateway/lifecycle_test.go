package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/gateway/wgdev"
)

// fakeConfig writes a valid configuration whose files all live in a
// temporary directory and returns its path and the control socket's.
func fakeConfig(t *testing.T) (cfgPath, ctlPath string) {
	t.Helper()
	dir := t.TempDir()
	ctlPath = filepath.Join(dir, "ctl.sock")
	cfg := `interface:
  name: fake0
  backend: userspace
  private_key_file: ` + filepath.Join(dir, "gw.key") + `
  addresses: [10.20.0.1/24, fd20::1/64]
  endpoint: 192.0.2.1:51820
dns:
  listen: [10.20.0.53, fd20::53]
  zones:
    - name: corp.example
      upstreams: [10.30.0.53, 10.30.0.54]
  default:
    upstreams: [198.51.100.53]
peers:
  state_dir: ` + filepath.Join(dir, "state") + `
  routes: [10.30.0.0/16]
admin:
  control_socket: ` + ctlPath + `
`
	cfgPath = filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, ctlPath
}

// fakeRun is a gateway on fakes, run in the background.
type fakeRun struct {
	g      *Gateway
	f      *fakes
	ctl    *Client
	ready  chan struct{}
	cancel context.CancelFunc
	done   chan error
}

// startFake runs a gateway on fakes. It does not wait for ready.
func startFakeGateway(t *testing.T, f *fakes) *fakeRun {
	t.Helper()
	// Registered first, so it runs last: every goroutine of Run and of the
	// control server has ended once Run returned.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	cfgPath, ctlPath := fakeConfig(t)
	cfg, err := Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	r := &fakeRun{f: f, ctl: NewClient(ctlPath), ready: make(chan struct{}), done: make(chan error, 1)}
	var once sync.Once
	r.g = New(cfg, Options{Ready: func() { once.Do(func() { close(r.ready) }) }})
	r.g.parts = f.components()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		for _, v := range f.v.get() {
			t.Errorf("lifecycle violation: %s", v)
		}
	})
	return r
}

func (r *fakeRun) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-r.ready:
	case err := <-r.done:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready within 10s")
	}
}

// waitControl waits until the control socket answers (whatever it says).
func (r *fakeRun) waitControl(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := r.ctl.Status(context.Background()); !errors.Is(err, ErrNotRunning) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("control socket never answered")
}

// TestReloadBeforeReady: a reload asked before the gateway is up (before
// Run, and while Run is still applying the firewall) is refused with
// ErrNotReady on both paths, the SIGHUP one (Reload) and the control
// socket's; status and doctor say so too. It touches no component. The
// code before the lifecycle owner dereferenced the nil proxy here.
func TestReloadBeforeReady(t *testing.T) {
	f := newFakes()
	f.fw.gate = make(chan struct{})
	cfgPath, _ := fakeConfig(t)
	cfg, err := Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	early := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	early.parts = f.components()
	if _, err := early.Reload(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "still starting") {
		t.Errorf("Reload before Run: %v, want ErrNotReady (still starting)", err)
	}
	// SIGHUP's answer is the log.
	if !strings.Contains(logged.String(), `level=WARN msg="reload ignored" err="not ready yet: sluice is still starting"`) {
		t.Errorf("early reload not logged as ignored: %q", logged.String())
	}

	r := startFakeGateway(t, f)
	<-f.fw.entered // Run is inside the first Apply
	r.waitControl(t)
	if _, err := r.g.Reload(); !errors.Is(err, ErrNotReady) {
		t.Errorf("Reload while starting: %v, want ErrNotReady", err)
	}
	ctx := context.Background()
	if _, _, err := r.ctl.Reload(ctx); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "not ready yet: sluice is still starting") {
		t.Errorf("control reload while starting: %v", err)
	}
	if _, err := r.ctl.Status(ctx); !errors.Is(err, ErrNotReady) {
		t.Errorf("control status while starting: %v", err)
	}
	if _, err := r.ctl.Doctor(ctx, ""); !errors.Is(err, ErrNotReady) {
		t.Errorf("control doctor while starting: %v", err)
	}
	if why := r.g.readiness(); len(why) != 1 || !strings.Contains(why[0], "still starting") {
		t.Errorf("readiness while starting: %q", why)
	}
	if n := f.proxy.count(); n != 0 {
		t.Errorf("proxy reloaded %d times before ready", n)
	}
	close(f.fw.gate)
	r.waitReady(t)
	if applied, _, err := r.ctl.Reload(ctx); err != nil || !applied {
		t.Errorf("control reload once ready: applied %v, %v", applied, err)
	}
	if res, err := r.g.Reload(); err != nil || !res.Applied {
		t.Errorf("Reload once ready: %+v, %v", res, err)
	}
	if n := f.proxy.count(); n != 2 {
		t.Errorf("proxy reloaded %d times, want 2", n)
	}
}

// TestConcurrentReloads: reloads from both paths at once (SIGHUP calls
// Reload, `sluice reload` the control socket), mixed with status and
// doctor requests, never overlap: the proxy and firewall see one
// reconfiguration at a time, and every reload is applied.
func TestConcurrentReloads(t *testing.T) {
	f := newFakes()
	r := startFakeGateway(t, f)
	r.waitReady(t)
	const workers, each = 6, 5
	var wg sync.WaitGroup
	errs := make(chan error, 3*workers*each)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if i%2 == 0 {
					if res, err := r.g.Reload(); err != nil || !res.Applied {
						errs <- errors.Join(err, errors.New("signal-path reload not applied"))
					}
				} else if applied, _, err := r.ctl.Reload(context.Background()); err != nil || !applied {
					errs <- errors.Join(err, errors.New("control reload not applied"))
				}
				if _, err := r.ctl.Status(context.Background()); err != nil {
					errs <- err
				}
				if _, err := r.g.Doctor(context.Background(), ""); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := f.proxy.count(); n != workers*each {
		t.Errorf("proxy reloaded %d times, want %d", n, workers*each)
	}
	if n := f.fw.count(); n != 1+workers*each {
		t.Errorf("firewall applied %d times, want %d", n, 1+workers*each)
	}
}

// TestReloadDuringStop: reloads keep coming from both paths while the
// gateway stops. None reaches a component after the stop began (no table
// re-applied after Close, no proxy reload after Close); once stopped,
// every path answers "not ready" or "not running".
func TestReloadDuringStop(t *testing.T) {
	f := newFakes()
	r := startFakeGateway(t, f)
	r.waitReady(t)
	var wg sync.WaitGroup
	stopped := make(chan struct{})
	unexpected := make(chan error, 64)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 10000; n++ { // bounded; ends once the gateway has stopped
				// Whether Run had returned before this call began: a reload
				// that began earlier may still succeed (the stop waits for it).
				after := false
				select {
				case <-stopped:
					after = true
				default:
				}
				var err error
				if i%2 == 0 {
					_, err = r.g.Reload()
				} else {
					_, _, err = r.ctl.Reload(context.Background())
				}
				if after {
					if err == nil || !(errors.Is(err, ErrNotReady) || errors.Is(err, ErrNotRunning)) {
						unexpected <- err
					}
					return
				}
				if err != nil && !errors.Is(err, ErrNotReady) && !errors.Is(err, ErrNotRunning) {
					unexpected <- err
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond) // let reloads run before the stop
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	r.done <- nil // for Cleanup
	close(stopped)
	wg.Wait()
	close(unexpected)
	for err := range unexpected {
		t.Errorf("reload around stop: %v", err)
	}
	if _, err := r.g.Reload(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("Reload after stop: %v, want ErrNotReady (stopped)", err)
	}
	if _, _, err := r.ctl.Reload(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("control reload after stop: %v, want ErrNotRunning", err)
	}
	if !f.fw.closed || !f.proxy.closed || !f.dev.closed {
		t.Errorf("components not closed: firewall %v, proxy %v, device %v", f.fw.closed, f.proxy.closed, f.dev.closed)
	}
}

// TestReadyz: /readyz is 503 and says why while a DNS group has no healthy
// upstream or the firewall table is missing; 200 "ready" otherwise.
func TestReadyz(t *testing.T) {
	f := newFakes()
	r := startFakeGateway(t, f)
	r.waitReady(t)
	h := r.g.adminHandler()
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get(); code != http.StatusOK || body != "ready\n" {
		t.Errorf("healthy gateway: %d %q", code, body)
	}

	// One of two corp.example upstreams down: still ready.
	f.proxy.dead = map[string]bool{"10.30.0.53:53": true}
	f.proxy.CheckUpstreams(context.Background())
	if code, body := get(); code != http.StatusOK {
		t.Errorf("one upstream of two down: %d %q, want ready", code, body)
	}
	// Both down: the group answers SERVFAIL, not ready.
	f.proxy.dead["10.30.0.54:53"] = true
	f.proxy.CheckUpstreams(context.Background())
	code, body := get()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "dns group corp.example has no healthy upstream: 10.30.0.53:53 (2 failures in a row), 10.30.0.54:53 (1 failures in a row) ejected") {
		t.Errorf("group down: %d %q", code, body)
	}
	if strings.Contains(body, "default") {
		t.Errorf("healthy default group named: %q", body)
	}
	// Table gone as well: both reasons.
	f.fw.mu.Lock()
	f.fw.missing = errors.New("table inet sluice: firewall table not present")
	f.fw.mu.Unlock()
	code, body = get()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "firewall: table inet sluice: firewall table not present") || !strings.Contains(body, "corp.example") {
		t.Errorf("table missing: %d %q", code, body)
	}
	st, err := r.g.Status()
	if err != nil || len(st.NotReady) != 2 {
		t.Errorf("status not_ready = %q, %v; want the two reasons of /readyz", st.NotReady, err)
	}
}

// TestDoctorAgreesWithStatus: the doctor's upstream lines come from the
// proxy's own checks, and status afterwards shows the same health. Its
// canary queries are probes, not client queries.
func TestDoctorAgreesWithStatus(t *testing.T) {
	f := newFakes()
	r := startFakeGateway(t, f)
	r.waitReady(t)
	f.proxy.dead = map[string]bool{"198.51.100.53:53": true}
	rep, err := r.ctl.Doctor(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.ctl.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]Check{}
	for _, c := range rep.Checks {
		lines[c.Name] = c
	}
	for _, u := range st.DNS.Upstreams {
		c, ok := lines["query "+u.Addr+" ("+u.Group+")"]
		if !ok {
			t.Errorf("doctor has no line for %s (%s): %+v", u.Addr, u.Group, rep.Checks)
			continue
		}
		if c.OK != u.Healthy || (!u.Healthy) != strings.Contains(c.Detail, "EJECTED") {
			t.Errorf("doctor and status disagree on %s: doctor %+v, status %+v", u.Addr, c, u)
		}
	}
	if rep.OK {
		t.Error("doctor passed with a dead upstream")
	}
	if f.proxy.probes != 4 { // two canaries on two resolver addresses
		t.Errorf("%d canary probes, want 4", f.proxy.probes)
	}
	if c := lines["proxy 10.20.0.53:53 use-application-dns.net"]; !c.OK {
		t.Errorf("canary line: %+v", c)
	}
	if len(st.NotReady) != 1 || !strings.Contains(st.NotReady[0], "dns group default") {
		t.Errorf("status not_ready = %q", st.NotReady)
	}
}

// TestClientPermissionDenied: a control socket this user may not open is
// reported as such, not as "not running".
func TestClientPermissionDenied(t *testing.T) {
	c := NewClient("/run/sluice/x.sock")
	err := c.dialError("/v1/status", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)})
	if !errors.Is(err, ErrPermission) || errors.Is(err, ErrNotRunning) || err.Error() != "permission denied on the control socket /run/sluice/x.sock: run as root" {
		t.Errorf("EACCES: %v", err)
	}
	err = c.dialError("/v1/status", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)})
	if !errors.Is(err, ErrNotRunning) {
		t.Errorf("ENOENT: %v, want ErrNotRunning", err)
	}
}

// TestResolverWaitFollowsBackend: the resolver waits for UDP datagrams in
// Go's poller on a gateway running the embedded WireGuard device, whose
// goroutines need the cores, and in the kernel on in-kernel WireGuard.
func TestResolverWaitFollowsBackend(t *testing.T) {
	for _, c := range []struct {
		backend wgdev.Backend
		want    dnsproxy.UDPWait
	}{{wgdev.BackendUserspace, dnsproxy.UDPWaitPoller}, {wgdev.BackendKernel, dnsproxy.UDPWaitKernel}} {
		t.Run(string(c.backend), func(t *testing.T) {
			f := newFakes()
			f.dev.backend = c.backend
			r := startFakeGateway(t, f)
			r.waitReady(t)
			if f.proxyOpts.UDPWait != c.want {
				t.Errorf("%s backend: resolver made with UDPWait %d, want %d", c.backend, f.proxyOpts.UDPWait, c.want)
			}
		})
	}
}
