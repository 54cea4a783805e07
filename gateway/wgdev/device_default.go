//go:build !linux

package wgdev

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

// errUnsupported is returned by Open on systems other than Linux.
var errUnsupported = errors.New("wireguard device not supported on " + runtime.GOOS)

// Open fails: sluice's WireGuard device is Linux-only.
func Open(ctx context.Context, cfg Config, opts Options) (*Device, error) {
	return nil, fmt.Errorf("open wireguard interface %q: %w", cfg.Name, errUnsupported)
}
