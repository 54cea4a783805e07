package wgdev

import (
	"context"
	"errors"
	"log/slog"
	osexec "os/exec"
	"strings"
	"testing"
	"time"
)

var errFake = errors.New("fake failure")

func errorsIs(err, target error) bool { return errors.Is(err, target) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// testLogger sends logs to t.Log so they show with the failing test, and
// fails the test on any error-level record: a healthy device logs none.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	if strings.Contains(line, " level=ERROR ") {
		w.t.Errorf("error logged: %s", line)
	} else {
		w.t.Log(line)
	}
	return len(p), nil
}

// exec runs a command in the test's own namespace, for read-only observation
// and for UAPI clients (the socket directory is shared by all namespaces).
func exec(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := osexec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
