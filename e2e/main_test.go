package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// sluiceBin is the sluice binary under test, built once by TestMain (or
// taken from $SLUICE_BIN); buildErr says why there is none.
var (
	sluiceBin string
	buildErr  error
)

// buildTimeout bounds `go build ./cmd/sluice`.
const buildTimeout = 5 * time.Minute

// init wires the main goroutine to the main thread for the whole run, so
// that netnstest.NS.Do can never switch the main thread into a namespace:
// Go cannot end a locked main thread, it would stay in the namespace and
// `ip netns pids` at the namespace's cleanup would list (and kill) this
// test binary.
func init() {
	runtime.LockOSThread()
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if bin := os.Getenv("SLUICE_BIN"); bin != "" {
		sluiceBin = bin
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "sluice-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: create temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	sluiceBin = filepath.Join(dir, "sluice")
	buildErr = buildSluice(sluiceBin)
	return m.Run()
}

// buildSluice builds cmd/sluice of this module into bin.
func buildSluice(bin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sluice")
	cmd.Dir = ".." // the module root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build sluice: %w: %s", err, out)
	}
	return nil
}

// requireSluice fails t when the sluice binary could not be built.
func requireSluice(t testing.TB) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("no sluice binary: %v", buildErr)
	}
}
