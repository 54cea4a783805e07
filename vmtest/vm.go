package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Binaries are the static programs the initramfs carries.
type Binaries struct {
	// Guest is the compiled in-VM test package; it runs as /init.
	Guest string
	// Sluice is the static sluice binary.
	Sluice string
}

// Build compiles sluice and the in-VM test package from the tree at root
// into dir, statically (CGO_ENABLED=0), so they run on the bare initramfs.
func Build(ctx context.Context, root, dir string) (Binaries, error) {
	b := Binaries{Guest: filepath.Join(dir, "guest.test"), Sluice: filepath.Join(dir, "sluice")}
	steps := [][]string{
		{"build", "-trimpath", "-o", b.Sluice, "./cmd/sluice"},
		{"test", "-c", "-trimpath", "-tags", GuestTag, "-o", b.Guest, GuestPackage},
	}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return b, nil
}

// WriteInitramfs writes the initramfs for bins and kernel k to path: the
// guest test binary as /init, sluice as /bin/sluice and the modules
// (resolved with their dependencies) under /modules in load order.
func WriteInitramfs(path string, k Kernel, bins Binaries, modules []string) error {
	mods, err := k.ResolveModules(modules)
	if err != nil {
		return err
	}
	a := NewInitramfs()
	a.File("/init", bins.Guest, 0o755)
	a.File(SluicePath, bins.Sluice, 0o755)
	for i, m := range mods {
		a.File(fmt.Sprintf("%s/%03d-%s.ko", ModulesDir, i, m.Name), m.Path, 0o644)
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/root"} {
		a.Dir(d)
	}
	a.Symlink("/var/run", "/run")
	a.Dir("/var/lib")
	// Go's resolver and os/user read these; the guest has no other files.
	a.Bytes("/etc/hosts", []byte("127.0.0.1 localhost\n::1 localhost\n"), 0o644)
	a.Bytes("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	a.Bytes("/etc/resolv.conf", []byte("nameserver 127.0.0.1\n"), 0o644)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create initramfs: %w", err)
	}
	if _, err := a.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write initramfs %s: %w", path, err)
	}
	return f.Close()
}

// Spec is one VM run.
type Spec struct {
	Kernel    Kernel
	Initramfs string
	// Console is the file the serial console (ttyS0) is written to.
	Console string
	// Args are passed to the guest's /init (the test binary), e.g.
	// -test.v -test.run ^TestX$.
	Args []string
	// Timeout bounds the whole run; qemu is killed when it expires.
	Timeout   time.Duration
	MemoryMiB int
	CPUs      int
}

