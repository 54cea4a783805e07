//go:build sluicevm

package guest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sluice-vpn/sluice/vmtest/guestinit"
)

// These must match the constants of package vmtest (host side); the guest
// does not import it so that the test binary stays free of host code.
const (
	sluiceBin      = "/bin/sluice"
	modulesDir     = "/modules"
	exitMarker     = "SLUICE-VM-EXIT"
	bootFailMarker = "SLUICE-VM-BOOT-FAILED"
)

func TestMain(m *testing.M) {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "vmtest/guest: these tests run as /init of the VM that vmtest boots (go test ./vmtest)")
		os.Exit(2)
	}
	if err := boot(); err != nil {
		fmt.Printf("%s: %v\n", bootFailMarker, err)
		poweroff()
	}
	code := m.Run()
	fmt.Printf("%s %d\n", exitMarker, code)
	poweroff()
}

// boot prepares the bare initramfs (guestinit.Boot).
func boot() error {
	start := time.Now()
	n, err := guestinit.Boot(modulesDir)
	if err == nil {
		fmt.Printf("loaded %d modules in %s\n", n, time.Since(start).Round(time.Millisecond))
	}
	return err
}

func poweroff() { guestinit.Poweroff() }
