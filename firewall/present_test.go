package firewall

import (
	"errors"
	"testing"
)

// TestKernelPresent: Present follows the table in the kernel: not applied,
// present, deleted by someone else, closed.
func TestKernelPresent(t *testing.T) {
	ns, f := nsFirewall(t)
	if err := f.Present(); !errors.Is(err, ErrNotApplied) {
		t.Errorf("before Apply: %v, want ErrNotApplied", err)
	}
	s := testSpec("wg0")
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Present(); err != nil {
		t.Errorf("after Apply: %v", err)
	}
	ns.Run("nft", "delete", "table", "inet", s.Table) // no Run: nothing re-applies it
	if err := f.Present(); !errors.Is(err, ErrTableMissing) {
		t.Errorf("after nft delete table: %v, want ErrTableMissing", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Present(); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}