// Run boots the VM and waits until the guest powers it off, the timeout
// expires or ctx is done; qemu is killed (its process group) in the last
// two cases. It returns the console output. A VM that stopped without the
// guest's exit line is an error.
func Run(ctx context.Context, s Spec) (console string, took time.Duration, err error) {
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.CPUs == 0 {
		s.CPUs = DefaultCPUs
	}
	for _, a := range s.Args {
		if strings.ContainsAny(a, " \t\n\"") {
			return "", 0, fmt.Errorf("guest argument %q: no spaces or quotes (the kernel command line splits on them)", a)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	out, err := os.OpenFile(s.Console, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("create console file: %w", err)
	}
	defer out.Close()
	// loglevel=4 keeps kernel warnings and oopses on the console (they say
	// why a test failed) and the chatter off it; panic=-1 with -no-reboot
	// turns a guest panic into a qemu exit.
	cmdline := "console=ttyS0 loglevel=4 panic=-1 mitigations=off rdinit=/init -- " + strings.Join(s.Args, " ")
	args := []string{
		"-accel", "tcg", "-nodefaults", "-no-reboot", "-display", "none",
		"-m", strconv.Itoa(s.MemoryMiB), "-smp", strconv.Itoa(s.CPUs),
		"-kernel", s.Kernel.Vmlinuz, "-initrd", s.Initramfs, "-append", cmdline,
		"-serial", "stdio", "-monitor", "none",
	}
	var stderr bytes.Buffer
	cmd := exec.Command(QEMU, args...)
	cmd.Stdout, cmd.Stderr = out, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the forking thread exits, not the process: start
	// and wait on one locked thread so that qemu dies with this process
	// (and only then), never because the Go runtime retired a thread.
	start := time.Now()
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return "", 0, fmt.Errorf("start %s: %w", QEMU, err)
	}
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the group: qemu and nothing else
		<-done
		werr = fmt.Errorf("vm killed after %s: %w", time.Since(start).Round(time.Second), context.Cause(ctx))
	}
	if werr != nil && stderr.Len() > 0 {
		werr = fmt.Errorf("%w: %s", werr, bytes.TrimSpace(stderr.Bytes()))
	}
	took = time.Since(start)
	b, rerr := os.ReadFile(s.Console)
	if rerr != nil {
		return "", took, errors.Join(werr, fmt.Errorf("read console: %w", rerr))
	}
	console = strings.ReplaceAll(string(b), "\r\n", "\n")
	if werr != nil {
		return console, took, fmt.Errorf("run %s: %w", QEMU, werr)
	}
	if i := strings.Index(console, BootFailMarker); i >= 0 {
		line, _, _ := strings.Cut(console[i:], "\n")
		return console, took, errors.New("guest: " + line)
	}
	if _, ok := ExitCode(console); !ok {
		return console, took, fmt.Errorf("vm stopped after %s without the guest's %s line (crash or panic: see the console)", took.Round(time.Second), ExitMarker)
	}
	return console, took, nil
}

// ExitCode returns the guest test binary's exit code from its exit line.
func ExitCode(console string) (int, bool) {
	i := strings.LastIndex(console, ExitMarker+" ")
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(console[i+len(ExitMarker):])
	if len(f) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(f[0])
	return n, err == nil
}

// Result is one in-VM test as reported by `go test -v`.
type Result struct {
	Name   string
	Status string // PASS, FAIL or SKIP
	// Took is the test's duration as the guest reported it (zero when it
	// has no result line).
	Took time.Duration
	// Output is what the test printed between its RUN line and its result.
	Output string
}

// ParseResults reads the results of the top-level tests (and their
// subtests) from -test.v output. A test that started but has no result line
// (the guest crashed or was killed in it) is reported as FAIL.
func ParseResults(console string) []Result {
	var out []Result
	index := map[string]int{}
	var cur string
	var buf strings.Builder
	for _, line := range strings.Split(strings.TrimRight(console, "\n"), "\n") {
		trim := strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(trim, "=== RUN   "); ok {
			if !strings.Contains(name, "/") {
				cur = name
				buf.Reset()
			} else if cur != "" {
				buf.WriteString(line + "\n")
			}
			if _, seen := index[name]; !seen {
				index[name] = len(out)
				out = append(out, Result{Name: name, Status: "FAIL"})
			}
			continue
		}
		for _, st := range []string{"PASS", "FAIL", "SKIP"} {
			rest, ok := strings.CutPrefix(trim, "--- "+st+": ")
			if !ok {
				continue
			}
			name, took, _ := strings.Cut(rest, " (")
			i, seen := index[name]
			if !seen {
				i = len(out)
				index[name] = i
				out = append(out, Result{Name: name})
			}
			out[i].Status = st
			if d, err := time.ParseDuration(strings.TrimSuffix(took, ")")); err == nil {
				out[i].Took = d
			}
			if name == cur {
				out[i].Output = buf.String()
				cur = ""
			}
		}
		if cur != "" {
			buf.WriteString(line)
			buf.WriteByte('\n')
		}
	}
	if cur != "" {
		if i, ok := index[cur]; ok {
			out[i].Output = buf.String()
		}
	}
	return out
}
