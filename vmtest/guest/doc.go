// Package guest holds the tests that run inside the VM vmtest boots: Debian's
// own kernel, with the WireGuard module this build host lacks. Its test
// binary, built statically with the sluicevm tag, is the VM's /init: it
// mounts the pseudo file systems, loads the modules the initramfs carries,
// runs the tests (results go to the serial console) and powers the VM off.
//
// Without the sluicevm tag the package has no tests: they need the kernel
// module and PID 1, and run only through vmtest.TestKernelTier (make test)
// and the kernel section of make bench.
package guest
