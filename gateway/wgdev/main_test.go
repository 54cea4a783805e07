package wgdev

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// device goroutine (wireguard-go's, the UAPI server's, the TUN event pump)
// must end with Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
