package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// stopGrace is how long a stopped process gets between SIGTERM and SIGKILL.
	stopGrace = 3 * time.Second
	// cmdTimeout bounds every short command (ip, wg, sluice peer ...).
	cmdTimeout = time.Minute
)

// proc is one long-running program the harness started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // valid after done
}

// Pid returns the process id of the program itself: "ip netns exec" and
// taskset exec their argument, so the pid is the benchmarked program's.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has already exited.
func (p *proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// runner starts programs, optionally inside a network namespace and pinned to
// CPUs, logs their output to files, and stops every one of them on cleanup.
type runner struct {
	log    *slog.Logger
	logDir string

	mu    sync.Mutex // protects procs and netns
	procs []*proc
	netns []string
}

func newRunner(log *slog.Logger, logDir string) (*runner, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("create log dir %q: %w", logDir, err)
	}
	return &runner{log: log, logDir: logDir}, nil
}

// wrap prefixes argv with "ip netns exec NS" and "taskset -c CPUS" as asked.
func wrap(ns, cpus string, args []string) []string {
	var out []string
	if ns != "" {
		out = append(out, "ip", "netns", "exec", ns)
	}
	if cpus != "" {
		out = append(out, "taskset", "-c", cpus)
	}
	return append(out, args...)
}

// start starts a long-running program. Its stdout and stderr go to
// logDir/name.log. The process is killed if the harness dies (Pdeathsig) and
// stopped by stopAll otherwise; one goroutine per process waits for it and
// exits when the process does.
func (r *runner) start(name, ns, cpus string, env []string, args ...string) (*proc, error) {
	argv := wrap(ns, cpus, args)
	logf, err := os.Create(filepath.Join(r.logDir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("create log for %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	r.log.Debug("started", "name", name, "pid", p.Pid(), "argv", strings.Join(argv, " "))
	return p, nil
}

// stop sends SIGTERM, then SIGKILL after stopGrace, and waits for the exit.
func (r *runner) stop(p *proc) {
	if p == nil || p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // it may exit between the check and the signal
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		r.log.Warn("process ignored SIGTERM, killing", "name", p.name)
		_ = p.cmd.Process.Kill() // same race as above
		<-p.done
	}
}

// logTail returns the last lines of a process's log, for error messages.
func (r *runner) logTail(name string, lines int) string {
	b, err := os.ReadFile(filepath.Join(r.logDir, name+".log"))
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, " | ")
}

// run runs a short command to completion (bounded by cmdTimeout) and returns
// its stdout; a failure carries stderr.
func (r *runner) run(ctx context.Context, ns, cpus string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	return r.runTimeout(ctx, ns, cpus, env, args...)
}

// runTimeout is run with the caller's context as the only bound.
func (r *runner) runTimeout(ctx context.Context, ns, cpus string, env []string, args ...string) (string, error) {
	argv := wrap(ns, cpus, args)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("run %s: %w: %s", strings.Join(args, " "), err, lastLine(stderr.String()))
	}
	return string(out), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// addNetns creates a network namespace with loopback up; stopAll deletes it.
func (r *runner) addNetns(ctx context.Context, name string) error {
	if _, err := r.run(ctx, "", "", nil, "ip", "netns", "add", name); err != nil {
		return fmt.Errorf("create netns %q: %w", name, err)
	}
	r.mu.Lock()
	r.netns = append(r.netns, name)
	r.mu.Unlock()
	if _, err := r.run(ctx, name, "", nil, "ip", "link", "set", "lo", "up"); err != nil {
		return fmt.Errorf("bring up lo in netns %q: %w", name, err)
	}
	return nil
}

// delNetns kills whatever still runs in a namespace and deletes it.
func (r *runner) delNetns(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if out, err := r.run(ctx, "", "", nil, "ip", "netns", "pids", name); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL) // it may be gone already
			}
		}
	}
	if _, err := r.run(ctx, "", "", nil, "ip", "netns", "del", name); err != nil {
		return fmt.Errorf("delete netns %q: %w", name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, n := range r.netns {
		if n == name {
			r.netns = append(r.netns[:i], r.netns[i+1:]...)
			break
		}
	}
	return nil
}

// stopAll stops every process (newest first) and deletes every namespace.
func (r *runner) stopAll() error {
	r.mu.Lock()
	procs := r.procs
	r.procs = nil
	netns := append([]string(nil), r.netns...)
	r.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		r.stop(procs[i])
	}
	var errs []error
	for _, n := range netns {
		errs = append(errs, r.delNetns(n))
	}
	return errors.Join(errs...)
}

// cpuSeconds returns user+system CPU time a process has used so far.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	return parseStatCPU(string(b))
}

// clockTicks is USER_HZ, 100 on every Linux architecture sluice supports.
const clockTicks = 100

// parseStatCPU extracts utime+stime (fields 14 and 15) from /proc/PID/stat.
// The command name (field 2) may contain spaces, so fields are counted after
// its closing parenthesis.
func parseStatCPU(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("parse stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime is field 14 -> f[11], stime f[12].
	if len(f) < 13 {
		return 0, errors.New("parse stat: too few fields")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse stat times: %w", err)
	}
	return float64(ut+st) / clockTicks, nil
}

// rssBytes returns a process's resident set size (VmRSS).
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	return parseVmRSS(string(b))
}

func parseVmRSS(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("parse VmRSS %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse VmRSS %q: %w", line, err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("parse status: no VmRSS line")
}
